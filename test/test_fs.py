"""Filesystem operations and file transfer (SPEC 4 and 6, issue 4).

Every test drives the real agentd binary over a socketpair with the
independent client in agentd_client.lowlevel and checks the result on the host's
filesystem with Python's own os calls.
"""
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import statistics
import struct
import subprocess
import tempfile
import threading
import time

import cbor2
import pytest

from agentd_client.lowlevel import AGENTD, Agent, encode_frame
from testlib import (DESIGN, children, output_memory_bound_kib, unread_by_peer,
                     vm_hwm_kib, wait_for)

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "vectors")
CHUNK_MAX = 3145728
FRAME_LEN_MAX = 4194304
SANITIZED = os.path.basename(AGENTD).endswith("-san")
NOBODY = 65534


# ---------------------------------------------------------------------------
# helpers

def spawn(rt_dir, wrapper=None):
    """agentd on a socketpair; wrapper (a command prefix) e.g. drops root."""
    os.makedirs(rt_dir, exist_ok=True)
    old = os.environ.get("AGENTD_WRAPPER")
    if wrapper:
        os.environ["AGENTD_WRAPPER"] = " ".join(filter(None, [wrapper, old]))
    try:
        return Agent.spawn(runtime_dir=str(rt_dir))
    finally:
        if old is None:
            os.environ.pop("AGENTD_WRAPPER", None)
        else:
            os.environ["AGENTD_WRAPPER"] = old


@pytest.fixture
def ag(tmp_path):
    a = spawn(tmp_path / "rt")
    yield a
    assert a.close() == 0  # also: no leak reports from the sanitizer build


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    return d


@pytest.fixture
def figs(request):
    """Record a figure with the suite's `figures` fixture when there is
    one, and print it in any case."""
    try:
        sink = request.getfixturevalue("figures")
    except pytest.FixtureLookupError:
        sink = None

    def record(name, value, unit, how):
        print("FIGURE %s = %s %s (%s)" % (name, value, unit, how))
        if sink is not None:
            sink.record(name, value, unit)
    return record


def request(ag, op, **fields):
    i = ag.new_id()
    ag.send(i, "core.fs.request", {"op": {op: fields}})
    return i


def response(ag, i, timeout=60):
    """The terminal frame of id i: a canonical seed FsResponse."""
    f = ag.recv(timeout=timeout, msg_id=i)
    assert f.t == "core.fs.response", f
    assert f.flags == 1 and f.v == 1, f
    assert list(f.p) == ["ok", "error", "data"], f.p
    return f.p


def fs(ag, op, **fields):
    return response(ag, request(ag, op, **fields))


OK = {"ok": True, "error": None, "data": None}


def err(prefix, e):
    return {"ok": False, "error": "%s: %s (os error %d)" % (prefix, os.strerror(e), e),
            "data": None}


def sync(ag, *ids):
    """Round trip through the agent; then no frame of ids may be pending
    (frames are handled in order, so any extra reply came before)."""
    assert fs(ag, "Stat", path="/")["ok"]
    stray = [f for f in ag.pending if f.id in ids]
    assert not stray, stray


def read_file(ag, path):
    i = request(ag, "Read", path=path)
    chunks = []
    while True:
        f = ag.recv(msg_id=i)
        if f.t != "core.fs.data":
            break
        assert f.flags == 0, f
        assert 1 <= len(f.p["data"]) <= CHUNK_MAX
        chunks.append(f.p["data"])
    assert f.t == "core.fs.response" and f.flags == 1, f
    assert list(f.p) == ["ok", "error", "data"]
    return b"".join(chunks), f.p, len(chunks)


def write_open(ag, path, **kw):
    i = ag.new_id()
    ag.send(i, "core.fs.request", {"op": {"Write": dict(path=path, **kw)}})
    return i


def write_file(ag, path, chunks, **kw):
    i = write_open(ag, path, **kw)
    for c in chunks:
        ag.send(i, "core.fs.data", {"data": c})
    ag.send(i, "core.fs.data", {"data": b""})
    p = response(ag, i)
    sync(ag, i)
    return p


def entry_of(path, st):
    kind = ("file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
            else "symlink" if stat.S_ISLNK(st.st_mode) else "other")
    mtime = int(st.st_mtime)
    return {"path": path, "kind": kind, "size": st.st_size, "mode": st.st_mode,
            "modified": mtime if st.st_mtime >= 0 else None}


def hidden(d):
    """Temporary files agentd may have left in d."""
    return [n for n in os.listdir(d) if "agentd-tmp" in n]


def umask():
    m = os.umask(0)
    os.umask(m)
    return m


