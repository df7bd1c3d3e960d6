"""Every code block of README.md, docs/*.md and templates/**/README.md is
checked.

- python: runs on a model folder the test writes (tests/model_folder.py),
  with the README's paths replaced by the test's (``SUBSTITUTE``) and the
  variables a snippet uses given (``wavs``, ``wav_lens``: real speech);
- yaml: loads with ``load_hyperpyyaml`` (the references it needs from
  ``YAML_REFS``), and a loss it builds is computed on a batch (made by
  ``wav_augment`` when the block names it);
- bash: each command exists, and each ``--option`` on the line (comments
  included) is in its ``--help`` or, for a recipe script, a key of its YAML;
- diff: applies to the file it patches (``DIFF_TARGETS``);
- bibtex: one balanced entry; an untagged block: output that a script
  beside the README prints.
"""

import contextlib
import functools
import importlib.util
import io
import pathlib
import re
import runpy
import shlex
import subprocess
import sys

import pytest
import soundfile
import torch
from hyperpyyaml import load_hyperpyyaml

REPO = pathlib.Path(__file__).resolve().parents[2]
READMES = (
    [REPO / "README.md"]
    + sorted((REPO / "docs").glob("*.md"))
    + sorted((REPO / "templates").rglob("README.md"))
)


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


snippets = _load("readme_snippets.py")
model_folder = _load("model_folder.py")
#: README path -> what the test uses (MODEL: the test's model folder).
SUBSTITUTE = {
    '"results/quickstart/model"': "MODEL",
    '"my_model"': "MODEL",
    '"pretrained/dampit-so762"': "PRETRAINED",
    '"/tmp/dampit_model"': "SAVEDIR",
    '"a.wav"': "WAV_A",
    '"b.wav"': "WAV_B",
}
#: References a README YAML block uses that the stock recipe defines.
YAML_REFS = """out_n_neurons: 5
seed: 1
num_workers: 0
wav_augment: !new:speechbrain.augment.augmenter.Augmenter
    concat_original: True
    augmentations: [!new:speechbrain.augment.time_domain.AddNoise {}]
"""
#: Diff target file name -> the repository file it must apply to.
DIFF_TARGETS = {
    "train_speaker_embeddings.py": REPO / "tests/recipes/sb_speaker_recipe.py"
}
#: Console scripts (setup.cfg) -> their module.
CONSOLE = dict(
    re.findall(
        r"^\s+(dampit-\w+) = ([\w.]+):main$",
        (REPO / "setup.cfg").read_text(),
        re.M,
    )
)
BLOCKS = [
    (path, lang, code, line)
    for path in READMES
    for lang, code, line in snippets.code_blocks(path.read_text())
]


def test_every_fence_is_a_block():
    for path in READMES:
        fences = re.findall(r"^ *```", path.read_text(), re.M)
        found = [b for b in BLOCKS if b[0] == path]
        assert len(fences) == 2 * len(found), path


@pytest.fixture(scope="module")
def values(tmp_path_factory, shared_data):
    data = shared_data
    tmp = tmp_path_factory.mktemp("snippets")
    wav_a, wav_b = sorted((data / "dspspeech").glob("*/*.wav"))[:2]
    sigs = [
        torch.from_numpy(soundfile.read(w, dtype="float32")[0])
        for w in (wav_a, wav_b)
    ]
    n = max(len(s) for s in sigs)
    wavs = torch.stack(
        [torch.nn.functional.pad(s, (0, n - len(s))) for s in sigs]
    )
    return {
        "MODEL": str(model_folder.write_demo_model(tmp)),
        "PRETRAINED": str(REPO / "pretrained" / "dampit-so762"),
        "SAVEDIR": str(tmp / "sb"),
        "WAV_A": str(wav_a),
        "WAV_B": str(wav_b),
        "wavs": wavs,
        "wav_lens": torch.tensor([len(s) / n for s in sigs]),
    }


def check_python(code, values):
    for old, name in SUBSTITUTE.items():
        code = code.replace(old, name)
    namespace = dict(values)
    exec(compile(code, "<README>", "exec"), namespace)


