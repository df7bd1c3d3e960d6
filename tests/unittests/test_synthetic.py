"""The built-in synthetic corpus: layout, determinism, signal model, and
learnability on held-out synthetic speakers."""

import configparser
import csv
import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import soundfile as sf
from speechbrain.dataio.dataio import load_data_csv

from dampit.cli import synth as synth_cli
from dampit.dataio import synthetic as syn
from dampit.dataio.prepare_folder import prepare_folder
from dampit.dataio.trials import read_trials
from dampit.metrics.error_rates import compute_eer

REPO = pathlib.Path(__file__).resolve().parents[2]


def _digest(folder):
    h = {}
    for p in sorted(pathlib.Path(folder).rglob("*.wav")):
        h[p.relative_to(folder).as_posix()] = hashlib.md5(
            p.read_bytes()
        ).hexdigest()
    return h


def _small(out, **kw):
    args = dict(
        n_speakers=3,
        utts_per_speaker=3,
        duration=(0.4, 0.6),
        progress=False,
    )
    args.update(kw)
    return syn.generate_corpus(out, **args)


def test_layout_manifest_and_format(tmp_path):
    manifest = _small(tmp_path / "c")
    rows = list(csv.DictReader(open(manifest)))
    assert [r["path"] for r in rows] == [
        f"spk{s:03d}/spk{s:03d}-{k:03d}.wav" for s in range(3) for k in range(3)
    ]
    for k, r in enumerate(rows):
        info = sf.info(str(tmp_path / "c" / r["path"]))
        assert (info.samplerate, info.channels, info.subtype) == (
            16000,
            1,
            "PCM_16",
        )
        assert r["speaker"] == r["path"].split("/")[0]
        assert float(r["duration_s"]) == pytest.approx(
            info.frames / 16000, abs=1e-4
        )
        assert 0.4 - 1e-4 <= float(r["duration_s"]) <= 0.6 + 1e-4
        assert int(r["session"]) == k % 3  # utterance k % 3, 4 sessions
        x, _ = sf.read(str(tmp_path / "c" / r["path"]))
        assert np.isfinite(x).all() and 0 < np.abs(x).max() <= 0.98 + 1e-4
    config = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert config["options"]["n_speakers"] == 3
    assert "not a benchmark" in config["note"]
    assert set(config["speakers"]) == {"spk000", "spk001", "spk002"}
    assert config["speakers"]["spk001"] == json.loads(
        json.dumps(syn.speaker_traits(0, 1))
    )


def test_deterministic_bytes_workers_and_seed(tmp_path):
    _small(tmp_path / "a")
    _small(tmp_path / "b", workers=2)
    first = _digest(tmp_path / "a")
    assert len(first) == 9 and _digest(tmp_path / "b") == first
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (
        tmp_path / "b" / "manifest.csv"
    ).read_bytes()
    _small(tmp_path / "c", seed=1)
    other = _digest(tmp_path / "c")
    assert not set(other.values()) & set(first.values())
    # A larger corpus extends a smaller one (traits depend on the index).
    _small(tmp_path / "d", n_speakers=4)
    bigger = _digest(tmp_path / "d")
    assert {k: bigger[k] for k in first} == first and len(bigger) == 12


def test_up_to_date_corpus_is_not_regenerated(tmp_path):
    out = tmp_path / "c"
    _small(out)
    wav = out / "spk000" / "spk000-000.wav"
    mtime = os.path.getmtime(wav)
    _small(out)
    assert os.path.getmtime(wav) == mtime
    wav.unlink()  # incomplete: generated again
    _small(out)
    assert wav.is_file()
    before = wav.read_bytes()
    _small(out, seed=5)  # other options: regenerated
    assert wav.read_bytes() != before


def _f0_estimate(x, sr=16000):
    """Median over 50 ms frames of the highest autocorrelation peak in
    60..400 Hz (frames without a peak above 0.5 are unvoiced)."""
    lo, hi, est = sr // 400, sr // 60, []
    for s in range(0, len(x) - 800, 400):
        w = x[s : s + 800] - x[s : s + 800].mean()
        ac = np.correlate(w, w, "full")[len(w) - 1 :]
        seg = ac[lo - 1 : hi + 1] / ac[0]
        mid = seg[1:-1]
        peak = np.flatnonzero((mid > seg[:-2]) & (mid >= seg[2:]) & (mid > 0.5))
        if len(peak):
            est.append(sr / (lo + peak[np.argmax(mid[peak])]))
    return np.median(est)