@contextlib.contextmanager
def helper_process():
    """A process whose /proc files we may write (its oom_score_adj)."""
    p = subprocess.Popen(["sleep", "300"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()
def wchan(pid):
    try:
        with open("/proc/%d/wchan" % pid) as f:
            return f.read()
    except OSError:
        return ""



# ---------------------------------------------------------------------------
# Stat and List (6.1, 6.2)

def test_stat_shapes(ag, work):
    f = work / "café 文件.txt"
    f.write_bytes(b"x" * 1234)
    os.chmod(f, 0o640)
    (work / "d").mkdir()
    os.symlink("nowhere", work / "l")
    os.mkfifo(work / "p")
    old = work / "old"
    old.write_bytes(b"")
    os.utime(old, (-100, -100))
    for name in ["café 文件.txt", "d", "l", "p", "old"]:
        path = str(work / name)
        p = fs(ag, "Stat", path=path)
        assert p["ok"] is True and p["error"] is None, p
        e = p["data"]["Stat"]
        assert list(p["data"]) == ["Stat"]
        assert list(e) == ["path", "kind", "size", "mode", "modified"]
        assert e == entry_of(path, os.lstat(path)), (e, name)
    assert fs(ag, "Stat", path=str(work / "d"))["data"]["Stat"]["kind"] == "dir"
    assert fs(ag, "Stat", path=str(work / "old"))["data"]["Stat"]["modified"] is None
    assert fs(ag, "Stat", path=str(work / "p"))["data"]["Stat"]["kind"] == "other"
    # the request's path text comes back exactly, relative or not
    rel = os.path.relpath(str(work / "d"))  # the agent shares our cwd
    assert fs(ag, "Stat", path=rel)["data"]["Stat"]["path"] == rel
    assert fs(ag, "Stat", path=str(work / "missing")) == err("stat", errno.ENOENT)
    assert fs(ag, "Stat", path=str(work / "p" / "x")) == err("stat", errno.ENOTDIR)


def test_list_shapes(ag, work):
    (work / "a").write_bytes(b"abc")
    (work / "sub").mkdir()
    os.symlink("/etc", work / "ln")
    os.mkfifo(work / "fifo")
    for req in [str(work), str(work) + "/"]:
        p = fs(ag, "List", path=req)
        assert p["ok"] is True and p["error"] is None
        assert list(p["data"]) == ["List"]
        got = p["data"]["List"]
        want = [entry_of(str(work / n), os.lstat(work / n))
                for n in ["a", "sub", "ln", "fifo"]]
        key = lambda e: e["path"]
        assert sorted(got, key=key) == sorted(want, key=key)
        for e in got:
            assert list(e) == ["path", "kind", "size", "mode", "modified"]
    assert fs(ag, "List", path=str(work / "sub")) == {
        "ok": True, "error": None, "data": {"List": []}}
    assert fs(ag, "List", path=str(work / "nope")) == err("opendir", errno.ENOENT)
    assert fs(ag, "List", path=str(work / "a")) == err("opendir", errno.ENOTDIR)


def test_list_10000_entries(ag, work):
    names = set("f%05d" % k for k in range(10000))
    for n in names:
        os.close(os.open(work / n, os.O_CREAT | os.O_WRONLY, 0o600))
    p = fs(ag, "List", path=str(work))
    got = p["data"]["List"]
    assert len(got) == 10000
    assert set(e["path"] for e in got) == set(str(work / n) for n in names)
    assert all(e["kind"] == "file" and e["size"] == 0 and e["mode"] == 0o100600
               for e in got)


def test_list_too_large_for_one_frame(ag, work):
    # ~330 encoded bytes per entry: 14,000 entries need more than 4 MiB.
    for k in range(14000):
        os.close(os.open(work / ("%05d" % k + "n" * 240), os.O_CREAT | os.O_WRONLY))
    p = fs(ag, "List", path=str(work))
    assert p == {"ok": False, "data": None,
                 "error": "readdir: listing does not fit in one frame (4194304 bytes)"}
    # the agent carries on
    assert fs(ag, "Stat", path=str(work))["ok"]
    # and a listing just under the limit still arrives whole
    for k in range(3000, 14000):
        os.unlink(work / ("%05d" % k + "n" * 240))
    assert len(fs(ag, "List", path=str(work))["data"]["List"]) == 3000


# ---------------------------------------------------------------------------
# Read (6.3)

def test_read_shapes(ag, work):
    data = os.urandom(10 << 20)
    (work / "big").write_bytes(data)
    got, p, n = read_file(ag, str(work / "big"))
    assert p == OK and got == data and n >= 4
    (work / "empty").write_bytes(b"")
    got, p, n = read_file(ag, str(work / "empty"))
    assert (got, p, n) == (b"", OK, 0)
    # size 0 in stat, content on read
    got, p, _ = read_file(ag, "/proc/self/status")
    assert p == OK and b"VmHWM" in got
    got, p, n = read_file(ag, "/dev/null")
    assert (got, p, n) == (b"", OK, 0)
    # directory: opening succeeds, reading fails
    assert read_file(ag, str(work))[1:] == (err("read", errno.EISDIR), 0)
    assert read_file(ag, str(work / "nope"))[1:] == (err("open", errno.ENOENT), 0)


def test_reads_interleave_fairly(ag, work):
    for n in ("a", "b"):
        with open(work / n, "wb") as f:
            f.truncate(8 << 20)  # sparse: 8 MiB of zeros
    ia = request(ag, "Read", path=str(work / "a"))
    ib = request(ag, "Read", path=str(work / "b"))
    order, done = [], set()
    while len(done) < 2:
        f = ag.recv()
        if f.t == "core.fs.data":
            assert f.id not in done
            order.append(f.id)
        else:
            assert f.p == OK, f
            done.add(f.id)
    assert order.count(ia) and order.count(ib)
    # neither stream waits for the other to finish
    assert order.index(ib) < len(order) - order[::-1].index(ia) - 1
    assert order.index(ia) < len(order) - order[::-1].index(ib) - 1
    # both stream from early on (each file comes through its own child,
    # so exact shares depend on how the children are scheduled)
    first_half = order[:len(order) // 2]
    assert first_half.count(ia) and first_half.count(ib)


def test_read_waits_for_host_without_buffering(tmp_path, work):
    """A host that does not read: the agent stops reading the file."""
    big = work / "sparse"
    with open(big, "wb") as f:
        f.truncate(256 << 20)
    ag = spawn(tmp_path / "rt")
    try:
        ag.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        before = vm_hwm_kib(ag.proc.pid)
        i = request(ag, "Read", path=str(big))
        # the agent stops draining the file's pipe once its output queue
        # is full: the reading child then waits in the pipe
        wait_for(lambda: any("pipe" in wchan(c) for c, _ in children(ag.proc.pid)),
                 timeout=60, what="the read child blocked on its full pipe")
        hwm = vm_hwm_kib(ag.proc.pid) - before
        # the agent is still responsive, then the whole file arrives
        h = hashlib.sha256()
        total = 0
        while True:
            f = ag.recv(msg_id=i)
            if f.t != "core.fs.data":
                break
            total += len(f.p["data"])
            h.update(f.p["data"])
        assert f.p == OK and total == 256 << 20
        assert h.hexdigest() == hashlib.sha256(bytes(256 << 20)).hexdigest()
        if not SANITIZED:
            bound = output_memory_bound_kib()  # from agent.h, see testlib
            assert hwm <= bound, "agent VmHWM grew %d KiB (bound %d) while the host stalls" % (hwm, bound)
    finally:
        ag.close()


def test_read_fifo_does_not_block_the_agent(ag, work):
    fifo = work / "fifo"
    os.mkfifo(fifo)
    keep = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer that waits
    try:
        i = request(ag, "Read", path=str(fifo))
        # the agent keeps answering while the FIFO has no data
        assert fs(ag, "Stat", path=str(fifo))["data"]["Stat"]["kind"] == "other"
        w = os.open(fifo, os.O_WRONLY)
        os.write(w, b"hello through a fifo")
        os.close(w)
    finally:
        os.close(keep)
    chunks = []
    while True:
        f = ag.recv(msg_id=i, timeout=10)
        if f.t != "core.fs.data":
            break
        chunks.append(f.p["data"])
    assert f.p == OK and b"".join(chunks) == b"hello through a fifo"


# ---------------------------------------------------------------------------
# Write (6.4)

def test_write_new_file_creates_parents_default_mode(ag, work):
    path = work / "x" / "y" / "out.txt"
    assert write_file(ag, str(path), [b"hello ", b"world", b"!" * 100000]) == OK
    assert path.read_bytes() == b"hello world" + b"!" * 100000
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask()
    assert os.listdir(path.parent) == ["out.txt"]


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o4755, 0o1777, 0o2711, 0])
def test_write_mode_exact(ag, work, mode):
    path = work / "m"
    assert write_file(ag, str(path), [b"data"], mode=mode) == OK
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert path.read_bytes() == b"data"


def test_write_existing_keeps_mode_and_owner_and_truncates(ag, work):
    path = work / "exists"
    path.write_bytes(b"a much longer old content " * 100)
    os.chown(path, 1234, 5678)
    os.chmod(path, 0o4750)
    assert write_file(ag, str(path), [b"new"]) == OK
    st = os.stat(path)
    assert path.read_bytes() == b"new"
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4750)
    assert write_file(ag, str(path), [b"newer"], mode=0o604) == OK
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o604)
    assert hidden(work) == []


