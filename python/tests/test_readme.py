"""The README's "Drive agentd from your program" example, run as written
against what `./microvm --keep` gives: a Unix socket the agent is reached
through, whose core.ready went to an earlier client (the relay fixture)."""
import os
import re
import subprocess
import sys

from conftest import ROOT

SECTION = "## Drive agentd from your program"


def readme_example():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index(SECTION):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_against_a_kept_vm_socket(relay, tmp_path):
    script = tmp_path / "drive.py"
    script.write_text(readme_example())
    r = subprocess.run([sys.executable, str(script), relay.path], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("3 Linux "), r.stdout
    size = os.path.getsize(os.path.join(ROOT, "README.md"))
    assert lines[1] == "0 of %d" % size and lines[-2] == "%d of %d" % (size, size)
    assert lines[-1] == "['README.md']"
