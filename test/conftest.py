"""Shared pytest setup for the host-mode integration tests.

- the `slow` marker (tests skipped in the sanitizer pass of `make integration`);
- `agent`: a fresh agentd on a socketpair with its own runtime directory;
  teardown closes the port and checks that agentd exits 0;
- `figures`: `figures.record(name, value, unit)` collects measured figures,
  printed at the end of the run (performance is reported, never asserted);
- no process left behind: everything the run starts inherits
  AGENTD_TEST_RUN=<marker> (subprocess calls with their own env get it
  added), and the session fails if a marked process outlives it.  The
  environment survives re-parenting, setsid and exec, so an agentd child
  orphaned by a crashed agentd is still found.
- `wait_for` (testlib.py): wait for a condition by polling it.
"""
import os
import subprocess
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from agentd_client.lowlevel import AGENTD, Agent  # noqa: E402
from testlib import MARKER_VAR, marked_pids, wait_for  # noqa: E402,F401

# tools/mutants sets the marker itself to clean up after a hung run.
RUN_MARKER = os.environ.setdefault(MARKER_VAR, uuid.uuid4().hex)
_Popen = subprocess.Popen


class _MarkedPopen(_Popen):
    """subprocess.Popen that keeps the run marker in an explicit env."""

    def __init__(self, *args, **kw):
        env = kw.get("env")
        if env is not None and MARKER_VAR not in env:
            kw["env"] = dict(env, **{MARKER_VAR: RUN_MARKER})
        super().__init__(*args, **kw)


subprocess.Popen = _MarkedPopen
_FIRST_SEEN = {}  # pid -> the test after which it was first seen alive

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


def _ours():
    """pytest and its ancestors: they may carry the marker too."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
        except OSError:
            break
        pid = int(st[st.rindex(")") + 2:].split()[1])
    return pids


@pytest.fixture(autouse=True)
def _note_processes(request):
    """After each test (its own fixtures are torn down first), note which
    marked processes are alive, so a leftover can be traced to its test."""
    yield
    for pid, _ in marked_pids(RUN_MARKER, exclude=_ours()):
        _FIRST_SEEN.setdefault(pid, request.node.nodeid)


def pytest_sessionfinish(session, exitstatus):
    ours = _ours()

    def all_gone():
        return not marked_pids(RUN_MARKER, exclude=ours)
    try:
        wait_for(all_gone, timeout=10, what="the processes the tests started to end")
        return
    except AssertionError:
        pass
    left = marked_pids(RUN_MARKER, exclude=ours)
    for pid, _ in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    if not left:
        return
    rep = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["pid %d still running: %s (first seen after %s)" % (
        pid, cmd[:200], _FIRST_SEEN.get(pid, "the last test")) for pid, cmd in left]
    if rep:
        rep.section("processes left behind by the tests (now killed)", red=True)
        for line in lines:
            rep.write_line(line)
    else:
        sys.stderr.write("\n".join(lines) + "\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