def test_write_empty_and_missing_mode_key(ag, work):
    i = ag.new_id()
    ag.send(i, "core.fs.request", {"op": {"Write": {"path": str(work / "e")}}})
    ag.send(i, "core.fs.data", {"data": b""})
    assert response(ag, i) == OK
    assert (work / "e").read_bytes() == b""


def test_write_chunk_encodings_the_decoder_accepts(ag, work):
    """fs.data as an indefinite byte string and as an array of ints."""
    i = write_open(ag, str(work / "enc"))
    indef = b"\xa1\x64data\x5f\x42ab\x41c\xff"          # {"data": (_ h'6162', h'63')}
    ag.send(i, "core.fs.data", raw_payload=indef)
    ag.send(i, "core.fs.data", raw_payload=cbor2.dumps({"data": [100, 101]}))
    ag.send(i, "core.fs.data", {"data": b""})
    assert response(ag, i) == OK
    assert (work / "enc").read_bytes() == b"abcde"


def test_write_large_chunks(ag, work):
    chunks = [os.urandom(CHUNK_MAX), os.urandom(CHUNK_MAX), os.urandom(12345)]
    assert write_file(ag, str(work / "big"), chunks) == OK
    assert (work / "big").read_bytes() == b"".join(chunks)


def fs_data_head(msg_id, n):
    """The bytes of data_frame(msg_id, chunk) before the chunk, len(chunk) n."""
    return data_frame(msg_id, b"\0" * n)[:-n] if n else data_frame(msg_id, b"")


def send_in_pieces(ag, frame, cuts):
    """frame cut at the offsets cuts, each piece read by the agent before the
    next is sent, so each cut is a read boundary."""
    prev = 0
    for c in sorted(c for c in set(cuts) if 0 < c < len(frame)) + [len(frame)]:
        ag.send_raw(frame[prev:c])
        prev = c
        if c < len(frame):
            wait_for(lambda: unread_by_peer(ag.sock) == 0, what="the agent to read the port")


def test_write_streamed_frames_split_anywhere_lose_nothing(ag, work):
    """core.fs.data frames of 64 KiB or more go into the upload as they
    arrive (the agent holds heads plus one read, not the frame); each
    reaches the agent in pieces cut in its heads and its data, and the file
    shows no byte lost, duplicated or reordered.  Frames under the streaming
    size and an upload of one frame's data in many frames mix in."""
    rnd = __import__("random").Random(14)
    sizes = [3 * 1024 * 1024, 65536, 65535, 70000, 1, 200003, 2 * 65536 + 7]
    i = write_open(ag, str(work / "f"))
    want = hashlib.sha256()
    for n, size in enumerate(sizes):
        data = rnd.randbytes(size)
        frame = data_frame(i, data)
        head = len(frame) - size
        near = range(1, head + 2) if n == 0 else (4, 9, 20, head - 1, head)
        send_in_pieces(ag, frame, [*near, head + 1, head + 65537, len(frame) - 1])
        want.update(data)
    ag.send(i, "core.fs.data", {"data": b""})
    assert response(ag, i) == OK
    with open(work / "f", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == want.hexdigest()


def test_write_streamed_frame_for_unknown_upload_answers_once(ag):
    """A large core.fs.data frame for no upload is not streamed: its one
    error comes for the whole frame, however many reads it took."""
    frame = data_frame(987653, b"\xa5" * (1024 * 1024))
    send_in_pieces(ag, frame, range(100, len(frame), 65536))
    f = ag.recv(msg_id=987653)
    assert f.p == {"ok": False, "error": "unknown write session: 987653", "data": None}
    sync(ag, 987653)


@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory resident")
def test_write_upload_memory_bounded(ag, work, figs):
    """64 MiB in 3 MiB core.fs.data frames to a file: the agent holds the
    frame reader (heads plus a read) and the upload's queue (its stream
    bound plus reads), never a whole frame (testlib.DESIGN, agent.h).  The
    file is in memory (/dev/shm when there is one): a disk that took
    nothing for a second would let the queue grow to its fallback bound."""
    pid = ag.proc.pid
    assert write_file(ag, str(work / "warm"), [b"x"]) == OK  # the worker exists
    before = vm_hwm_kib(pid)
    shm = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else work)
    big = os.path.join(shm, "big")
    i = write_open(ag, big)
    block = memoryview(b"\xa5" * (3 * 1024 * 1024))
    left = 64 * 1024 * 1024
    while left:
        n = min(left, len(block))
        ag.sock.sendall(fs_data_head(i, n))
        ag.sock.sendall(block[:n])
        left -= n
    ag.send(i, "core.fs.data", {"data": b""})
    assert response(ag, i, timeout=300) == OK
    assert os.path.getsize(big) == 64 * 1024 * 1024
    shutil.rmtree(shm)
    peak = vm_hwm_kib(pid)
    chunk = DESIGN["OUT_READ_CHUNK"]  # FRAME_READ_CHUNK, one port read
    reader = 2 * chunk
    queue = DESIGN["FS_STREAM_MAX"] + 2 * chunk
    slack = 64 * 1024  # page rounding, the arena, the frames of the write
    assert peak - before <= (reader + queue + slack) // 1024, (before, peak)
    figs("agent VmHWM, 64 MiB fs Write in 3 MiB frames", peak, "kB", "host mode")


def test_write_through_symlink_and_special_files_in_place(ag, work):
    target = work / "target"
    target.write_bytes(b"old")
    os.symlink("target", work / "link")
    assert write_file(ag, str(work / "link"), [b"via link"]) == OK
    assert os.path.islink(work / "link") and target.read_bytes() == b"via link"
    os.symlink("created", work / "dangling")
    assert write_file(ag, str(work / "dangling"), [b"made"]) == OK
    assert (work / "created").read_bytes() == b"made"
    assert write_file(ag, "/dev/null", [b"discarded"]) == OK
    assert hidden(work) == []
    # a regular file where nothing can be created: procfs, written in place
    with helper_process() as pid:
        adj = "/proc/%d/oom_score_adj" % pid
        assert write_file(ag, adj, [b"567"]) == OK
        with open(adj, "rb") as f:
            assert f.read() == b"567\n"