def test_pitch_follows_the_speaker_f0():
    """The pulse train runs at the speaker's F0: the pitch of an utterance
    is within a quarter octave of it (the declination moves it 2 semitones;
    a crude estimator may jump an octave now and then)."""
    close = 0
    for spk in range(20):
        traits = dict(syn.speaker_traits(0, spk), f0_range=0.5)
        x = syn.synthesize_utterance(traits, 0, spk, 0, 1.0).astype(float)
        close += abs(np.log2(_f0_estimate(x) / traits["f0"])) < 0.25
    assert close >= 18


def _centroid(x, sr=16000):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    band = (f > 100) & (f < 4000)
    return (f[band] * spec[band]).sum() / spec[band].sum()


def test_vocal_tract_length_moves_the_formants():
    """The same utterance (same random draws) with formants scaled by 1.3
    has its spectrum moved up; scaled by 1 / 1.3, down."""
    traits = syn.speaker_traits(0, 0)
    base = _centroid(syn.synthesize_utterance(traits, 0, 0, 0, 1.0))
    for k, sign in ((1.3, 1), (1 / 1.3, -1)):
        t = dict(traits, vtl=traits["vtl"] * k)
        moved = _centroid(syn.synthesize_utterance(t, 0, 0, 0, 1.0))
        assert sign * (moved - base) > 0.05 * base


def test_traits_and_channel_are_fixed_per_index():
    t = [syn.speaker_traits(0, i) for i in range(40)]
    assert t[3] == syn.speaker_traits(0, 3) != syn.speaker_traits(1, 3)
    f0_m = [s["f0"] for s in t if s["sex"] == "m"]
    f0_f = [s["f0"] for s in t if s["sex"] == "f"]
    assert f0_m and f0_f and np.median(f0_f) > 1.4 * np.median(f0_m)
    assert syn.session_channel(0, 2, 1) == syn.session_channel(0, 2, 1)
    assert syn.session_channel(0, 2, 1) != syn.session_channel(0, 2, 0)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_speakers"):
        syn.generate_corpus(tmp_path, n_speakers=0)
    with pytest.raises(ValueError, match="duration"):
        syn.generate_corpus(tmp_path, duration=(2.0, 1.0))


def _files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(pathlib.Path(folder).rglob("*"))
        if p.is_file()
    }


def test_out_is_new_empty_or_a_synthetic_corpus(shared_data, tmp_path, capsys):
    """A folder of real data (its own manifest.csv and speaker folders) or
    a regular file as --out: one line, exit 2, nothing written; an empty
    folder, a corpus written here and one whose writing stopped half-way
    (its corpus.json marks it) are fine."""
    data = tmp_path / "data"
    (data / "spk000").mkdir(parents=True)
    real = sorted((shared_data / "dspspeech").glob("*/*.wav"))[:2]
    for f in real:
        shutil.copy(f, data / "spk000" / f.name)
    shutil.copy(shared_data / "dspspeech" / "manifest.csv", data)
    plain = tmp_path / "notes.txt"
    plain.write_text("my notes\n")
    before = _files(tmp_path)
    small = ["--speakers", "2", "--utts-per-speaker", "1", "--quiet"]
    small += ["--min-dur", "0.3", "--max-dur", "0.3"]
    for out, words in [
        (data, ["not empty", "corpus.json"]),
        (plain, ["not a folder"]),
    ]:
        assert synth_cli.main(["--out", str(out), *small]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert all(w in err for w in [str(out), *words]), err
        assert _files(tmp_path) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert synth_cli.main(["--out", str(empty), *small]) == 0
    assert synth_cli.main(["--out", str(empty), *small, "--seed", "3"]) == 0
    (empty / "manifest.csv").unlink()  # as if stopped half-way, rewritten
    (empty / "corpus.json").write_text(
        '{"options": null, "note": "%s"}' % (syn.NOTE)
    )
    assert synth_cli.main(["--out", str(empty), *small, "--seed", "3"]) == 0
    assert (
        json.loads((empty / "corpus.json").read_text())["options"]["seed"] == 3
    )
    assert len(_digest(empty)) == 2


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--speakers", "0"], ["--speakers", "'0'"]),
        (["--utts-per-speaker", "-1"], ["--utts-per-speaker"]),
        (["--min-dur", "0"], ["--min-dur"]),
        (["--max-dur", "inf"], ["--max-dur"]),
        (["--min-dur", "3", "--max-dur", "2"], ["--min-dur 3.0", "--max-dur"]),
        (["--seed", "-1"], ["--seed"]),
        (["--workers", "0"], ["--workers"]),
    ],
)
def test_cli_bad_arguments_are_one_line(tmp_path, capsys, argv, words):
    out = tmp_path / "c"
    try:
        code = synth_cli.main(["--out", str(out), "--quiet", *argv])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and all(w in err for w in words), err
    assert not out.exists()


