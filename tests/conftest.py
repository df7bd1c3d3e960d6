"""Shared pytest fixtures for dampit's tests.

``shared_data`` points at the real audio in ``../shared/data`` (or
``$DAMPIT_DATA``). When it is missing the tests that need it skip locally
but fail under CI (``CI=true``), so CI never passes without real audio.
"""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]


def _data_root():
    env = os.environ.get("DAMPIT_DATA")
    if env:
        return pathlib.Path(env)
    return REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Path to the shared real-audio folder (dspspeech, noise, rir...)."""
    root = _data_root()
    if not (root / "dspspeech" / "manifest.csv").is_file():
        msg = f"real audio not found at {root} (set DAMPIT_DATA)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture
def speech_tree(shared_data):
    """A function ``make(root, n_spk=6, n_utt=6)``: ``root/<speaker>/``
    holding links to the first ``n_utt`` recordings of the first
    ``n_spk`` dspspeech speakers; returns ``root``."""

    def make(root, n_spk=6, n_utt=6):
        src = shared_data / "dspspeech"
        speakers = sorted(d.name for d in src.iterdir() if d.is_dir())
        for spk in speakers[:n_spk]:
            os.makedirs(root / spk)
            for f in sorted((src / spk).glob("*.wav"))[:n_utt]:
                os.symlink(f, root / spk / f.name)
        return root

    return make


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed torch for every test; 2 cores on this machine and CI."""
    torch.manual_seed(0)
    yield


@pytest.fixture()
def forward_calls():
    """The names of the torch modules run forward during the test, in
    order (a real global forward hook)."""
    calls = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: calls.append(type(module).__name__)
    )
    yield calls
    hook.remove()


def _lazy_modules_safe_for_hypothesis():
    """Hypothesis (at collection and per example) reads ``__file__`` of
    every module in ``sys.modules``; on SpeechBrain's not-yet-loaded lazy
    proxies (registered by ``import speechbrain``) that triggers their
    import, which raises ImportError for optional integrations (k2) and
    aborts the whole pytest session. Give those proxies ``__file__ = None``
    so that hypothesis skips them."""
    import types

    import speechbrain  # noqa: F401  (registers the proxies)

    for mod in list(sys.modules.values()):
        if (
            isinstance(mod, types.ModuleType)
            and "lazy_module" in vars(mod)
            and vars(mod)["lazy_module"] is None
            and "__file__" not in vars(mod)
        ):
            mod.__file__ = None


def pytest_configure(config):
    """Two threads (the machine's and CI's cores); hypothesis-safe imports."""
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    _lazy_modules_safe_for_hypothesis()


def _spk_files(shared_data, n_speakers, n_utts):
    """First ``n_utts`` files of the first ``n_speakers`` dspspeech speakers."""
    import csv

    root = shared_data / "dspspeech"
    by_spk = {}
    with open(root / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_spk.setdefault(row["speaker"], []).append(root / row["path"])
    speakers = sorted(by_spk)[:n_speakers]
    return {s: sorted(by_spk[s])[:n_utts] for s in speakers}


@pytest.fixture(scope="session")
def fake_voxceleb(shared_data, tmp_path_factory):
    """A tiny VoxCeleb1 + VoxCeleb2 tree of real speech (symlinks).

    4 test speakers in ``voxceleb1/wav`` with an official-format
    ``voxceleb1/veri_test.txt``, and 8 training speakers in
    ``voxceleb2/dev/wav`` (the converted-VoxCeleb2 layout); 6 utterances
    per speaker over 2 "videos".
    """
    root = tmp_path_factory.mktemp("voxceleb")
    files = _spk_files(shared_data, 12, 6)
    test_utts = []
    for k, (spk, paths) in enumerate(sorted(files.items())):
        vox1 = k < 4
        sid = f"id1{k:04d}" if vox1 else f"id0{k:04d}"
        base = (
            root / "voxceleb1" / "wav"
            if vox1
            else root / "voxceleb2" / "dev" / "wav"
        )
        for u, src in enumerate(paths):
            rel = f"{sid}/vid{u % 2}/{u:05d}.wav"
            dst = base / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
            if vox1:
                test_utts.append((sid, rel))
    lines = []
    for i, (si, ui) in enumerate(test_utts):
        for sj, uj in test_utts[i + 1 :]:
            if si == sj or (i + len(uj)) % 3 == 0:
                lines.append(f"{int(si == sj)} {ui} {uj}")
    (root / "voxceleb1" / "veri_test.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory):
    """A small built-in synthetic corpus (12 speakers x 6 utterances)."""
    from dampit.dataio.synthetic import generate_corpus

    out = tmp_path_factory.mktemp("synthetic")
    generate_corpus(out, n_speakers=12, utts_per_speaker=6, seed=0)
    return out


@pytest.fixture
def recipe():
    """recipes/VoxCeleb's ``train`` (the Brain) and ``verify`` modules."""

    folder = str(REPO / "recipes" / "VoxCeleb")
    sys.path.insert(0, folder)
    try:
        import train
        import verify

        yield train, verify
    finally:
        sys.path.remove(folder)


@pytest.fixture
def run_recipe():
    """Factory: (data folder, output folder, *flags) -> the completed
    process of a 1-batch debug run of mini.yaml (no test stage)."""

    def run(data, out, *flags):
        opts = dict(debug_batches=1, debug_epochs=1, n_test_speakers=4, P=4)
        opts.update(K=2, test_after_training=False)
        opts.update(f[2:].split("=", 1) for f in flags)
        cmd = [
            sys.executable,
            str(REPO / "recipes" / "VoxCeleb" / "train.py"),
            str(REPO / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml"),
            f"--data_folder={data}",
            f"--output_folder={out}",
            "--debug",
            "--noprogressbar",
            *(f"--{k}={v}" for k, v in opts.items()),
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        return subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )

    return run


MINI = REPO / "recipes" / "VoxCeleb" / "hparams" / "mini.yaml"


def _mini_overrides(tmp_path, extra):
    """mini.yaml made small (width 8, 32-d, 4 speakers), plus ``extra``."""
    return {
        "data_folder": str(tmp_path / "data"),
        "output_folder": str(tmp_path / "run"),
        "base_width": 8,
        "emb_dim": 32,
        "n_speakers": 4,
        **extra,
    }


@pytest.fixture
def mini_brain(recipe, tmp_path):
    """Factory: overrides -> (MultiMetricBrain on CPU, hparams) of the
    recipe's mini.yaml made small (width 8, 32-d, 4 speakers)."""
    from dampit.utils.hparams import load_hparams

    train, _ = recipe

    def make(**extra):
        overrides = _mini_overrides(tmp_path, extra)
        hp, _, _ = load_hparams(str(MINI), overrides)
        brain = train.MultiMetricBrain(
            modules=hp["modules"],
            hparams=hp,
            run_opts={"device": "cpu", "noprogressbar": True},
            checkpointer=hp["checkpointer"],
        )
        return brain, hp

    return make


@pytest.fixture
def mini_tree(tmp_path):
    """Factory: overrides -> the YAML of ``mini_brain`` read plainly, as
    the recipe's ``start_run`` gives it (``plain``)."""
    from dampit.training.run_setup import read_values
    from dampit.utils.hparams import resolve_variant

    def make(**extra):
        base, merged = resolve_variant(MINI, _mini_overrides(tmp_path, extra))
        return read_values(base, merged, str(MINI))

    return make
