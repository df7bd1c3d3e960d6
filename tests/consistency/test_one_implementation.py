"""Each job done once: the package, the recipes and the templates use
dampit's own implementation of it, never a second one.

Each check greps the source trees for the other implementation's
signature; the grep is tested on a line it must find.
"""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]
TREES = ("dampit", "recipes", "templates")


def matches(pattern, trees=TREES, root=REPO):
    """``path:line`` of every line of the trees' ``.py`` files matching."""
    regex = re.compile(pattern)
    found = []
    for tree in trees:
        for path in sorted((root / tree).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if regex.search(line):
                    found.append(f"{path.relative_to(root)}:{n}")
    return found


SB_RATES = r"metric_stats import .*\b(EER|minDCF)\b"


def test_error_rates_are_dampits(tmp_path):
    """EER and minDCF: ``dampit.metrics.error_rates`` (exact, float64),
    not SpeechBrain's ``EER``/``minDCF`` (tools/benchmarks compares the
    two and may import them)."""
    assert matches(SB_RATES) == []
    (tmp_path / "dampit").mkdir()
    (tmp_path / "dampit" / "x.py").write_text(
        "from speechbrain.utils.metric_stats import EER\n"
    )
    assert matches(SB_RATES, ("dampit",), tmp_path) == ["dampit/x.py:1"]
