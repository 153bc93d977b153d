"""The protocol state machine, without I/O (docs/PROTOCOL.md).

`Protocol` turns requests into frame bytes and received bytes into the
frames of live exchanges.  The operations (run, upload, ...) are written
once, here, as generators that yield what they need from an I/O driver:

    ("send", data)            write these bytes to the agent
    ("recv", ids, timeout)    the next frame for one of ids (AgentTimeout)
    ("poll", id)              a frame for id that already arrived, or None

The blocking client (client.py) and the asyncio client (aio.py) are such
drivers; neither knows a message type.
"""
import os
import stat as _stat
import time

from . import codec
from .errors import AgentTimeout, ExecError, FsError, ProtocolError

READY = "core.ready"
EXITED = "core.exec.exited"
FS_RESPONSE = "core.fs.response"
CHUNK = 1 << 20        # bytes per stdin frame and per uploaded file chunk
SIGKILL = 9


class Protocol:
    """Ids, live exchanges and the frame decoder of one connection."""

    def __init__(self, first_id=None):
        self.decoder = codec.FrameDecoder()
        self.live = {}          # id -> "exec" | "fs"
        self.abandoned = set()  # live ids whose frames are dropped
        self.ready = None       # the core.ready Frame, if this client saw it
        if first_id is None:
            # As agentctl: a new client does not collide with exchanges an
            # earlier client of the same agent left running.
            first_id = ((os.getpid() << 12) ^ int(time.monotonic() * 1000)) & 0x0FFFFFFF
        self.next_id = first_id or 1

    def new_id(self):
        while True:
            i = self.next_id
            self.next_id = i + 1 if i < 0x7FFFFFFF else 1
            if i not in self.live:
                return i

    def request(self, kind, t, payload):
        """Start an exchange: (id, frame bytes)."""
        i = self.new_id()
        self.live[i] = kind
        return i, codec.check_frame(codec.encode_frame(i, t, payload))

    @staticmethod
    def message(msg_id, t, payload):
        return codec.check_frame(codec.encode_frame(msg_id, t, payload))

    @staticmethod
    def shutdown():
        return codec.encode_frame(0, "core.shutdown", None, raw_payload=b"")

    def abandon(self, msg_id):
        """Drop the rest of an exchange the caller gave up on."""
        if msg_id in self.live:
            self.abandoned.add(msg_id)

    def receive(self, data):
        """Feed bytes; the frames that belong to this client, in order:
        core.ready (id 0) and frames of live exchanges.  Frames of ids this
        client did not start (an earlier client's leftovers) are dropped."""
        self.decoder.feed(data)
        out = []
        while True:
            f = self.decoder.next()
            if f is None:
                return out
            if f.t == READY and f.id == 0:
                if not isinstance(f.p, dict):
                    raise ProtocolError("bad core.ready: %r" % f)
                self.ready = self.ready or f
                out.append(f)
                continue
            if f.id not in self.live:
                continue
            if not isinstance(f.p, dict):
                raise ProtocolError("payload is not a map: %r" % f)
            if f.t in (EXITED, FS_RESPONSE):
                del self.live[f.id]
                if f.id in self.abandoned:
                    self.abandoned.discard(f.id)
                    continue
            if f.id not in self.abandoned:
                out.append(f)


# ---------------------------------------------------------------------------
# Values

class Ready:
    """Boot timings of core.ready (CLOCK_BOOTTIME nanoseconds)."""

    def __init__(self, p):
        self.boot_time_ns = p.get("boot_time_ns")
        self.init_time_ns = p.get("init_time_ns")
        self.ready_time_ns = p.get("ready_time_ns")

    def __repr__(self):
        return "Ready(boot_time_ns=%r, init_time_ns=%r, ready_time_ns=%r)" % (
            self.boot_time_ns, self.init_time_ns, self.ready_time_ns)


