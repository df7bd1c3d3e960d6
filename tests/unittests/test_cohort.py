"""The score-normalisation cohort of a model folder (dampit.inference.
cohort, dampit-cohort, dampit-verify --asnorm, verify_pairs(asnorm=True))
on real speech (dspspeech) with a tiny model folder: cohort vectors and
AS-norm scores against loops written here over embeddings that
SpeechBrain's own ``SpeakerRecognition`` makes one file at a time; every
value read back is checked (one-line refusals naming the file)."""

import functools
import hashlib
import io
import json
import math
import pathlib
import runpy
import shutil

import numpy as np
import pytest
import torch
from speechbrain.inference.speaker import SpeakerRecognition

from dampit.cli import cohort as cohort_cli
from dampit.cli import verify as verify_cli
from dampit.dataio.trials import read_scores
from dampit.inference.api import ModelFolderError, load_model
from dampit.inference.cohort import normalise_scores

MODELS = pathlib.Path(__file__).resolve().parents[1] / "model_folder.py"
write_demo_model = runpy.run_path(str(MODELS))["write_demo_model"]
TOL = 1e-4  # float32 batched embeddings against one file at a time


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    """``cohort/<spk>/`` 3 files of 5 speakers, ``test/<spk>/`` 2 files of
    3 other speakers and every pair of them in ``test/trials.txt``."""
    root = tmp_path_factory.mktemp("corpus")
    data = shared_data / "dspspeech"
    spk = sorted(p.name for p in data.iterdir() if p.is_dir())
    for part, names, n in (("cohort", spk[:5], 3), ("test", spk[5:8], 2)):
        for s in names:
            (root / part / s).mkdir(parents=True)
            for f in sorted((data / s).glob("*.wav"))[:n]:
                (root / part / s / f.name).symlink_to(f)
    utts = sorted(
        f"{p.parent.name}/{p.name}" for p in (root / "test").glob("*/*.wav")
    )
    lines = [
        f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n"
        for i, a in enumerate(utts)
        for b in utts[i + 1 :]
    ]
    (root / "test" / "trials.txt").write_text("".join(lines))
    return root


@pytest.fixture(scope="module")
def with_cohort(corpus, tmp_path_factory):
    """A model folder given a cohort by dampit-cohort."""
    folder = tmp_path_factory.mktemp("m")
    model = write_demo_model(folder, features="fbank", default_init=True)
    args = ["--model", model, corpus / "cohort", "--no-progress"]
    assert cohort_cli.main([str(a) for a in args]) == 0
    return pathlib.Path(model)


@pytest.fixture(scope="module")
def ref(with_cohort, tmp_path_factory):
    """Embedding of a file by SpeechBrain, one file at a time."""
    sb = SpeakerRecognition.from_hparams(
        source=str(with_cohort), savedir=str(tmp_path_factory.mktemp("sb"))
    )

    @functools.cache
    def embed(path):
        with torch.no_grad():
            wav = sb.load_audio(str(path))[None]
            return sb.encode_batch(wav)[0, 0].double().numpy()

    return embed


def cosine(a, b):
    return float(a @ b / math.sqrt(float(a @ a) * float(b @ b)))


def loop_asnorm(e, t, cohort, top_k):
    """AS-norm1 of one trial: cosines, sorted, mean and ddof-1 std."""

    def stats(x):
        c = sorted((cosine(x, m) for m in cohort), reverse=True)[:top_k]
        mu = sum(c) / len(c)
        return mu, math.sqrt(sum((v - mu) ** 2 for v in c) / (len(c) - 1))

    s = cosine(e, t)
    (me, se), (mt, st) = stats(e), stats(t)
    return 0.5 * ((s - me) / se + (s - mt) / st)


def trial_pairs(corpus):
    rows = [line.split() for line in open(corpus / "test" / "trials.txt")]
    root = corpus / "test"
    return [(str(root / a), str(root / b)) for _, a, b in rows]


def test_cohort_round_trip(with_cohort, corpus, ref):
    spec = json.loads((with_cohort / "dampit_export.json").read_text())
    record = spec["cohort"]
    data = (with_cohort / "cohort.npy").read_bytes()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert (record["speakers"], record["emb_dim"]) == (5, 16)
    stored = np.load(io.BytesIO(data), allow_pickle=False)
    assert stored.dtype == np.float16 and stored.shape == (5, 16)
    want = []
    for spk in sorted(p for p in (corpus / "cohort").iterdir()):
        units = [ref(f) / np.linalg.norm(ref(f)) for f in sorted(spk.iterdir())]
        total = sum(units)
        want.append(total / np.linalg.norm(total))
    got = load_model(with_cohort).cohort
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, stored.astype(np.float32))
    np.testing.assert_allclose(got, want, atol=2e-3)  # float16: 2**-11