def test_cli_and_console_script(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--speakers", "2", "--utts-per-speaker", "3"]
    argv += ["--min-dur", "0.3", "--max-dur", "0.3", "--seed", "7"]
    assert synth_cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out / "manifest.csv")
    opts = json.loads((out / "corpus.json").read_text())["options"]
    assert (opts["seed"], opts["n_speakers"], opts["duration"]) == (
        7,
        2,
        [0.3, 0.3],
    )
    assert len(list((out / "spk001").glob("*.wav"))) == 3
    for argv in ([], [str(out)]):  # --out is the one spelling
        with pytest.raises(SystemExit):
            synth_cli.main(argv)
    assert "required: --out" in capsys.readouterr().err
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"]
    assert "dampit-synth = dampit.cli.synth:main" in scripts


# --------------------------------------------------------------- learnability
N_TRAIN, N_TEST, N_UTTS = 16, 8, 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    syn.generate_corpus(
        out,
        N_TRAIN + N_TEST,
        N_UTTS,
        duration=(2.0, 2.5),
        seed=0,
        progress=False,
    )
    return out


def _cosine_trials(emb, labels):
    """Cosine scores and same-speaker labels of every pair."""
    emb = emb - emb.mean(0)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores, same = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            scores.append(float(emb[i] @ emb[j]))
            same.append(int(labels[i] == labels[j]))
    return np.array(scores), np.array(same)


def _log_mel(x, sr=16000, n_fft=512, hop=160, win=400, n_mels=40):
    """Log-mel energies [frames, n_mels] in plain numpy (25 ms Hamming
    windows every 10 ms, triangular filters evenly spaced in mel)."""
    n = 1 + (len(x) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hamming(win), n_fft)) ** 2
    mel = np.linspace(0, 2595 * np.log10(1 + sr / 2 / 700), n_mels + 2)
    edges = 700 * (10 ** (mel / 2595) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(
        0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid))
    )
    return np.log(spec @ fb.T + 1e-10)


def _features(corpus):
    """Log-mel statistics of the louder half of the frames: the mean (less
    its overall level) and the standard deviation of each band."""
    X, spk = [], []
    for row in csv.DictReader(open(corpus / "manifest.csv")):
        x, _ = sf.read(str(corpus / row["path"]))
        f = _log_mel(x)
        energy = f.mean(1)
        loud = f[energy >= np.median(energy)]
        X.append(np.concatenate([loud.mean(0) - loud.mean(), loud.std(0)]))
        spk.append(int(row["speaker"][3:]))
    return np.array(X), np.array(spk)


def _lda(X, y, n_dims):
    """Fisher LDA fitted with numpy (within-class whitening)."""
    mu = X.mean(0)
    d = X.shape[1]
    sw, sb = np.zeros((d, d)), np.zeros((d, d))
    for c in np.unique(y):
        xc = X[y == c]
        m = xc.mean(0)
        sw += (xc - m).T @ (xc - m)
        sb += len(xc) * np.outer(m - mu, m - mu)
    sw += 1e-3 * np.trace(sw) / d * np.eye(d)
    vals, vecs = np.linalg.eig(np.linalg.solve(sw, sb))
    order = np.argsort(-vals.real)[:n_dims]
    return mu, vecs[:, order].real


def test_learnable_on_held_out_speakers(corpus):
    X, spk = _features(corpus)
    train, test = spk < N_TRAIN, spk >= N_TRAIN
    # Untrained statistics + cosine: well below chance on new speakers,
    # and a speaker's utterances are closer than other speakers'.
    scores, same = _cosine_trials(X[test], spk[test])
    raw, _ = compute_eer(scores, same)
    assert raw < 0.40
    assert scores[same == 1].mean() > scores[same == 0].mean() + 0.2
    # A projection learnt on the training speakers only generalises.
    mu, proj = _lda(X[train], spk[train], N_TRAIN - 1)
    learnt, _ = compute_eer(*_cosine_trials((X[test] - mu) @ proj, spk[test]))
    assert learnt < 0.20 and learnt < raw - 0.05


def test_prepare_folder_on_synthetic_corpus(corpus, tmp_path):
    res = prepare_folder(corpus, tmp_path / "prep", n_test_speakers=4)
    assert res["n_test_utts"] == 4 * N_UTTS
    test = load_data_csv(res["test_csv"])
    trials = read_trials(res["trials"], known_ids=set(test))
    assert sum(t[0] for t in trials) == 4 * N_UTTS * (N_UTTS - 1) // 2
    first = sorted(test)[0]
    assert first.startswith("spk") and "/" in first
