"""``tools/env.sh``: every process it starts imports this clone's dampit.

The virtualenv is shared by every clone on a machine, and its editable
install points at whichever clone installed last. A recipe script run
from another folder must still import the clone that sourced env.sh.
"""

import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_a_script_elsewhere_imports_this_clone(tmp_path):
    script = tmp_path / "where.py"
    script.write_text(
        "import os, dampit\n"
        "print(os.path.realpath(dampit.__file__))\n"
        "print(os.environ['PYTHONPATH'].split(os.pathsep)[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        ["bash", "-c", f"source '{REPO}/tools/env.sh' && python '{script}'"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split("\n")
    assert pathlib.Path(out[0]) == REPO / "dampit" / "__init__.py"
    assert pathlib.Path(out[1]).resolve() == REPO