class Entry:
    """A Stat or List entry: path, kind ("file", "dir", "symlink",
    "other"), size, mode (full st_mode), modified (Unix seconds or None)."""

    __slots__ = ("path", "kind", "size", "mode", "modified")

    def __init__(self, p):
        try:
            self.path, self.kind = p["path"], p["kind"]
            self.size, self.mode = p["size"], p["mode"]
        except (KeyError, TypeError):
            raise ProtocolError("bad fs entry: %r" % (p,))
        self.modified = p.get("modified")

    name = property(lambda self: self.path.rstrip("/").rsplit("/", 1)[-1] or "/")
    perm = property(lambda self: _stat.S_IMODE(self.mode))
    is_dir = property(lambda self: self.kind == "dir")
    is_file = property(lambda self: self.kind == "file")
    is_symlink = property(lambda self: self.kind == "symlink")

    def __repr__(self):
        return "Entry(%r, kind=%r, size=%r, mode=0o%o, modified=%r)" % (
            self.path, self.kind, self.size, self.mode, self.modified)


class Completed:
    """What run() returns: pid, stdout, stderr (bytes), code, signal.
    code is the exit status (0..255), or -1 when killed by a signal, which
    is then in signal (else None).  returncode is code, or -signal as in
    subprocess."""

    def __init__(self, pid, stdout, stderr, code, signal):
        self.pid, self.stdout, self.stderr = pid, stdout, stderr
        self.code, self.signal = code, signal

    @property
    def returncode(self):
        return -self.signal if self.signal else self.code

    def __repr__(self):
        return "Completed(code=%r, signal=%r, stdout=%r, stderr=%r)" % (
            self.code, self.signal, self.stdout[:200], self.stderr[:200])


# ---------------------------------------------------------------------------
# Exec

def exec_payload(cmd, args=(), env=None, cwd=None, user=None, tty=False,
                 rows=24, cols=80, rlimits=None):
    """The core.exec.request payload.  env: a dict or "K=V" strings;
    rlimits: a dict {name: (soft, hard)} or (name, soft, hard) triples."""
    if isinstance(env, dict):
        env = ["%s=%s" % kv for kv in env.items()]
    if isinstance(rlimits, dict):
        rlimits = [(k, s, h) for k, (s, h) in rlimits.items()]
    return {
        "cmd": cmd, "args": [str(a) for a in args], "env": list(env or ()),
        "cwd": cwd, "user": user, "tty": bool(tty), "rows": rows, "cols": cols,
        "rlimits": [{"resource": r, "soft": s, "hard": h}
                    for r, s, h in (rlimits or ())],
    }


class ExecState:
    """One exec exchange seen from the host: feed it the frames of its id.
    Also the shared core of both Process classes."""

    def __init__(self, msg_id, cmd, cwd, tty):
        self.id, self.cmd, self.cwd, self.tty = msg_id, cmd, cwd, tty
        self.pid = None
        self.started = False
        self.done = False
        self.code = None
        self.signal = None
        self.stdin_closed = False

    def handle(self, f):
        """("stdout"|"stderr", bytes) for output, None otherwise."""
        p = f.p
        if f.t == "core.exec.started":
            self.started, self.pid = True, p.get("pid")
        elif f.t in ("core.exec.stdout", "core.exec.stderr"):
            data = p.get("data")
            if not isinstance(data, bytes):
                raise ProtocolError("bad output frame: %r" % f)
            return (f.t[10:], data)
        elif f.t == EXITED:
            self.done = True
            self.code, self.signal = p.get("code"), p.get("signal")
            if not isinstance(self.code, int):
                raise ProtocolError("bad core.exec.exited: %r" % f)
        else:
            raise ProtocolError("unexpected frame in an exec exchange: %r" % f)
        return None

    @property
    def spawn_failed(self):
        return self.done and not self.started and self.code == -1

    def stdin_frames(self, data):
        """Frames carrying data as stdin, at most CHUNK bytes each."""
        if self.stdin_closed:
            raise ValueError("stdin of this process is closed")
        view = memoryview(bytes(data))
        return [Protocol.message(self.id, "core.exec.stdin", {"data": bytes(view[i:i + CHUNK])})
                for i in range(0, len(view), CHUNK)]

    def eof_frame(self):
        """End of input: the empty stdin frame in pipe mode; a PTY ignores
        that, so there it is ^D, as a terminal user would type."""
        data = b"\x04" if self.tty else b""
        if not self.tty:
            self.stdin_closed = True
        return Protocol.message(self.id, "core.exec.stdin", {"data": data})

    def signal_frame(self, sig):
        return Protocol.message(self.id, "core.exec.signal", {"signal": int(sig)})

    def resize_frame(self, rows, cols):
        return Protocol.message(self.id, "core.exec.resize", {"rows": rows, "cols": cols})


