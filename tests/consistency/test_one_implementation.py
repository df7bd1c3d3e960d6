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