def check_yaml(code, values):
    hp = load_hyperpyyaml(YAML_REFS + code)
    cost = hp["compute_cost"]
    emb = torch.randn(8, 1, 192)
    spk = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])[:, None]
    if "wav_augment" in code:  # 2 x 2 utterances and their copies
        hp["wav_augment"](torch.randn(4, 1600), torch.ones(4))
        spk = hp["wav_augment"].replicate_labels(spk[:4])
    preds = hp["classifier"](emb) if "classifier" in hp else emb
    assert torch.isfinite(cost(preds, spk, torch.ones(8)))
    if "train_sampler" in hp:
        sampler = hp["train_sampler"]([{"spk_id": i // 2} for i in range(64)])
        options = hp["pk_loader_options"](batch_sampler=sampler)
        assert len(next(iter(options["batch_sampler"]))) == hp["P"] * hp["K"]


def commands(code):
    """Lines of a shell block, continuations joined."""
    return [c for c in code.replace("\\\n", " ").splitlines() if c.strip()]


@functools.lru_cache(maxsize=None)
def help_text(*argv):
    """``--help`` of a command run as a program (pip)."""
    done = subprocess.run(
        list(argv) + ["--help"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, (argv, done.stderr[-2000:])
    return done.stdout


@functools.lru_cache(maxsize=None)
def run_help(target):
    """``--help`` of a Python script (a path) or of the ``main()`` of a
    module (a name: a console script's), run in this process as its command
    line runs it: ``sys.argv`` is ``[target, "--help"]`` and a script's
    folder comes first on ``sys.path``."""
    argv, path = sys.argv, list(sys.path)
    sys.argv = [str(target), "--help"]
    out, code = io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out):
            if isinstance(target, pathlib.Path):
                sys.path.insert(0, str(target.parent))
                runpy.run_path(str(target), run_name="__main__")
            else:
                importlib.import_module(target).main()
    except SystemExit as end:  # argparse's --help (torchrun's returns)
        code = end.code
    finally:
        sys.argv, sys.path[:] = argv, path
    assert code in (0, None), (target, code)
    return out.getvalue()


def yaml_keys(path):
    """Top-level keys of a recipe YAML and of the base it extends."""
    text = path.read_text()
    keys = set(re.findall(r"^([A-Za-z_]\w*):", text, re.M))
    base = re.search(r"^extends:\s*(\S+)", text, re.M)
    return keys | (yaml_keys(path.parent / base.group(1)) if base else set())


def check_script(cwd, args, options):
    """``python SCRIPT ...`` / ``torchrun SCRIPT ...``: the script exists;
    its options are in its --help or keys of the YAML it is given."""
    script = (cwd / args[0]).resolve()
    assert script.is_file(), script
    known = run_help(script)
    yamls = [cwd / a for a in args[1:] if a.endswith(".yaml")]
    keys = set().union(*(yaml_keys(y) for y in yamls))
    for opt in options:
        assert opt in known or opt[2:] in keys, (script, opt)


def check_bash(code, values):
    cwd = REPO
    for line in commands(code):
        words = shlex.split(line, comments=True)
        if not words:
            continue  # a comment line
        options = [o.split("=")[0] for o in re.findall(r"\s(--[\w-]+=?)", line)]
        tool, args = words[0], words[1:]
        if tool == "cd":
            cwd = cwd / args[0]
        elif tool == "bash":
            assert (cwd / args[0]).is_file(), args[0]
        elif tool == "python":
            check_script(cwd, args, options)
        elif tool == "torchrun":
            n = next(i for i, a in enumerate(args) if not a.startswith("-"))
            for opt in args[:n]:
                known = run_help("torch.distributed.run")  # torchrun
                assert opt.split("=")[0] in known, opt
            rest = " ".join(args[n:])
            check_script(cwd, args[n:], re.findall(r"--[\w-]+", rest))
        elif tool in CONSOLE:
            known = run_help(CONSOLE[tool])
            for opt in options:
                assert opt in known, (tool, opt)
        elif tool == "pip":
            known = help_text(sys.executable, "-m", "pip", args[0])
            for opt in [w for w in args if w.startswith("-")]:
                assert re.search(rf"(^|\s){opt}[ ,]", known), opt
        else:
            raise AssertionError(f"no check for the command {tool!r}")


def check_diff(code, values):
    name = re.search(r"^--- a/(\S+)", code, re.M).group(1)
    target = DIFF_TARGETS[name].read_text()
    assert snippets.apply_diff(target, code) != target


def check_bibtex(code, values):
    assert code.count("{") == code.count("}") and code.startswith("@")
    for field in ("title", "author", "journal", "year"):
        assert re.search(rf"^\s*{field}\s*=", code, re.M), field


def check_output(code, values, folder):
    printed = "".join(p.read_text() for p in folder.glob("*.py"))
    for line in code.splitlines():
        words = re.match(r"[^\d]*\] ([^\d%]+)", line).group(1).strip()
        assert words in printed, words


@pytest.mark.parametrize(
    "path, lang, code, line",
    BLOCKS,
    ids=[f"{p.relative_to(REPO)}:{n}" for p, _, _, n in BLOCKS],
)
def test_block(path, lang, code, line, values):
    checks = {
        "python": check_python,
        "yaml": check_yaml,
        "bash": check_bash,
        "diff": check_diff,
        "bibtex": check_bibtex,
    }
    if lang == "":
        check_output(code, values, path.parent)
    else:
        assert lang in checks, f"{path}:{line}: no check for {lang!r}"
        checks[lang](code, values)


@pytest.mark.parametrize(
    "check, code, error",
    [
        (check_bash, "dampit-export run model --bogus\n", AssertionError),
        (
            check_bash,
            "python recipes/VoxCeleb/train.py --no_such=1\n",
            AssertionError,
        ),
        (check_bash, "bash tools/no_such_script.sh\n", AssertionError),
        (check_python, 'ver = load_model("my_model")\n', NameError),
        (
            check_yaml,
            "compute_cost: !new:dampit.losses.SoftmaxLoss\n"
            "    input_size: !ref <emb_dim>\n    n_classes: 3\n",
            ValueError,
        ),
        (
            check_diff,
            "--- a/train_speaker_embeddings.py\n@@ -1 +1 @@\n-x\n+y\n",
            ValueError,
        ),
    ],
)
def test_the_checks_catch_drift(check, code, error, values):
    """Each checker fails on a snippet that does not fit the code."""
    with pytest.raises(error):
        check(code, values)