def exec_start(proto, spec):
    """Op: send the request; returns the ExecState."""
    i, frame = proto.request("exec", "core.exec.request", spec)
    yield ("send", frame)
    return ExecState(i, spec["cmd"], spec["cwd"], spec["tty"])


def spawn_error(proto, st):
    """Op: the ExecError for a command that could not be started; asks the
    guest what exists, as agentctl does for its 126/127."""
    cmd = st.cmd
    if st.cwd:
        e = yield from fs_call(proto, "Stat", {"path": st.cwd}, check=False)
        if e is None or e.kind != "dir":
            return ExecError(cmd, "bad_cwd", "cannot run %r in the guest: working "
                             "directory %r is not a directory" % (cmd, st.cwd))
    if "/" in cmd:
        e = yield from fs_call(proto, "Stat", {"path": cmd}, check=False)
        if e is not None:
            return ExecError(cmd, "other", "cannot run %r in the guest (not "
                             "executable, bad user or failed rlimit)" % cmd)
    return ExecError(cmd, "not_found", "cannot run %r in the guest: not found "
                     "(or bad user)" % cmd)


def exec_run(proto, spec, input=None, timeout=None, check=False):
    """Op: run to completion; Completed, or ExecError / AgentTimeout."""
    st = yield from exec_start(proto, spec)
    if input:
        for fr in st.stdin_frames(input):
            yield ("send", fr)
    if not spec["tty"]:
        yield ("send", st.eof_frame())
    out = {"stdout": [], "stderr": []}
    deadline = None if timeout is None else time.monotonic() + timeout
    killed = False
    while not st.done:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            f = yield ("recv", (st.id,), left)
        except AgentTimeout:
            if killed:
                proto.abandon(st.id)
                raise
            # Kill the group, then still collect what it wrote.
            killed = True
            yield ("send", st.signal_frame(SIGKILL))
            deadline = time.monotonic() + 10
            continue
        o = st.handle(f)
        if o:
            out[o[0]].append(o[1])
    if st.spawn_failed:
        raise (yield from spawn_error(proto, st))
    res = Completed(st.pid, b"".join(out["stdout"]), b"".join(out["stderr"]),
                    st.code, st.signal)
    if killed:
        e = AgentTimeout("%r ran longer than %ss and was killed" % (spec["cmd"], timeout))
        e.result = res
        raise e
    if check and (res.code != 0):
        raise ExecError(spec["cmd"], "exit", "%r exited with %s" % (
            spec["cmd"], "signal %d" % res.signal if res.signal else "code %d" % res.code))
    return res


# ---------------------------------------------------------------------------
# Filesystem

def fs_call(proto, op, fields, check=True, timeout=None):
    """Op: one request -> response operation.  Stat returns an Entry, List
    a list of Entry, the others None.  check=False returns None on a
    refusal instead of raising FsError."""
    i, frame = proto.request("fs", "core.fs.request", {"op": {op: fields}})
    yield ("send", frame)
    f = yield ("recv", (i,), timeout)
    if f.t != FS_RESPONSE:
        raise ProtocolError("unexpected frame in a %s exchange: %r" % (op, f))
    return fs_result(op, fields, f, check)


def fs_result(op, fields, f, check=True):
    p = f.p
    if not p.get("ok"):
        if not check:
            return None
        raise FsError(op, fields.get("path", fields.get("src")), p.get("error"))
    data = p.get("data")
    if op == "Stat":
        if not isinstance(data, dict) or "Stat" not in data:
            raise ProtocolError("Stat answered without an entry: %r" % f)
        return Entry(data["Stat"])
    if op == "List":
        if not isinstance(data, dict) or not isinstance(data.get("List"), list):
            raise ProtocolError("List answered without entries: %r" % f)
        return [Entry(e) for e in data["List"]]
    return None