def test_asnorm_scores_equal_a_loop(with_cohort, corpus, ref):
    model = load_model(with_cohort)
    pairs = trial_pairs(corpus)
    scores, decisions = model.verify_pairs(pairs, progress=False, asnorm=True)
    cohort = model.cohort.astype(np.float64)
    want = [loop_asnorm(ref(a), ref(b), cohort, 300) for a, b in pairs]
    assert decisions is None  # the stored threshold is for cosines
    np.testing.assert_allclose(scores, want, rtol=TOL, atol=TOL)
    cos, _ = model.verify_pairs(pairs, progress=False)
    assert not np.allclose(cos, scores, atol=0.05)
    # top 3 of the 5 cohort speakers, through the function both use
    files = sorted({f for pair in pairs for f in pair})
    _, emb = model.embed_files(files, progress=False)
    enrol = [files.index(a) for a, _ in pairs]
    test = [files.index(b) for _, b in pairs]
    top3 = normalise_scores(model, cos, emb, enrol, test, top_k=3)
    want = [loop_asnorm(ref(a), ref(b), cohort, 3) for a, b in pairs]
    np.testing.assert_allclose(top3, want, rtol=TOL, atol=TOL)


def test_api_and_cli_give_the_same_asnorm_scores(
    with_cohort, corpus, tmp_path, capsys
):
    model = load_model(with_cohort)
    pairs = trial_pairs(corpus)
    api, _ = model.verify_pairs(pairs, progress=False, asnorm=True)
    out = tmp_path / "scores.txt"
    args = ["--model", with_cohort, "--asnorm", "--no-progress"]
    args += ["--trials", corpus / "test" / "trials.txt", "--out", out]
    assert verify_cli.main([str(a) for a in args]) == 0
    text = capsys.readouterr().out
    assert "15 AS-norm scores; not decided" in text and "EER" in text
    _, _, cli, labels = read_scores(out)
    np.testing.assert_allclose(cli, api, rtol=1e-5, atol=1e-5)
    a, b = pairs[0]
    assert verify_cli.main([str(a) for a in args[:3]] + [a, b]) == 0
    assert capsys.readouterr().out.startswith(f"score {cli[0]:.4f} (AS-norm)")
    args = [*args[:3], "--threshold", "0.5", a, b]
    assert verify_cli.main([str(x) for x in args]) == 0
    word = "same speaker" if api[0] > 0.5 else "different speakers"
    assert f"threshold 0.5000  -> {word}" in capsys.readouterr().out


