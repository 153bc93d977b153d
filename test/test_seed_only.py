"""The agent speaks only the seed generation, so its build (AGENTD_SEED_ONLY)
leaves the generation-7 codec tables out; agentctl keeps them.  Checked on
the binaries: field names that only g7 schemas use must not be in agentd."""
import os

import pytest

from agentd_client.lowlevel import AGENTD
from conftest import SANITIZED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G7_ONLY = [b"follow_symlink", b"handoff_init", b"create_new", b"security_profile",
           b"unix_time_nanos", b"id_end_exclusive"]


def read(path):
    if not os.path.exists(path):
        pytest.skip("%s not built" % path)
    with open(path, "rb") as f:
        return f.read()


def test_agent_has_no_g7_tables():
    if SANITIZED:
        pytest.skip("the sanitizer build's debug info names every struct member")
    data = read(AGENTD)
    assert [w for w in G7_ONLY if w in data] == []
    # the message names stay: a g7 frame is still recognised and skipped
    assert b"core.ping" in data


def test_agentctl_keeps_the_whole_codec():
    data = read(os.path.join(ROOT, "agentctl"))
    assert [w for w in G7_ONLY if w not in data] == []
