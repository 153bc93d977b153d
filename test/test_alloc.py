"""alloc.c, the agent's malloc (linked into agentd in place of musl's):
a randomised model check, and traps on a double or wild free.  The
integration tests exercise it inside the real agent as well."""
import os
import shutil
import signal
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def stress(tmp_path_factory):
    cc = os.environ.get("MUSL_CC", "musl-gcc")
    if not shutil.which(cc):
        pytest.skip("needs %s" % cc)
    out = str(tmp_path_factory.mktemp("alloc") / "alloc_stress")
    # -fno-builtin: the model's own malloc calls must reach alloc.c as written
    subprocess.run([cc, "-std=gnu11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O2",
                    "-fno-builtin", "-static", "-o", out,
                    os.path.join(ROOT, "test", "alloc_stress.c"),
                    os.path.join(ROOT, "alloc.c")], check=True)
    return out


def test_random_use_matches_the_model(stress):
    r = subprocess.run([stress], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stdout + r.stderr


@pytest.mark.parametrize("how", ["double-free", "bad-free"])
def test_invalid_free_traps(stress, how):
    r = subprocess.run([stress, how], capture_output=True, timeout=60)
    assert r.returncode in (-signal.SIGILL, -signal.SIGTRAP), r
