"""Each job done once: the package, the recipes and the templates use
dampit's own implementation of it, never a second one.

Each check greps the source trees for the other implementation's
signature; the grep is tested on a line it must find.
"""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]
TREES = ("dampit", "recipes", "templates", "tools")


def matches(pattern, trees=TREES, root=REPO, allowed=()):
    """``path:line`` of every line of the trees' ``.py`` files matching,
    but in the ``allowed`` files."""
    regex = re.compile(pattern)
    found = []
    for tree in trees:
        for path in sorted((root / tree).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in allowed:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if regex.search(line):
                    found.append(f"{rel}:{n}")
    return found


SB_RATES = r"metric_stats import .*\b(EER|minDCF)\b"


def test_error_rates_are_dampits(tmp_path):
    """EER and minDCF: ``dampit.metrics.error_rates`` (exact, float64),
    not SpeechBrain's ``EER``/``minDCF`` (the benchmark comparing the two
    imports them)."""
    assert (
        matches(SB_RATES, allowed=("tools/benchmarks/bench_metrics.py",)) == []
    )
    (tmp_path / "dampit").mkdir()
    (tmp_path / "dampit" / "x.py").write_text(
        "from speechbrain.utils.metric_stats import EER\n"
    )
    assert matches(SB_RATES, ("dampit",), tmp_path) == ["dampit/x.py:1"]


SPEAKER_OR_ID = r"split\([\"']/[\"'](, *1)?\)\[0\]|def path_to_id"


def test_one_path_to_id_and_speaker_rule(tmp_path):
    """An utterance's ID and speaker come from ``utt_to_id`` and
    ``speaker_of`` (dampit/dataio/trials.py) everywhere."""
    assert matches(SPEAKER_OR_ID, allowed=("dampit/dataio/trials.py",)) == []
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "x.py").write_text('spk = uid.split("/")[0]\n')
    assert matches(SPEAKER_OR_ID, ("tools",), tmp_path) == ["tools/x.py:1"]


TREE_WALK = r"os\.walk\(|glob\.glob\(|\.rglob\(|\.glob\("
NOT_AUDIO_WALKS = (
    "dampit/dataio/preparation.py",  # scan_audio_tree itself
    "dampit/utils/atomic.py",  # the files of its own temporary folder
    "dampit/inference/export.py",  # a run's checkpoint folders
    "dampit/utils/checkpoints.py",  # a checkpoint's parameter files
    "tools/benchmarks/run.py",  # the benchmark scripts
)


def test_one_audio_tree_scan(tmp_path):
    """Audio trees are listed by ``scan_audio_tree`` (hidden names
    skipped, links followed); other walks list no audio."""
    assert matches(TREE_WALK, allowed=NOT_AUDIO_WALKS) == []
    (tmp_path / "dampit").mkdir()
    (tmp_path / "dampit" / "x.py").write_text('glob.glob("**/*.wav")\n')
    assert matches(TREE_WALK, ("dampit",), tmp_path) == ["dampit/x.py:1"]


BOM = r"utf-8-sig|BOM_UTF8|\\ufeff"


def test_one_bom_aware_line_reader(tmp_path):
    """Text files users write are read by ``trials.utf8_lines``."""
    assert matches(BOM, allowed=("dampit/dataio/trials.py",)) == []
    (tmp_path / "dampit").mkdir()
    (tmp_path / "dampit" / "x.py").write_text('t = b.decode("utf-8-sig")\n')
    assert matches(BOM, ("dampit",), tmp_path) == ["dampit/x.py:1"]


ROUND = r"torch\.round\("


def test_one_relative_length_to_frames(tmp_path):
    """Relative lengths become frames in ``pooling.real_frames`` only."""
    assert matches(ROUND, allowed=("dampit/lobes/pooling.py",)) == []
    (tmp_path / "dampit").mkdir()
    (tmp_path / "dampit" / "x.py").write_text("n = torch.round(rel * T)\n")
    assert matches(ROUND, ("dampit",), tmp_path) == ["dampit/x.py:1"]
