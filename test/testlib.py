"""Helpers the host-mode tests share: waiting by polling, the agent's design
constants, and the processes a test run started.

- `wait_for(cond, timeout, what)`: poll cond() until it is true; the timeout
  is a hang guard, never a statement about speed.
- `DESIGN`: the agent's output bounds (agent.h), so bounds in tests follow
  from the design instead of round numbers; `agent_constant(name)` reads
  agent.h itself, to check that it agrees.
- `output_memory_bound_kib()`: what the agent may hold for bulk output.
- `children(pid)`, `zombies(pid)`: a process's children (from /proc).
- `run_marker()`, `marked_pids()`: every process a test run starts carries
  AGENTD_TEST_RUN=<marker> in its environment (conftest.py), so what is left
  at the end is found even after it was re-parented.
"""
import os
import re
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARKER_VAR = "AGENTD_TEST_RUN"


def wait_for(cond, timeout=10.0, what=None, interval=0.01):
    """Poll cond() until it returns something true and return that.  The
    interval grows to 0.1 s; past timeout an AssertionError names `what`
    (a string, or a function called then for a description of the state)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            if callable(what):
                what = what()
            raise AssertionError("gave up after %.0f s waiting for %s" % (
                timeout, what or getattr(cond, "__name__", "a condition")))
        time.sleep(interval)
        interval = min(interval * 2, 0.1)


# The design figures of agent.h, stated here on purpose instead of read
# from it: a bound read from the code under test grows with a bug that
# raises the constant (make mutants: output-soft-limit-16x would pass).
# test_agent.py::test_design_figures_match_agent_h checks that agent.h
# agrees, so a deliberate change of the design updates both.
DESIGN = {
    "OUT_SOFT_LIMIT": 256 * 1024,    # bulk producers stop here
    "OUT_HARD_LIMIT": 8 * 1024 * 1024,  # the port is not read from here
    "OUT_READ_CHUNK": 64 * 1024,     # one read from a child or a file
    "FS_STREAM_MAX": 256 * 1024,     # an upload's queue while a frame streams
}

_constants = {}


def agent_constant(name):
    """Value of `#define NAME (integer expression)` in agent.h."""
    if not _constants:
        with open(os.path.join(ROOT, "agent.h")) as f:
            for m in re.finditer(r"^#define\s+(\w+)\s+\(([0-9u*+ ]+)\)", f.read(), re.M):
                _constants[m.group(1)] = eval(m.group(2).replace("u", ""), {})
    return _constants[name]


# One frame header plus the CBOR around one chunk's bytes: a 9-byte frame
# header, the envelope map with "v", "t" and the payload's byte-string head,
# and {"data": h'...'}; 64 bytes is generous.
FRAME_OVERHEAD = 64


def output_memory_bound_kib(slack_kib=256):
    """Memory the agent may add while a host reads nothing and a child or a
    file produces without end (agent.h): bulk producers stop at
    OUT_SOFT_LIMIT, so the queue holds at most that plus one frame of one
    read chunk (OUT_READ_CHUNK); its buffer grows by doubling, so up to
    twice that is allocated and may be touched.  Add the read chunk itself
    (the buffer the agent reads into) and slack for the allocator and
    bookkeeping.  Today's figures: ~350 kB stalled, ~570 kB peak above the
    idle agent; 16x the soft limit needs several MiB."""
    queue = DESIGN["OUT_SOFT_LIMIT"] + DESIGN["OUT_READ_CHUNK"] + FRAME_OVERHEAD
    return (2 * queue + DESIGN["OUT_READ_CHUNK"]) // 1024 + slack_kib


def read_status(pid, key):
    """A kB figure (VmHWM, VmRSS, VmSize, ...) of /proc/PID/status."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s for pid %d" % (key, pid))


def vm_hwm_kib(pid):
    return read_status(pid, "VmHWM")


def _stat(pid):
    """(state, ppid) of pid, or None once it is gone."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            st = f.read()
    except OSError:
        return None
    fields = st[st.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def children(pid):
    """[(child pid, state)] of pid, zombies included."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = _stat(d)
            if s and s[1] == pid:
                out.append((int(d), s[0]))
    return out


def zombies(pid):
    return [c for c, state in children(pid) if state == "Z"]


def run_marker():
    return os.environ.get(MARKER_VAR)


def marked_pids(marker=None, exclude=()):
    """Live processes whose environment holds AGENTD_TEST_RUN=marker."""
    want = ("%s=%s" % (MARKER_VAR, marker or run_marker())).encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in exclude:
            continue
        try:
            with open("/proc/%s/environ" % d, "rb") as f:
                if want not in f.read().split(b"\0"):
                    continue
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        s = _stat(d)
        if s and s[0] != "Z":
            found.append((int(d), cmd))
    return found


def unread_by_peer(sock):
    """Bytes sent on a Unix stream socket that its peer has not read yet
    (SIOCOUTQ: 0 once the peer consumed everything)."""
    import fcntl
    import struct
    import termios
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def sleeping_in_epoll(pid):
    """pid is blocked in epoll_wait: it has handled everything ready."""
    try:
        with open("/proc/%d/wchan" % pid) as f:
            wchan = f.read().strip()
    except OSError:
        return False
    s = _stat(pid)
    return bool(s) and s[0] == "S" and wchan in ("do_epoll_wait", "ep_poll")


def read_syscalls(pid):
    """Read-type system calls pid made so far (/proc/PID/io syscr): an idle
    agent reads only its timerfds, so this counts timer ticks it handled."""
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("syscr:"):
                return int(line.split()[1])
    raise AssertionError("no syscr for pid %d" % pid)
