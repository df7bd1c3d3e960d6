"""Trial lists: reading (official format), writing, generating."""

import itertools
import logging

import numpy as np
import pytest

from dampit.dataio.trials import (
    TrialListError,
    make_trials,
    read_scores,
    read_trial_indices,
    read_trials,
    speaker_of,
    trial_summary,
    utt_to_id,
    write_scores,
    write_trials,
)

OFFICIAL = (
    "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n"
    "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav\n"
)


def _write(tmp_path, text, name="trials.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_official_format_maps_paths_to_ids(tmp_path):
    p = _write(tmp_path, OFFICIAL)
    assert read_trials(p) == [
        (1, "id10270/x6uYqmx31kE/00001", "id10270/8jEAjG6SegY/00008"),
        (0, "id10270/x6uYqmx31kE/00001", "id10300/ize_eiCFEg0/00003"),
    ]
    raw = read_trials(p, as_ids=False)
    assert raw[0][1] == "id10270/x6uYqmx31kE/00001.wav"
    assert all(isinstance(t[0], int) for t in raw)


def test_read_ignores_blank_and_comment_lines_and_extra_space(tmp_path):
    p = _write(tmp_path, "# header\n\n1\ta/1.wav   a/2.wav \r\n  \n0 a/1 b/1\n")
    assert read_trials(p) == [(1, "a/1", "a/2"), (0, "a/1", "b/1")]


@pytest.mark.parametrize(
    "line, match",
    [
        ("1 a/1.wav", "expected 'label enrol test' or 'enrol test'"),
        ("1 a/1 a/2 a/3", "expected 'label enrol test' or 'enrol test'"),
        ("a/1 a/2", "mixes labelled and unlabelled .*3 on line 1"),
        ("2 a/1 a/2", "label must be 0 or 1"),
        ("target a/1 a/2", "label must be 0 or 1"),
        ("-1 a/1 a/2", "label must be 0 or 1"),
    ],
)
def test_read_malformed_row_names_path_and_line(tmp_path, line, match):
    p = _write(tmp_path, OFFICIAL + "\n" + line + "\n")
    with pytest.raises(TrialListError, match=match) as err:
        read_trials(p)
    assert f"{p}:4:" in str(err.value)  # line 3 is blank


def test_read_unknown_ids_listed_with_lines(tmp_path):
    p = _write(tmp_path, "1 a/1 a/2\n0 a/1 b/9\n0 c/1 a/2\n")
    with pytest.raises(TrialListError) as err:
        read_trials(p, known_ids=["a/1", "a/2", "b/1"])
    msg = str(err.value)
    assert "2 trial utterance(s)" in msg
    assert "line 2: b/9" in msg and "line 3: c/1" in msg
    # Known IDs given as paths of an official list map the same way.
    assert len(read_trials(p, known_ids={"a/1", "a/2", "b/9", "c/1"})) == 3


def test_read_missing_file(tmp_path):
    with pytest.raises(TrialListError, match="not found"):
        read_trials(tmp_path / "nope.txt")


def test_write_read_roundtrip_and_format(tmp_path):
    trials = [(1, "s1/u1", "s1/u2"), (0, "s1/u1", "s2/u1"), (True, "x", "y")]
    p = tmp_path / "out" / "t.txt"
    write_trials(p, trials)
    assert p.read_text() == "1 s1/u1 s1/u2\n0 s1/u1 s2/u1\n1 x y\n"
    assert read_trials(p) == [
        (1, "s1/u1", "s1/u2"),
        (0, "s1/u1", "s2/u1"),
        (1, "x", "y"),
    ]


@pytest.mark.parametrize(
    "bad, match",
    [
        ((2, "a", "b"), "label must be 0 or 1"),
        (("1", "a", "b"), "label must be 0 or 1"),
        ((1, "a b", "c"), "white space"),
        ((1, "a", "b\u00a0c"), "white space"),
        ((1, "", "c"), "white space"),
        ((1, "a", None), "white space"),
        ((1, "#a", "b"), "a leading #"),
        ((1, "a"), r"is not \(label, enrol, test\)"),
        (None, r"is not \(label, enrol, test\)"),
    ],
)
def test_write_rejects_bad_trials_and_keeps_old_file(tmp_path, bad, match):
    p = tmp_path / "t.txt"
    p.write_text("old\n")
    with pytest.raises(TrialListError, match=match) as err:
        write_trials(p, [(1, "a", "b"), bad])
    assert "trial 1" in str(err.value)
    assert p.read_text() == "old\n"
    assert [f.name for f in tmp_path.iterdir()] == ["t.txt"]


def test_utt_to_id_and_speaker_of():
    assert (
        utt_to_id("id10270/x6uYqmx31kE/00001.wav")
        == "id10270/x6uYqmx31kE/00001"
    )
    assert utt_to_id("id00012/abc/00001.m4a") == "id00012/abc/00001"
    assert utt_to_id("spk\\chap\\utt.FLAC") == "spk/chap/utt"
    assert utt_to_id("././a/b.wav") == "a/b"
    assert utt_to_id("a/b.c") == "a/b.c"  # not an audio extension
    assert speaker_of("id10270/x6uYqmx31kE/00001.wav") == "id10270"
    assert speaker_of("spk1") == "spk1"


def _brute_force_pairs(ids, spk):
    target, nontarget = set(), set()
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    for a, b in itertools.combinations(order, 2):
        pair = (ids[a], ids[b])
        (target if spk[a] == spk[b] else nontarget).add(pair)
    return target, nontarget


def _corpus(n_spk, n_utt):
    ids = [f"s{s}/u{u:02d}" for s in range(n_spk) for u in range(n_utt)]
    return ids, [i.split("/")[0] for i in ids]


def test_make_trials_all_targets_and_balanced_nontargets():
    ids, spk = _corpus(5, 8)
    trials = make_trials(ids[::-1], spk[::-1], seed=3)  # input order free
    target, nontarget = _brute_force_pairs(ids, spk)
    got_t = [(e, t) for lab, e, t in trials if lab == 1]
    got_n = [(e, t) for lab, e, t in trials if lab == 0]
    assert set(got_t) == target and len(got_t) == 5 * 28
    assert len(got_n) == len(got_t) and len(set(got_n)) == len(got_n)
    assert set(got_n) <= nontarget  # each unordered pair, enrol < test
    # Deterministic; the seed changes the sampled non-targets.
    assert make_trials(ids, spk, seed=3) == trials
    other = make_trials(ids, spk, seed=4)
    assert [t for t in other if t[0] == 1] == [t for t in trials if t[0] == 1]
    assert set(other) != set(trials)


def test_make_trials_all_nontargets_when_fewer_than_targets():
    """Speakers of uneven size: 1 of 9 utterances and 2 of 1 give 36
    target pairs but only 9 + 9 + 1 = 19 non-target pairs: all of them."""
    ids = [f"a/u{u}" for u in range(9)] + ["b/u0", "c/u0"]
    spk = [i.split("/")[0] for i in ids]
    trials = make_trials(ids, spk, seed=1)
    target, nontarget = _brute_force_pairs(ids, spk)
    assert len(target) == 36 and len(nontarget) == 19
    assert trials[:36] == [(1, e, t) for e, t in sorted(target)]
    assert trials[36:] == [(0, e, t) for e, t in sorted(nontarget)]


def test_make_trials_uneven_speakers_balanced_and_within_pairs():
    """Uneven speakers (2 to 12 utterances) with more non-target than
    target pairs: as many distinct non-targets as targets, each a real
    different-speaker pair, in sorted order after the targets."""
    sizes = [2, 3, 5, 12, 7]
    ids = [f"s{s}/u{u:02d}" for s, n in enumerate(sizes) for u in range(n)]
    spk = [i.split("/")[0] for i in ids]
    trials = make_trials(ids, spk, seed=0)
    target, nontarget = _brute_force_pairs(ids, spk)
    n_target = sum(n * (n - 1) // 2 for n in sizes)
    assert len(target) == n_target == 101 and len(nontarget) == 305
    assert trials[:n_target] == [(1, e, t) for e, t in sorted(target)]
    rest = trials[n_target:]
    assert len(rest) == len(set(rest)) == n_target
    assert all(lab == 0 and (e, t) in nontarget for lab, e, t in rest)
    assert rest == sorted(rest)  # the IDs sort as their rows


def test_make_trials_dspspeech_sized_split():
    ids, spk = _corpus(5, 40)
    s = trial_summary(make_trials(ids, spk))
    assert s == {
        "trials": 7800,
        "target": 3900,
        "nontarget": 3900,
        "utterances": 200,
        "speakers": 5,
    }


def test_make_trials_errors():
    with pytest.raises(
        ValueError, match="duplicate utterance IDs: \\['a/1'\\]"
    ):
        make_trials(["a/1", "a/1", "b/1"], ["a", "a", "b"])
    with pytest.raises(ValueError, match="at least two speakers"):
        make_trials(["a/1", "a/2"], ["a", "a"])
    with pytest.raises(ValueError, match="2 utterances but 1"):
        make_trials(["a/1", "a/2"], ["a"])
    assert make_trials([], []) == []  # no test speaker: no trial


def test_trial_summary_counts_by_hand():
    trials = [(1, "a/1", "a/2"), (0, "a/1", "b/1"), (0, "c/x/1", "b/1")]
    assert trial_summary(trials) == {
        "trials": 3,
        "target": 1,
        "nontarget": 2,
        "utterances": 4,
        "speakers": 3,
    }


def test_bom_accepted_and_invalid_utf8_named(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"\xef\xbb\xbf1 a/1 a/2\n0 a/1 b/1\n")
    assert read_trials(p) == [(1, "a/1", "a/2"), (0, "a/1", "b/1")]
    p.write_bytes(b"1 a/1 a/2\n0 a/\xff b/1\n")
    with pytest.raises(TrialListError, match=f"{p}:2: not valid UTF-8"):
        read_trials(p)
    with pytest.raises(TrialListError, match=f"{p}:2: not valid UTF-8"):
        read_trial_indices(p)


@pytest.mark.parametrize("first", ["a.wav b.wav", "1 a.wav b.wav"])
def test_label_and_one_path_is_an_error_not_a_pair(tmp_path, first):
    p = _write(tmp_path, f"{first}\n1 c.wav\n")
    with pytest.raises(TrialListError, match=f"{p}:2: expected .*'1 c.wav'"):
        read_trial_indices(p)
    p = _write(tmp_path, "0 c.wav\n")  # even as the only line
    with pytest.raises(TrialListError, match=":1: expected"):
        read_trial_indices(p)


def test_mixed_labelled_and_unlabelled_refused(tmp_path):
    p = _write(tmp_path, "a b\n# note\nc d\n1 a c\n")
    with pytest.raises(TrialListError, match=f"{p}:4: mixes .*2 on line 1"):
        read_trial_indices(p)
    p = _write(tmp_path, "a b\n")
    with pytest.raises(TrialListError, match=f"{p}:1: expected 'label"):
        read_trials(p)  # read_trials wants labels
    p = _write(tmp_path, "# only a comment\n\n")
    with pytest.raises(TrialListError, match="no trials"):
        read_trial_indices(p)


def test_duplicates_counted_and_warned_once(tmp_path, caplog):
    p = _write(tmp_path, "1 a b\n0 a c\n1 a b\n1 b a\n1 a b\n")
    with caplog.at_level(logging.WARNING):
        trials = read_trials(p)
        e, t, lab, names = read_trial_indices(p)
    assert len(trials) == 5 and lab.tolist() == [1, 0, 1, 1, 1]
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [f"{p}: 2 duplicate trial(s), each counted"] * 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_trials(_write(tmp_path, "1 a b\n1 b a\n"))
    assert not caplog.records  # (a, b) and (b, a) are different trials


def test_read_trial_indices_matches_read_trials(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"spk{u // 10:03d}/utt{u:05d}.wav" for u in range(200)]
    pairs = rng.integers(0, 200, size=(30_000, 2))
    labels = rng.integers(0, 2, size=30_000)
    lines = [f"{x} {ids[a]} {ids[b]}\n" for x, (a, b) in zip(labels, pairs)]
    lines.insert(12_345, "\n")
    p = _write(tmp_path, "".join(lines))
    e, t, lab, names = read_trial_indices(p)  # rows by first appearance
    assert lab.dtype == np.int64 and lab.tolist() == labels.tolist()
    rows = np.array([ids.index(n) for n in names])
    assert rows[e].tolist() == pairs[:, 0].tolist()
    assert rows[t].tolist() == pairs[:, 1].tolist()
    ref = read_trials(p, as_ids=False)
    assert [(int(x), names[a], names[b]) for x, a, b in zip(lab, e, t)] == ref
    assert read_trial_indices(p, as_ids=True)[3][0] == utt_to_id(ref[0][1])


def test_score_file_roundtrip_and_errors(tmp_path):
    p = tmp_path / "scores.txt"
    s = np.array([0.1234567890123, -2.5, 1e-12])
    write_scores(p, ["a", "b", "c"], ["d", "e", "f"], s, [1, 0, 1])
    e, t, got, lab = read_scores(p)
    assert e == ["a", "b", "c"] and t == ["d", "e", "f"]
    np.testing.assert_array_equal(got, s)  # repr: exact round trip
    assert lab.tolist() == [1, 0, 1]
    write_scores(p, ["a"], ["b"], [0.5])
    _, _, got, lab = read_scores(p)
    assert got.tolist() == [0.5] and lab is None
    with pytest.raises(ValueError, match="must match"):
        write_scores(p, ["a"], ["b", "c"], [0.5])
    p.write_text("a b 1 0.5\nc d 0.25\n")
    with pytest.raises(TrialListError, match=f"{p}:2: expected"):
        read_scores(p)
    p.write_text("a b 2 0.5\n")
    with pytest.raises(TrialListError, match=f"{p}:1: bad number"):
        read_scores(p)