def test_write_failures_answer_once(ag, work):
    (work / "file").write_bytes(b"")
    cases = [
        (str(work / "file" / "sub" / "x"), err("mkdir parent", errno.ENOTDIR)),
        (str(work), err("open for write", errno.EISDIR)),
        (str(work) + "/newdir/", err("open for write", errno.EISDIR)),
    ]
    os.mkfifo(work / "fifo")  # no reader: agentd fails instead of blocking
    cases.append((str(work / "fifo"), err("open for write", errno.ENXIO)))
    for path, want in cases:
        i = write_open(ag, path)
        assert response(ag, i) == want, path
        # the host did not wait: its chunks and end are dropped silently,
        # a frame large enough to stream too
        ag.send(i, "core.fs.data", {"data": b"ignored"})
        ag.send_raw(data_frame(i, b"i" * (1 << 20)))
        ag.send(i, "core.fs.data", {"data": b"ignored"})
        ag.send(i, "core.fs.data", {"data": b""})
        sync(ag, i)
    assert sorted(os.listdir(work)) == ["fifo", "file"]


def test_write_failing_mid_frame_answers_once(ag):
    """A file that fails while a large frame streams into it (/dev/full):
    one error, and the rest of that frame, the frames after it and the end
    are dropped silently."""
    i = write_open(ag, "/dev/full")
    ag.send_raw(data_frame(i, b"x" * (3 << 20)) + data_frame(i, b"y" * (1 << 20)))
    assert response(ag, i) == err("write", errno.ENOSPC)
    ag.send_raw(data_frame(i, b"z" * (1 << 20)))
    ag.send(i, "core.fs.data", {"data": b""})
    sync(ag, i)


def test_write_data_after_the_end_is_dropped(ag, work):
    """The empty chunk ends an upload (SPEC 6.4): chunks after it, here
    queued while the upload waits in the lane behind a stuck request, never
    reach the file, and the upload answers once."""
    assert fs(ag, "Stat", path="/")["ok"]  # a pooled worker exists
    workers = [pid for pid, _ in children(ag.proc.pid)]
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        s = request(ag, "Stat", path="/")  # stuck: the upload waits behind it
        i = write_open(ag, str(work / "f"))
        ag.send_raw(data_frame(i, b"A" * 200000) + data_frame(i, b"") +
                    data_frame(i, b"Z" * 30000) + data_frame(i, b"Y" * 100000))
        assert response(ag, i) == OK
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert response(ag, s)["ok"]
    assert (work / "f").read_bytes() == b"A" * 200000
    sync(ag, i)


def test_write_unknown_session(ag):
    ag.send(987654, "core.fs.data", {"data": b"x"})
    f = ag.recv(msg_id=987654)
    assert f.t == "core.fs.response" and f.flags == 1
    assert f.p == {"ok": False, "error": "unknown write session: 987654", "data": None}
    ag.send(4294967295, "core.fs.data", {"data": b""})
    f = ag.recv(msg_id=4294967295)
    assert f.p["error"] == "unknown write session: 4294967295"


def test_write_session_limit(ag, work):
    ids = [write_open(ag, str(work / ("f%d" % k))) for k in range(64)]
    for i in ids:
        ag.send(i, "core.fs.data", {"data": b"%d" % i})
    extra = write_open(ag, str(work / "extra"))
    assert response(ag, extra) == {
        "ok": False, "data": None,
        "error": "open for write: too many concurrent write sessions (limit 64)"}
    ag.send(extra, "core.fs.data", {"data": b"dropped"})
    ag.send(extra, "core.fs.data", {"data": b""})
    sync(ag, extra, *ids)
    assert len(hidden(work)) == 64
    ag.send(ids[0], "core.fs.data", {"data": b""})
    assert response(ag, ids[0]) == OK
    again = write_open(ag, str(work / "again"))   # a slot is free again
    ag.send(again, "core.fs.data", {"data": b""})
    assert response(ag, again) == OK
    for i in ids[1:]:
        ag.send(i, "core.fs.data", {"data": b""})
    for k, i in enumerate(ids[1:], 1):
        assert response(ag, i) == OK
        assert (work / ("f%d" % k)).read_bytes() == b"%d" % i
    assert hidden(work) == []


def test_write_id_in_use_is_refused(ag, work):
    i = write_open(ag, str(work / "busy"))
    ag.send(i, "core.fs.request", {"op": {"Stat": {"path": "/"}}})
    assert response(ag, i)["ok"] is False
    ag.send(i, "core.fs.data", {"data": b"still mine"})
    ag.send(i, "core.fs.data", {"data": b""})
    assert response(ag, i) == OK
    assert (work / "busy").read_bytes() == b"still mine"