def _progress(cb, done, total):
    if cb is not None:
        cb(done, total)


def upload(proto, src, dst, mode=None, progress=None, chunk=CHUNK):
    """Op: stream the binary file object src to the guest path dst.  At
    most one chunk is held.  The guest replaces dst atomically after the
    end-of-stream chunk; on a refusal the rest is not sent."""
    if not 0 < chunk <= codec.FS_CHUNK_MAX:
        raise ValueError("chunk size must be 1..%d" % codec.FS_CHUNK_MAX)
    total = None
    try:
        st = os.fstat(src.fileno())
        if _stat.S_ISREG(st.st_mode):
            total = st.st_size - src.tell()
    except (AttributeError, OSError, ValueError):
        pass
    fields = {"path": dst, "mode": mode}
    i, frame = proto.request("fs", "core.fs.request", {"op": {"Write": fields}})
    yield ("send", frame)
    done = 0
    _progress(progress, 0, total)
    try:
        while True:
            early = yield ("poll", i)
            if early is not None:  # refused (open failed, disk full ...)
                yield ("send", proto.message(i, "core.fs.data", {"data": b""}))
                return fs_result("Write", fields, early)
            data = src.read(chunk)
            if not data:
                break
            yield ("send", proto.message(i, "core.fs.data", {"data": bytes(data)}))
            done += len(data)
            _progress(progress, done, total)
    except BaseException:
        # Abandon without the end-of-stream chunk, which would commit a
        # partial file.  The signal cancels the upload where the agent
        # supports it; otherwise the temporary file stays until the
        # connection closes.
        proto.abandon(i)
        yield ("send", proto.message(i, "core.exec.signal", {"signal": SIGKILL}))
        raise
    yield ("send", proto.message(i, "core.fs.data", {"data": b""}))
    f = yield ("recv", (i,), None)
    if f.t != FS_RESPONSE:
        raise ProtocolError("unexpected frame in a Write exchange: %r" % f)
    return fs_result("Write", fields, f)


def download(proto, src, sink, progress=None, size=None):
    """Op: stream the guest file src into the binary file object sink,
    chunk by chunk.  Returns the number of bytes written.  size is the
    total for progress (None: unknown)."""
    fields = {"path": src}
    i, frame = proto.request("fs", "core.fs.request", {"op": {"Read": fields}})
    yield ("send", frame)
    done = 0
    _progress(progress, 0, size)
    try:
        while True:
            f = yield ("recv", (i,), None)
            if f.t == FS_RESPONSE:
                fs_result("Read", fields, f)
                return done
            data = f.p.get("data")
            if f.t != "core.fs.data" or not isinstance(data, bytes):
                raise ProtocolError("unexpected frame in a Read exchange: %r" % f)
            sink.write(data)
            done += len(data)
            _progress(progress, done, size)
    except BaseException:
        if i in proto.live:
            proto.abandon(i)
            yield ("send", proto.message(i, "core.exec.signal", {"signal": SIGKILL}))
        raise


def wait_ready(proto, timeout):
    """Op: wait until the agent serves.  The agent sends core.ready once
    per boot, to the first client; so a Stat "/" probe goes out at once and
    whichever of ready and the probe's answer comes first means serving.
    Returns the Ready, or None when this client did not see it."""
    i, frame = proto.request("fs", "core.fs.request", {"op": {"Stat": {"path": "/"}}})
    yield ("send", frame)
    f = yield ("recv", (0, i), timeout)
    if f.t == READY:
        proto.abandon(i)
    return Ready(proto.ready.p) if proto.ready is not None else None


class ExitStatus:
    """How a process ended, read from its exchange's state (self.state):
    shared by the blocking and the asyncio Process."""
    code = property(lambda self: self.state.code)
    exit_signal = property(lambda self: self.state.signal)
    done = property(lambda self: self.state.done)

    @property
    def returncode(self):
        st = self.state
        if not st.done:
            return None
        return -st.signal if st.signal else st.code
