"""Shared pytest setup for the host-mode integration tests.

- the `slow` marker (tests skipped in the sanitizer pass of `make integration`);
- `agent`: a fresh agentd on a socketpair with its own runtime directory;
  teardown closes the port and checks that agentd exits 0;
- `figures`: `figures.record(name, value, unit)` collects measured figures,
  printed at the end of the run (performance is reported, never asserted).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from agentd_client.lowlevel import AGENTD, Agent  # noqa: E402

SANITIZED = os.path.basename(AGENTD).endswith("-san")
_FIGURES = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long-running; skipped in the sanitizer pass")


class Figures:
    def record(self, name, value, unit):
        _FIGURES.append((name, value, unit))


@pytest.fixture(scope="session")
def figures():
    return Figures()


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    terminalreporter.section("figures measured with %s" % os.path.basename(AGENTD))
    for name, value, unit in _FIGURES:
        if isinstance(value, float):
            value = "%.3f" % value
        terminalreporter.write_line("%-50s %s %s" % (name, value, unit))


@pytest.fixture
def runtime_dir(tmp_path):
    d = tmp_path / "runtime"
    (d / "scripts").mkdir(parents=True)
    return d


@pytest.fixture
def spawn_agent(runtime_dir):
    """Factory: spawn_agent(*args, **kw) -> Agent; all are closed at teardown
    and each must exit with status 0."""
    agents = []

    def spawn(*args, **kw):
        kw.setdefault("runtime_dir", str(runtime_dir))
        a = Agent.spawn(*args, **kw)
        agents.append(a)
        return a

    yield spawn
    for a in agents:
        if a.proc.poll() is None:
            assert a.close(timeout=15) == 0
        else:
            assert a.proc.returncode == 0


@pytest.fixture
def agent(spawn_agent):
    return spawn_agent()