@pytest.mark.parametrize("cut", ["between-frames", "mid-frame", "shutdown"])
def test_aborted_upload_leaves_nothing(tmp_path, work, cut):
    ag = spawn(tmp_path / "rt")
    target = work / "sub" / "upload.bin"
    i = write_open(ag, str(target))
    for _ in range(4):
        ag.send(i, "core.fs.data", {"data": os.urandom(1 << 20)})
    assert fs(ag, "Stat", path="/")["ok"]
    assert len(hidden(work / "sub")) == 1 and not target.exists()
    if cut == "mid-frame":
        frame = encode_frame(i, "core.fs.data", {"data": os.urandom(1 << 20)})
        ag.send_raw(frame[:len(frame) // 2])
    if cut == "shutdown":
        ag.shutdown()
        assert ag.proc.wait(timeout=20) == 0
    ag.sock.close()  # the host goes away
    assert ag.proc.wait(timeout=20) == 0
    assert os.listdir(work / "sub") == []


def test_symlink_swapped_in_during_write(ag, work, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    # the target name becomes a symlink to the victim mid-upload
    i = write_open(ag, str(work / "t"))
    ag.send(i, "core.fs.data", {"data": b"part one "})
    sync(ag)
    os.symlink(victim, work / "t")
    ag.send(i, "core.fs.data", {"data": b"part two"})
    ag.send(i, "core.fs.data", {"data": b""})
    assert response(ag, i) == OK
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(work / "t")
    assert (work / "t").read_bytes() == b"part one part two"
    # the target's directory is replaced by a symlink to outside mid-upload
    (work / "d").mkdir()
    i = write_open(ag, str(work / "d" / "t"))
    ag.send(i, "core.fs.data", {"data": b"payload"})
    sync(ag)
    os.rename(work / "d", work / "moved")
    os.symlink(outside, work / "d")
    ag.send(i, "core.fs.data", {"data": b""})
    assert response(ag, i) == OK
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (work / "moved" / "t").read_bytes() == b"payload"


# ---------------------------------------------------------------------------
# Mkdir, Remove, RemoveDir, Copy, Rename (6.5)

def test_mkdir(ag, work):
    assert fs(ag, "Mkdir", path=str(work / "a" / "b" / "c")) == OK
    assert (work / "a" / "b" / "c").is_dir()
    assert stat.S_IMODE(os.stat(work / "a").st_mode) == 0o777 & ~umask()
    assert fs(ag, "Mkdir", path=str(work / "a" / "b")) == OK
    assert fs(ag, "Mkdir", path=str(work / "a") + "/") == OK
    (work / "f").write_bytes(b"")
    assert fs(ag, "Mkdir", path=str(work / "f")) == err("mkdir", errno.EEXIST)
    assert fs(ag, "Mkdir", path=str(work / "f" / "x")) == err("mkdir", errno.ENOTDIR)


def test_remove(ag, work):
    (work / "f").write_bytes(b"")
    assert fs(ag, "Remove", path=str(work / "f")) == OK
    assert not (work / "f").exists()
    assert fs(ag, "Remove", path=str(work / "f")) == err("remove", errno.ENOENT)
    (work / "d").mkdir()
    assert fs(ag, "Remove", path=str(work / "d")) == err("remove", errno.EISDIR)
    os.symlink(work / "d", work / "l")
    assert fs(ag, "Remove", path=str(work / "l")) == OK
    assert (work / "d").is_dir() and not os.path.lexists(work / "l")


def test_remove_dir(ag, work):
    t = work / "tree"
    for k in range(20):
        (t / ("d%d" % k) / "x").mkdir(parents=True)
        for j in range(100):
            (t / ("d%d" % k) / "x" / ("f%d" % j)).write_bytes(b"z")
    os.mkfifo(t / "fifo")
    assert fs(ag, "RemoveDir", path=str(t)) == OK
    assert not t.exists()
    assert fs(ag, "RemoveDir", path=str(t)) == err("remove_dir", errno.ENOENT)
    (work / "file").write_bytes(b"")
    assert fs(ag, "RemoveDir", path=str(work / "file")) == err("remove_dir", errno.ENOTDIR)
    assert (work / "file").exists()


def test_remove_dir_never_follows_symlinks(ag, work, tmp_path):
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "keep").write_bytes(b"keep")
    (outside / "inner" / "keep2").write_bytes(b"keep")
    t = work / "tree"
    (t / "a" / "b").mkdir(parents=True)
    os.symlink(outside, t / "to-outside")
    os.symlink(outside, t / "a" / "b" / "deep-link")
    os.symlink(outside / "keep", t / "a" / "file-link")
    assert fs(ag, "RemoveDir", path=str(t)) == OK
    assert not os.path.lexists(t)
    assert (outside / "keep").read_bytes() == b"keep"
    assert (outside / "inner" / "keep2").read_bytes() == b"keep"
    # the path itself a symlink: only the link goes
    os.symlink(outside, work / "link")
    assert fs(ag, "RemoveDir", path=str(work / "link")) == OK
    assert not os.path.lexists(work / "link")
    assert sorted(os.listdir(outside)) == ["inner", "keep"]


def test_remove_dir_depth(ag, work):
    p = work / "deep"
    p.mkdir()
    fd = os.open(p, os.O_RDONLY)
    try:
        for _ in range(300):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    assert fs(ag, "RemoveDir", path=str(p)) == {
        "ok": False, "data": None,
        "error": "remove_dir: directory tree deeper than 256 levels"}
    shutil.rmtree(p)
    (p / "a" / "b").mkdir(parents=True)
    assert fs(ag, "RemoveDir", path=str(p)) == OK


def test_copy(ag, work):
    src = work / "src"
    src.write_bytes(b"copy me" * 1000)
    os.chmod(src, 0o751)
    assert fs(ag, "Copy", src=str(src), dst=str(work / "n" / "e" / "dst")) == OK
    dst = work / "n" / "e" / "dst"
    assert dst.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o751
    (work / "old").write_bytes(b"a much longer old content" * 2000)
    assert fs(ag, "Copy", src=str(src), dst=str(work / "old")) == OK
    assert (work / "old").read_bytes() == src.read_bytes()
    os.symlink("src", work / "srclink")
    assert fs(ag, "Copy", src=str(work / "srclink"), dst=str(work / "c2")) == OK
    assert (work / "c2").read_bytes() == src.read_bytes() and not os.path.islink(work / "c2")
    (work / "dir").mkdir()
    assert fs(ag, "Copy", src=str(work / "dir"), dst=str(work / "c3")) == {
        "ok": False, "data": None, "error": "copy: the source path is neither a "
        "regular file nor a symlink to a regular file"}
    assert fs(ag, "Copy", src=str(work / "nope"), dst=str(work / "c4")) == \
        err("copy", errno.ENOENT)
    assert fs(ag, "Copy", src=str(src), dst=str(work / "dir")) == err("copy", errno.EISDIR)
    assert fs(ag, "Copy", src=str(src), dst=str(src / "x" / "y")) == \
        err("mkdir parent", errno.ENOTDIR)
    assert hidden(work) == []


def test_copy_never_writes_through_a_planted_symlink(ag, work, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    src = work / "src"
    src.write_bytes(b"attack payload")
    os.symlink(victim, work / "dst")
    assert fs(ag, "Copy", src=str(src), dst=str(work / "dst")) == OK
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(work / "dst")
    assert (work / "dst").read_bytes() == b"attack payload"
    # a guest process racing the agent: dst flips between nothing and a link
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            try:
                os.unlink(work / "race")
            except FileNotFoundError:
                pass
            try:
                os.symlink(victim, work / "race")
            except FileExistsError:
                pass
    t = threading.Thread(target=flip)
    t.start()
    try:
        for _ in range(300):
            p = fs(ag, "Copy", src=str(src), dst=str(work / "race"))
            assert p["ok"] or p["error"].startswith("copy: "), p
    finally:
        stop.set()
        t.join()
    assert victim.read_bytes() == b"precious"
    assert sorted(os.listdir(outside)) == ["victim"]


def test_rename(ag, work):
    (work / "a").write_bytes(b"A")
    assert fs(ag, "Rename", src=str(work / "a"), dst=str(work / "x" / "y" / "b")) == OK
    assert (work / "x" / "y" / "b").read_bytes() == b"A" and not (work / "a").exists()
    (work / "c").write_bytes(b"C")
    assert fs(ag, "Rename", src=str(work / "c"), dst=str(work / "x" / "y" / "b")) == OK
    assert (work / "x" / "y" / "b").read_bytes() == b"C"
    assert fs(ag, "Rename", src=str(work / "nope"), dst=str(work / "z")) == \
        err("rename", errno.ENOENT)
    # create_dir_all semantics: mkdir of an existing file is EEXIST
    assert fs(ag, "Rename", src=str(work / "x"), dst=str(work / "x" / "y" / "b" / "q")) == \
        err("mkdir parent", errno.EEXIST)
    assert fs(ag, "Rename", src=str(work / "x"), dst=str(work / "x" / "y" / "b" / "q" / "r")) == \
        err("mkdir parent", errno.ENOTDIR)
    (work / "full").mkdir()
    (work / "full" / "f").write_bytes(b"")
    (work / "e").mkdir()
    assert fs(ag, "Rename", src=str(work / "e"), dst=str(work / "full")) == \
        err("rename", errno.ENOTEMPTY)


# ---------------------------------------------------------------------------
# Permission denied: the agent without root

@pytest.fixture
def nobody(tmp_path):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the agent as uid 65534")
    base = tempfile.mkdtemp(prefix="agentd-fs-nobody-", dir="/tmp")
    os.chmod(base, 0o755)
    rt = os.path.join(base, "rt")
    os.mkdir(rt)
    os.chown(rt, NOBODY, NOBODY)
    a = spawn(rt, wrapper="setpriv --reuid=%d --regid=%d --clear-groups" % (NOBODY, NOBODY))
    try:
        yield a, base
        assert a.close() == 0
    finally:
        a.close()
        shutil.rmtree(base)


def test_permission_denied(nobody):
    ag, base = nobody
    j = lambda *p: os.path.join(base, *p)
    os.mkdir(j("closed"), 0o700)
    open(j("closed", "f"), "w").close()
    os.mkdir(j("ro"), 0o755)
    with open(j("ro", "secret"), "w") as f:
        f.write("root only")
    os.chmod(j("ro", "secret"), 0o600)
    with open(j("ro", "shared"), "w") as f:
        f.write("old shared content")
    os.chmod(j("ro", "shared"), 0o666)
    os.mkdir(j("sticky"))
    os.chmod(j("sticky"), 0o1777)
    with open(j("sticky", "roots"), "w") as f:
        f.write("root's")
    os.chmod(j("sticky", "roots"), 0o644)
    os.mkdir(j("noexec"), 0o744)
    open(j("noexec", "e"), "w").close()
    EACCES, EPERM = errno.EACCES, errno.EPERM

    assert fs(ag, "Stat", path=j("closed", "f")) == err("stat", EACCES)
    assert fs(ag, "List", path=j("closed")) == err("opendir", EACCES)
    # readable but not searchable: entries that cannot be lstat'ed
    assert fs(ag, "List", path=j("noexec"))["data"]["List"] == [
        {"path": j("noexec", "e"), "kind": "other", "size": 0, "mode": 0, "modified": None}]
    assert read_file(ag, j("ro", "secret"))[1:] == (err("open", EACCES), 0)
    assert fs(ag, "Mkdir", path=j("ro", "d")) == err("mkdir", EACCES)
    assert fs(ag, "Remove", path=j("ro", "secret")) == err("remove", EACCES)
    assert fs(ag, "RemoveDir", path=j("closed")) == err("remove_dir", EACCES)
    assert fs(ag, "Rename", src=j("ro", "secret"), dst=j("ro", "s2")) == \
        err("rename", EACCES)
    assert fs(ag, "Copy", src=j("ro", "secret"), dst=j("sticky", "c")) == \
        err("copy", EACCES)
    assert fs(ag, "Copy", src=j("ro", "shared"), dst=j("ro", "c")) == err("copy", EACCES)
    assert fs(ag, "Copy", src=j("ro", "shared"), dst=j("sticky", "roots")) == \
        err("copy", EACCES)
    assert write_file(ag, j("ro", "new"), [b"x"]) == err("open for write", EACCES)
    assert write_file(ag, j("closed", "sub", "new"), [b"x"]) == \
        err("mkdir parent", EACCES)
    # a root-owned read-only file in a directory anyone may write: the
    # reference's open fails, so must the atomic write
    assert write_file(ag, j("sticky", "roots"), [b"x"]) == \
        err("open for write", EACCES)
    assert open(j("sticky", "roots")).read() == "root's"
    assert write_file(ag, j("sticky", "mine"), [b"mine"], mode=0o600) == OK
    assert os.stat(j("sticky", "mine")).st_uid == NOBODY
    # a writable file in a directory we may not write: written in place,
    # owner kept, like the reference
    assert write_file(ag, j("ro", "shared"), [b"new"]) == OK
    st = os.stat(j("ro", "shared"))
    assert open(j("ro", "shared")).read() == "new" and st.st_uid == 0
    assert write_file(ag, j("ro", "shared"), [b"x"], mode=0o600) == \
        err("set permissions", EPERM)
    assert hidden(j("sticky")) == [] and hidden(j("ro")) == []


# ---------------------------------------------------------------------------
# Invalid requests (SPEC 2.4 [FIX]) and the vectors

def vectors():
    with open(os.path.join(VECTORS, "INDEX.json")) as f:
        index = json.load(f)
    names = [v if isinstance(v, str) else v["name"] for v in
             (index if isinstance(index, list) else index.get("vectors", index))]
    out = []
    for n in names:
        with open(os.path.join(VECTORS, n + ".json")) as f:
            out.append(json.load(f))
    return out


def test_invalid_fs_vectors_answered(ag):
    bad = [v for v in vectors() if v["name"].startswith("invalid-")
           and v["type"] == "core.fs.request" and v["generation"] == 1]
    assert {v["name"] for v in bad} >= {
        "invalid-payload-fsop-indefinite-map", "invalid-payload-fsop-two-keys",
        "invalid-payload-unknown-fsop"}
    for v in bad:
        assert v["expect"] == "payload_error"
        ag.send_raw(bytes.fromhex(v["frame_hex"]))
        p = response(ag, v["id"])
        assert p["ok"] is False and p["data"] is None, (v["name"], p)
        assert p["error"].startswith("invalid request: "), (v["name"], p)
        sync(ag, v["id"])


def test_read_only_seed_fs_vectors_answered(ag):
    """Valid seed requests without side effects get exactly one reply."""
    for name in ["seed-fs-request-stat", "seed-fs-request-list",
                 "seed-fs-request-read", "seed-fs-request-stat-non-ascii"]:
        with open(os.path.join(VECTORS, name + ".json")) as f:
            v = json.load(f)
        ag.send_raw(bytes.fromhex(v["frame_hex"]))
        while True:
            f = ag.recv(msg_id=v["id"])
            if f.t == "core.fs.response":
                break
            assert f.t == "core.fs.data"
        assert f.flags == 1 and list(f.p) == ["ok", "error", "data"]
        if not f.p["ok"]:
            assert f.p["error"].split(":")[0] in ("stat", "opendir", "open", "read"), f.p
        sync(ag, v["id"])


@pytest.mark.parametrize("payload", [
    {"op": {"Stat": {"path": "/tmp/a\x00b"}}},
    {"op": {"Write": {"path": "/tmp/a\x00b", "mode": None}}},
    {"op": {"Copy": {"src": "/etc/hosts", "dst": "/tmp/\x00"}}},
    {"op": {"Stat": {}}},
    {"op": {"Copy": {"src": "/etc/hosts"}}},
    {"op": {"Write": {"path": "/tmp/x", "mode": "420"}}},
    {"op": {"Write": {"path": "/tmp/x", "mode": -1}}},
    {"op": {"Write": {"path": "/tmp/x", "mode": 4294967296}}},
    {"op": {"Stat": {"path": 5}}},
    {"op": "Stat"},
    {"op": {"stat": {"path": "/"}}},
    {"op": {}},
    {},
])
def test_invalid_fs_requests(ag, payload):
    i = ag.new_id()
    ag.send(i, "core.fs.request", payload)
    p = response(ag, i)
    assert p["ok"] is False and p["error"].startswith("invalid request: "), p
    sync(ag, i)


def test_invalid_fs_data_gets_no_reply(ag, work):
    i = write_open(ag, str(work / "f"))
    ag.send(i, "core.fs.data", {"data": "text, not bytes"})
    ag.send(i, "core.fs.data", {})
    sync(ag, i)
    ag.send(i, "core.fs.data", {"data": b"ok"})
    ag.send(i, "core.fs.data", {"data": b""})
    assert response(ag, i) == OK
    assert (work / "f").read_bytes() == b"ok"


# ---------------------------------------------------------------------------
# 1 GiB through the socketpair while an exec session keeps answering

GIB = 1 << 30


def data_frame(msg_id, chunk):
    """core.fs.data frame built by hand: one copy of the chunk, not three."""
    def bstr_head(n):
        return (bytes([0x5a]) + struct.pack(">I", n)) if n > 0xffff else \
            (bytes([0x59]) + struct.pack(">H", n)) if n > 0xff else \
            (bytes([0x58, n]) if n >= 24 else bytes([0x40 + n]))
    payload_head = b"\xa1\x64data" + bstr_head(len(chunk))
    env_head = (b"\xa3\x61v\x01\x61t\x6ccore.fs.data\x61p" +
                bstr_head(len(payload_head) + len(chunk)) + payload_head)
    return struct.pack(">IIB", 5 + len(env_head) + len(chunk), msg_id, 0) + env_head + chunk


class Pinger:
    """Round trips through a `cat` exec session on the same connection."""

    def __init__(self, ag):
        self.ag = ag
        self.id = ag.exec_start("/bin/cat")
        f = ag.recv(msg_id=self.id)
        assert f.t == "core.exec.started", f
        self.n = 0
        self.sent_at = None
        self.got = b""
        self.rtts = []

    def send(self):
        self.n += 1
        self.tag = b"ping %d\n" % self.n
        self.got = b""
        self.sent_at = time.monotonic()
        self.ag.stdin(self.id, self.tag)

    def on_frame(self, f):
        assert f.t == "core.exec.stdout", f
        self.got += f.p["data"]
        if self.got == self.tag:
            self.rtts.append(time.monotonic() - self.sent_at)
            self.sent_at = None
        return self.sent_at is None

    def wait(self):
        while self.sent_at is not None:
            self.on_frame(self.ag.recv(msg_id=self.id))

    def round_trip(self):
        self.send()
        self.wait()
        return self.rtts[-1]

    def finish(self):
        self.ag.stdin(self.id, b"")
        res = self.ag.collect(self.id)
        assert res.code == 0, res


def stat_round_trip(ag):
    t = time.monotonic()
    assert fs(ag, "Stat", path="/")["ok"]
    return time.monotonic() - t


def chunk_of(base, k, n):
    return struct.pack(">Q", k) + base[8:n]


@pytest.mark.slow
def test_1gib_write_and_read_back(tmp_path, work, figs):
    ag = spawn(tmp_path / "rt")
    try:
        ping = Pinger(ag)
        baseline = statistics.median(ping.round_trip() for _ in range(30))
        stat_rtt = statistics.median(stat_round_trip(ag) for _ in range(2000))
        path = str(work / "gib.bin")
        base = os.urandom(CHUNK_MAX)
        sizes = [CHUNK_MAX] * (GIB // CHUNK_MAX) + [GIB % CHUNK_MAX]

        # -- upload: 3 MiB chunks, an exec round trip every 8 chunks
        ping.rtts = []
        h_up = hashlib.sha256()
        i = write_open(ag, path)
        t0 = time.monotonic()
        for k, n in enumerate(sizes):
            c = chunk_of(base, k, n)
            h_up.update(c)
            ag.send_raw(data_frame(i, c))
            if k % 8 == 4:
                ping.round_trip()
        ag.send(i, "core.fs.data", {"data": b""})
        assert response(ag, i, timeout=300) == OK
        t_up = time.monotonic() - t0
        up_rtts = ping.rtts
        assert os.path.getsize(path) == GIB

        # -- download: ping whenever none is in flight, every 16 data frames
        ping.rtts = []
        h_down = hashlib.sha256()
        i = request(ag, "Read", path=path)
        t0 = time.monotonic()
        frames = total = 0
        while True:
            f = ag.recv(timeout=120)
            if f.id == ping.id:
                ping.on_frame(f)
                continue
            assert f.id == i, f
            if f.t == "core.fs.response":
                assert f.p == OK
                break
            d = f.p["data"]
            assert 1 <= len(d) <= CHUNK_MAX
            h_down.update(d)
            total += len(d)
            frames += 1
            if frames % 16 == 0 and ping.sent_at is None:
                ping.send()
        t_down = time.monotonic() - t0
        ping.wait()
        down_rtts = ping.rtts
        hwm = vm_hwm_kib(ag.proc.pid)
        ping.finish()
    finally:
        ag.close()
    os.unlink(path)

    assert total == GIB and h_down.hexdigest() == h_up.hexdigest()
    up_mbs, down_mbs = GIB / t_up / 1e6, GIB / t_down / 1e6
    figs("fs_write_1gib_throughput", round(up_mbs, 1), "MB/s",
         "1 GiB as 3 MiB core.fs.data frames over a socketpair, request to response, "
         "Python host, %d exec round trips interleaved" % len(up_rtts))
    figs("fs_read_1gib_throughput", round(down_mbs, 1), "MB/s",
         "1 GiB Read over a socketpair, request to response, Python host hashing, "
         "exec round trips interleaved")
    figs("fs_transfer_peak_rss", hwm, "KiB", "agentd VmHWM after 1 GiB up and down")
    figs("fs_exec_rtt_idle_median", round(baseline * 1e3, 3), "ms", "cat echo, idle agent")
    figs("fs_exec_rtt_during_write_median", round(statistics.median(up_rtts) * 1e3, 3),
         "ms", "cat echo between upload chunks")
    figs("fs_exec_rtt_during_read_median", round(statistics.median(down_rtts) * 1e3, 3),
         "ms", "cat echo while the download streams")
    figs("fs_exec_rtt_during_read_max", round(max(down_rtts) * 1e3, 3), "ms",
         "cat echo while the download streams")
    figs("fs_stat_rtt_median", round(stat_rtt * 1e6, 1), "us",
         "Stat of / request to response, idle agent, median of 2000")
    assert hwm < 16 * 1024, "agentd peak RSS %d KiB" % hwm
    # The exec session kept answering during both transfers (how fast is a
    # figure above, not an assertion).
    assert len(up_rtts) > 40 and len(down_rtts) > 40


# ---------------------------------------------------------------------------
# Replacement is atomic (issue 16); hardening (issue 11 items 2, 5, 8, 9)

def test_existing_file_is_replaced_not_rewritten(ag, work):
    """temp + rename: the old inode keeps the old content for whoever still
    has it (a hard link, an open fd); the name gets a new file."""
    path = work / "f"
    for op in ("Write", "Copy"):
        path.write_bytes(b"old content")
        os.link(path, work / "hardlink")
        ino = os.stat(path).st_ino
        with open(path, "rb") as reader:
            if op == "Write":
                assert write_file(ag, str(path), [b"new"]) == OK
            else:
                (work / "src").write_bytes(b"new")
                assert fs(ag, "Copy", src=str(work / "src"), dst=str(path)) == OK
            assert reader.read() == b"old content", op
        assert path.read_bytes() == b"new"
        assert (work / "hardlink").read_bytes() == b"old content", op
        assert os.stat(path).st_ino != ino, op
        os.unlink(work / "hardlink")
    assert hidden(work) == []


def test_write_to_a_fifo_whose_reader_waits_blocks_nothing(ag, work):
    fifo = work / "fifo"
    os.mkfifo(fifo)
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, not reading yet
    try:
        data = os.urandom(1 << 20)  # far more than the FIFO holds
        i = write_open(ag, str(fifo))
        ag.send_raw(data_frame(i, data))
        ag.send(i, "core.fs.data", {"data": b""})
        # the agent serves others while the FIFO is full
        assert ag.run("true", timeout=10).code == 0
        assert fs(ag, "Stat", path="/")["ok"]
        os.set_blocking(r, True)
        got = bytearray()
        while len(got) < len(data):
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            got += chunk
    finally:
        os.close(r)
    assert bytes(got) == data
    assert response(ag, i) == OK


def test_signal_aborts_uploads_and_frees_their_slots(ag, work):
    """SPEC 5.8: a relay sends signal 9 on every id of a client that went
    away.  An upload on such an id ends silently, leaving nothing; more
    than the 64 concurrent uploads can be abandoned so."""
    ids = []
    for k in range(70):
        i = write_open(ag, str(work / ("u%d" % k)))
        ag.send(i, "core.fs.data", {"data": b"partial %d" % k})
        ag.signal(i, 9)
        ids.append(i)
    sync(ag, *ids)
    wait_for(lambda: hidden(work) == [], timeout=60,
             what="abandoned temporary files to go")
    assert os.listdir(work) == []
    assert write_file(ag, str(work / "after"), [b"fine"]) == OK
    assert os.listdir(work) == ["after"]
    # the ids are free again
    ag.send(ids[0], "core.fs.request", {"op": {"Stat": {"path": "/"}}})
    assert response(ag, ids[0])["ok"]


def test_signal_stops_an_abandoned_read(ag):
    i = request(ag, "Read", path="/dev/zero")
    assert ag.recv(msg_id=i).t == "core.fs.data"
    ag.signal(i, 9)
    # frames queued before the signal may still come, up to this round trip
    assert fs(ag, "Stat", path="/")["ok"]
    ag.pending = [f for f in ag.pending if f.id != i]
    # after it nothing more: the stream ended without a response
    sync(ag, i)
    sync(ag, i)


def test_copy_onto_device_fifo_and_proc_files_in_place(ag, work):
    src = work / "src"
    src.write_bytes(b"789")
    # a device node stays the device (Copy to /dev/null must not replace it)
    os.mknod(work / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert fs(ag, "Copy", src=str(src), dst=str(work / "null")) == OK
    assert stat.S_ISCHR(os.lstat(work / "null").st_mode)
    # a FIFO: its reader gets the bytes, the FIFO stays
    os.mkfifo(work / "fifo")
    r = os.open(work / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert fs(ag, "Copy", src=str(src), dst=str(work / "fifo")) == OK
        assert os.read(r, 100) == b"789"
    finally:
        os.close(r)
    assert stat.S_ISFIFO(os.lstat(work / "fifo").st_mode)
    # a /proc file, where no temporary file can be made: in place
    with helper_process() as pid:
        adj = "/proc/%d/oom_score_adj" % pid
        assert fs(ag, "Copy", src=str(src), dst=adj) == OK
        with open(adj) as f:
            assert f.read() == "789\n"
    assert hidden(work) == []


@pytest.fixture
def bind_mounted_file(work):
    """work/hosts is a bind mount of work/real, as /etc/hosts is in a
    container: a mount point that is a file."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8) for a bind mount")
    real, target = work / "real", work / "hosts"
    real.write_bytes(b"old content")
    target.write_bytes(b"")
    subprocess.run(["mount", "--bind", str(real), str(target)], check=True)
    try:
        yield real, target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def test_write_and_copy_onto_a_bind_mounted_file(ag, work, bind_mounted_file):
    real, target = bind_mounted_file
    assert write_file(ag, str(target), [b"written"]) == OK
    assert real.read_bytes() == b"written"
    (work / "src").write_bytes(b"copied")
    assert fs(ag, "Copy", src=str(work / "src"), dst=str(target)) == OK
    assert real.read_bytes() == b"copied"
    assert hidden(work) == []


def test_upload_aborted_when_a_virtio_style_port_hangs_up(tmp_path, work):
    """--port on a character device behaves like the virtio port under
    PID 1: a hang-up keeps the agent running, and aborts every upload."""
    import pty
    import tty
    from test_agent import _FdSock
    master, slave = pty.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen([AGENTD, "--port", os.ttyname(slave),
                             "--runtime-dir", str(tmp_path / "none")],
                            stderr=subprocess.DEVNULL)
    try:
        ag = Agent(_FdSock(master), proc)
        assert ag.recv(timeout=10).t == "core.ready"
        os.close(slave)  # only the agent has it open now
        slave = -1
        i = write_open(ag, str(work / "upload"))
        ag.send(i, "core.fs.data", {"data": b"partial"})
        sync(ag, i)
        wait_for(lambda: len(hidden(work)) == 1, timeout=60, what="the temporary file")
        os.close(master)  # hang-up
        master = -1
        wait_for(lambda: hidden(work) == [], timeout=60,
                 what="the aborted upload's temporary file to go")
        assert proc.poll() is None
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        for fd in (slave, master):
            if fd >= 0:
                os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert os.listdir(work) == []
