"""A filesystem that stops answering (issue 14).

A FUSE server that answers FUSE_INIT and then reads nothing: every
request on its mount sleeps in the kernel (request_wait_answer) until the
server dies or the caller gets a fatal signal.  The agent must keep serving while its children wait there, give a
request up on core.exec.signal, answer the rest correctly when the
filesystem comes back (as errors, once the server is gone), and shut down
with requests still stuck.

The server is a separate process so that killing it (which aborts the
FUSE connection) frees every waiter; the mount is lazily unmounted at the
end, also when a test fails.  The test process itself never touches the
mount.
"""
import ctypes
import errno
import os
import select
import subprocess
import sys
import time

import pytest

from testlib import children, wait_for


FUSE_SERVER = r'''
import ctypes, errno, os, struct, sys
mnt = sys.argv[1]
fd = os.open("/dev/fuse", os.O_RDWR)
libc = ctypes.CDLL(None, use_errno=True)
opts = ("fd=%d,rootmode=40000,user_id=0,group_id=0" % fd).encode()
if libc.mount(b"x", mnt.encode(), b"fuse", 0, opts) != 0:
    print("mount failed: %s" % os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(1)
req = os.read(fd, (1 << 20) + 4096)
ln, opcode, unique = struct.unpack_from("<IIQ", req)
assert opcode == 26, opcode  # FUSE_INIT: answer it, and nothing after it
major, minor = struct.unpack_from("<II", req, 40)
out = struct.pack("<IIIIHHIIHHI", 7, min(minor, 31), 0, 0, 0, 0, 65536, 1,
                  0, 0, 0) + bytes(28)
os.write(fd, struct.pack("<IiQ", 16 + len(out), 0, unique) + out)
print("init", flush=True)
# Never read again: requests stay queued in the kernel, where a fatal
# signal can still take them back (one the server has read cannot be).
sys.stdin.read()
'''

MNT_DETACH = 2
def fuse_waiters(pid):
    """Children of pid asleep on the FUSE connection."""
    out = []
    for c, _ in children(pid):
        try:
            with open("/proc/%d/wchan" % c) as f:
                w = f.read()
        except OSError:
            continue
        if "request_wait_answer" in w or "fuse" in w:
            out.append(c)
    return out


class HungFs:
    def __init__(self, path):
        self.path = path
        self.server = subprocess.Popen(["/usr/bin/python3", "-c", FUSE_SERVER, path],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def wait_init(self):
        r, _, _ = select.select([self.server.stdout], [], [], 20)
        line = self.server.stdout.readline().decode().strip() if r else "no answer"
        return line

    def kill_server(self):
        if self.server.poll() is None:
            self.server.kill()
        self.server.wait()

    def close(self):
        self.kill_server()
        libc = ctypes.CDLL(None, use_errno=True)
        while libc.umount2(self.path.encode(), MNT_DETACH) == 0:
            pass


@pytest.fixture
def hung_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a FUSE filesystem needs root")
    if not os.path.exists("/dev/fuse"):
        subprocess.run(["modprobe", "fuse"], stderr=subprocess.DEVNULL)
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse (FUSE not available)")
    mnt = tmp_path / "hung"
    mnt.mkdir()
    fs = HungFs(str(mnt))
    try:
        line = fs.wait_init()
        if line != "init":
            pytest.skip("FUSE mount unavailable here: %s" % line)
        yield fs
    finally:
        fs.close()


def request(ag, op, **fields):
    i = ag.new_id()
    ag.send(i, "core.fs.request", {"op": {op: fields}})
    return i


def response(ag, i, timeout=30):
    f = ag.recv(timeout=timeout, msg_id=i)
    assert f.t == "core.fs.response" and f.flags == 1, f
    return f.p


def no_frames_for(ag, ids):
    """A round trip through the agent, then no frame of ids may be queued."""
    assert response(ag, request(ag, "Stat", path="/"))["ok"]
    stray = [f for f in ag.pending if f.id in ids]
    assert not stray, stray


def stick_four(ag, mnt):
    """A Stat, a List, a Read and a Write, each asleep on the mount."""
    ids = {
        "Stat": request(ag, "Stat", path=mnt + "/x"),
        "List": request(ag, "List", path=mnt),
        "Read": request(ag, "Read", path=mnt + "/f"),
        "Write": request(ag, "Write", path=mnt + "/g"),
    }
    ag.send(ids["Write"], "core.fs.data", {"data": b"never lands"})
    wait_for(lambda: len(fuse_waiters(ag.proc.pid)) >= 4, timeout=60,
             what="four agent children asleep on the hung mount")
    return ids


def test_hung_filesystem_holds_nothing_else(hung_fs, agent):
    ids = stick_four(agent, hung_fs.path)
    # exec and a Stat of / are answered while the four wait
    r = agent.run("true", timeout=30)
    assert r.code == 0, r
    no_frames_for(agent, ids.values())
    assert len(fuse_waiters(agent.proc.pid)) == 4
    # signal on a live fs id gives the request up: its child goes, and
    # nothing is ever sent for it
    for op in ("Stat", "Read", "Write"):
        agent.signal(ids[op], 9)
    wait_for(lambda: len(fuse_waiters(agent.proc.pid)) == 1, timeout=60,
             what="the cancelled requests' children to end")
    # the slot is free: the id can be used again
    agent.send(ids["Stat"], "core.fs.request", {"op": {"Stat": {"path": "/"}}})
    assert response(agent, ids["Stat"])["ok"]
    # the filesystem "answers" (the server dies): the List still pending
    # gets its correct response, the cancelled ones get nothing
    hung_fs.kill_server()
    p = response(agent, ids["List"])
    assert p["ok"] is False and p["error"].startswith("opendir: "), p
    assert p["error"].endswith(("(os error %d)" % errno.ECONNABORTED,
                                "(os error %d)" % errno.ENOTCONN)), p
    no_frames_for(agent, [ids["Read"], ids["Write"]])
    assert agent.run("true").code == 0


def test_heartbeat_into_hung_runtime_dir_does_not_stop_exec(hung_fs, spawn_agent):
    ag = spawn_agent(runtime_dir=hung_fs.path, heartbeat_interval=1)
    wait_for(lambda: len(fuse_waiters(ag.proc.pid)) == 1, timeout=60,
             what="the heartbeat child asleep on the hung runtime directory")
    # keep the agent busy across several heartbeat ticks (an absolute
    # program path: a bare name is searched in the runtime directory's
    # scripts/ first, which would hang the exec child itself)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        assert ag.run("/bin/true", timeout=30).code == 0
    # a stuck heartbeat is not started again and again
    assert len(fuse_waiters(ag.proc.pid)) == 1


def test_shutdown_with_requests_stuck(hung_fs, agent):
    stick_four(agent, hung_fs.path)
    agent.shutdown()
    assert agent.proc.wait(timeout=30) == 0