def test_asnorm_without_a_cohort_is_one_line(corpus, tmp_path, capsys):
    model = pathlib.Path(write_demo_model(tmp_path, features="fbank"))
    a, b = trial_pairs(corpus)[0]
    args = ["--model", model, "--asnorm", a, b]
    assert verify_cli.main([str(x) for x in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no score-normalisation cohort stored" in err
    with pytest.raises(ModelFolderError, match="dampit-cohort makes one"):
        load_model(model).verify_pairs([(a, b)], asnorm=True)


def plant(folder, array, **record):
    """Write ``array`` as ``cohort.npy`` with a record that matches it
    (shape, sha256), then ``record``'s values over it."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    data = buffer.getvalue()
    (folder / "cohort.npy").write_bytes(data)
    path = folder / "dampit_export.json"
    spec = json.loads(path.read_text())
    spec["cohort"].update(speakers=array.shape[0], emb_dim=array.shape[1])
    spec["cohort"]["sha256"] = hashlib.sha256(data).hexdigest()
    spec["cohort"].update(record)
    path.write_text(json.dumps(spec))


GOOD = np.eye(4, 16, dtype=np.float16)
NAN = GOOD.copy()
NAN[1, 3] = np.nan
BAD = {  # name: (array, record edits, message)
    "wrong dim": (np.eye(4, 8, dtype=np.float16), {}, "emb_dim 8, but"),
    "NaN": (NAN, {}, "NaN or inf in the cohort"),
    "float32": (GOOD.astype(np.float32), {}, "holds <f4"),
    "big-endian": (GOOD.astype(">f2"), {}, "holds >f2"),
    "Fortran": (np.asfortranarray(GOOD), {}, r"holds <f2 \(4, 16\); the"),
    "pickle": (np.array([[{"a": 1}] * 16] * 4), {}, r"holds \|O"),
    "huge n": (GOOD, {"speakers": 10**9}, "speakers 1000000000 is not"),
    "n not the file's": (GOOD, {"speakers": 90000}, r"the record says"),
    "one speaker": (GOOD[:1], {}, "speakers 1 is not an integer"),
    "dtype": (GOOD, {"dtype": "float64"}, "dtype 'float64' is not"),
    "sha256": (GOOD, {"sha256": "0" * 64}, "sha256 is not the recorded"),
    "fingerprint": (GOOD, {"model_fingerprint": "x"}, "other weights"),
    "no record key": (GOOD, {"extra": 1}, "needs an object of"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_cohort_is_one_line_naming_the_file(name, with_cohort, tmp_path):
    folder = pathlib.Path(shutil.copytree(with_cohort, tmp_path / "m"))
    array, record, match = BAD[name]
    plant(folder, array, **record)
    with pytest.raises(ModelFolderError, match=match) as err:
        load_model(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


def _header(version, shape):
    """A .npy header of float16 ``shape`` in NumPy format ``version``."""
    head = io.BytesIO()
    write = {
        (1, 0): np.lib.format.write_array_header_1_0,
        (2, 0): np.lib.format.write_array_header_2_0,
    }[version]
    write(head, {"descr": "<f2", "fortran_order": False, "shape": shape})
    return head.getvalue()


RAW = {  # name: (file bytes, message); the record matches the bytes' sha
    "header of 10**12 values": (
        _header((1, 0), (10**12,)) + bytes(64),
        r"holds <f2 \(1000000000000,\)",
    ),
    "empty": (b"", "not a cohort file"),
    "zip": (b"PK\x03\x04garbage", "not a cohort file"),
    "format 2.0": (
        _header((2, 0), (4, 16)) + GOOD.tobytes(),
        r"version \(2, 0\), not \(1, 0\)",
    ),
}


@pytest.mark.parametrize("name", sorted(RAW))
def test_hostile_cohort_bytes_refused_before_loading(
    name, with_cohort, tmp_path
):
    """The header is checked before numpy reads the array: no allocation
    of what the header claims, no exception other than one line."""
    folder = pathlib.Path(shutil.copytree(with_cohort, tmp_path / "m"))
    plant(folder, GOOD)
    data, match = RAW[name]
    (folder / "cohort.npy").write_bytes(data)
    spec = json.loads((folder / "dampit_export.json").read_text())
    spec["cohort"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "dampit_export.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError, match=match) as err:
        load_model(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


def test_truncated_or_missing_cohort_file_is_refused(with_cohort, tmp_path):
    folder = pathlib.Path(shutil.copytree(with_cohort, tmp_path / "m"))
    plant(folder, GOOD)
    path = folder / "cohort.npy"
    data = path.read_bytes()[:-2]
    path.write_bytes(data)
    spec = json.loads((folder / "dampit_export.json").read_text())
    spec["cohort"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "dampit_export.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError, match="cohort.npy: EOF"):
        load_model(folder)
    path.unlink()
    with pytest.raises(ModelFolderError, match="cohort.npy: not a cohort"):
        load_model(folder)


def test_dampit_cohort_refuses_bad_input_before_the_work(
    with_cohort, corpus, tmp_path, capsys
):
    folder = pathlib.Path(shutil.copytree(with_cohort, tmp_path / "m"))
    one, two = sorted((corpus / "cohort").iterdir())[:2]
    args = ["--model", folder, "--no-progress"]
    assert cohort_cli.main([str(a) for a in [*args, one]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no speaker" in err
    for name, speakers in (("single", [one]), ("pair", [one, two])):
        for spk in speakers:
            shutil.copytree(spk, tmp_path / name / spk.name, symlinks=True)
    assert cohort_cli.main([str(a) for a in [*args, tmp_path / "single"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a cohort needs 2 or more" in err
    assert load_model(folder).cohort.shape == (5, 16)  # nothing replaced
    assert cohort_cli.main([str(a) for a in [*args, tmp_path / "pair"]]) == 0
    assert load_model(folder).cohort.shape == (2, 16)  # its own: replaced
    before = (folder / "cohort.npy").read_bytes()
    spec = json.loads((folder / "dampit_export.json").read_text())
    del spec["cohort"]  # a cohort.npy the folder does not record
    (folder / "dampit_export.json").write_text(json.dumps(spec))
    assert cohort_cli.main([str(a) for a in [*args, tmp_path / "pair"]]) == 2
    err = capsys.readouterr().err
    assert "records no cohort: nothing replaced" in err
    assert (folder / "cohort.npy").read_bytes() == before
