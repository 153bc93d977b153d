"""The low-level connection: raw frames for the project's tests, bench
and VM tests (it replaced test/agentclient.py, with the same names).

It sends exactly the frames it is told to, malformed ones included, and
hands back every frame agentd sends (Frame objects), kept per id until
asked for, so tests can interleave sessions and break the protocol on
purpose.  Programs should use Client or AsyncClient instead.

    a = Agent.spawn()                 # agentd on a socketpair, ready read
    r = a.run("echo", "hi")           # Result: stdout, stderr, code, signal
    i = a.exec_start("cat"); a.stdin(i, b"x"); a.stdin(i, b""); a.collect(i)
    a.fs("Stat", path="/")            # the response payload
    a.send(7, "core.exec.signal", {"signal": 9}); a.recv(msg_id=7)
"""
import select
import time

from . import transport
from .codec import FLAGS, FRAME_LEN_MAX, Frame, FrameDecoder, encode_frame  # noqa: F401
from .errors import AgentTimeout, ConnectionClosed

# The agentd that Agent.spawn starts; read at each spawn, so a caller may
# assign it (bench/bench.py does).
AGENTD = transport.default_agentd()


class Agent:
    """A connection to agentd.  Frames read but not yet asked for are kept
    per id (pending), so tests can interleave several sessions."""

    def __init__(self, sock, proc=None):
        self.sock = sock
        self.proc = proc
        self.decoder = FrameDecoder()
        self.pending = []
        self.ready = None
        self.next_id = 1

    # -- setup ------------------------------------------------------------
    @classmethod
    def spawn(cls, *args, env=None, wait_ready=True, runtime_dir=None,
              heartbeat_interval=None, stderr=None):
        """agentd (AGENTD, $AGENTD_WRAPPER in front) on a socketpair."""
        host, proc = transport.spawn_agentd(AGENTD, args, runtime_dir,
                                            heartbeat_interval, env, stderr)
        a = cls(host, proc)
        if wait_ready:
            a.ready = a.recv(timeout=10)
            assert a.ready.t == "core.ready", a.ready
        return a

    @classmethod
    def connect(cls, path, timeout=60, wait_ready=True):
        """A Unix socket (waits for core.ready: first connection only)."""
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        a = cls(s)
        if wait_ready:
            a.ready = a.recv(timeout=timeout)
            assert a.ready.t == "core.ready", a.ready
        return a

    def close(self, timeout=10):
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc is not None:
            return transport.wait_agentd(self.proc, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def new_id(self):
        i = self.next_id
        self.next_id += 1
        return i

    # -- raw frames --------------------------------------------------------
    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, msg_id, t, payload=None, **kw):
        """encode_frame(msg_id, t, payload, **kw) and send it (kw: v,
        flags, raw_payload)."""
        self.send_raw(encode_frame(msg_id, t, payload, **kw))

    def _fill(self, timeout):
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            raise AgentTimeout("no frame from agentd within %.1fs" % timeout)
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionClosed("agentd closed the port")
        self.decoder.feed(chunk)

    def recv(self, timeout=30, msg_id=None):
        """Next frame (for msg_id when given).  TimeoutError, EOFError."""
        for i, f in enumerate(self.pending):
            if msg_id is None or f.id == msg_id:
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            f = self.decoder.next()
            while f is not None:
                if msg_id is None or f.id == msg_id:
                    return f
                self.pending.append(f)
                f = self.decoder.next()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentTimeout("no frame for id %s" % msg_id)
            self._fill(left)

    # -- exec ---------------------------------------------------------------
    def exec_start(self, cmd, args=(), env=(), cwd=None, user=None, tty=False,
                   rows=24, cols=80, rlimits=(), msg_id=None):
        """Send core.exec.request; returns its id.  rlimits: (name, soft,
        hard) triples."""
        msg_id = msg_id or self.new_id()
        self.send(msg_id, "core.exec.request", {
            "cmd": cmd, "args": list(args), "env": list(env), "cwd": cwd,
            "user": user, "tty": tty, "rows": rows, "cols": cols,
            "rlimits": [{"resource": r, "soft": s, "hard": h} for r, s, h in rlimits],
        })
        return msg_id

    def stdin(self, msg_id, data):
        self.send(msg_id, "core.exec.stdin", {"data": data})

    def signal(self, msg_id, sig):
        self.send(msg_id, "core.exec.signal", {"signal": sig})

    def resize(self, msg_id, rows, cols):
        self.send(msg_id, "core.exec.resize", {"rows": rows, "cols": cols})

    def collect(self, msg_id, timeout=60, sink=None):
        """Frames of one exec until exited: returns a Result.  sink(data)
        takes stdout instead of the Result."""
        res = Result()
        # bytearrays: appending to bytes copies everything so far, which
        # made a 64 MiB collect take minutes
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv(timeout=max(0.01, deadline - time.monotonic()), msg_id=msg_id)
            res.frames.append(f.t)
            if f.t == "core.exec.started":
                res.pid = f.p["pid"]
            elif f.t == "core.exec.stdout":
                if sink:
                    sink(f.p["data"])
                else:
                    out += f.p["data"]
            elif f.t == "core.exec.stderr":
                err += f.p["data"]
            elif f.t == "core.exec.exited":
                assert f.flags == 1, f
                res.code = f.p["code"]
                res.signal = f.p.get("signal")
                res.exited = f.p
                res.stdout, res.stderr = bytes(out), bytes(err)
                return res
            else:
                raise AssertionError("unexpected frame %r" % f)

    def run(self, cmd, *args, stdin=None, timeout=60, **kw):
        """exec_start + collect.  stdin: bytes then end-of-input (b"" for
        end-of-input alone); None leaves stdin open."""
        msg_id = self.exec_start(cmd, args, **kw)
        if stdin is not None:
            if stdin:
                self.stdin(msg_id, stdin)
            self.stdin(msg_id, b"")
        return self.collect(msg_id, timeout=timeout)

    # -- filesystem ---------------------------------------------------------
    def fs(self, op, timeout=60, **fields):
        """One request -> response operation; the response payload."""
        msg_id = self.new_id()
        self.send(msg_id, "core.fs.request", {"op": {op: fields}})
        f = self.recv(timeout=timeout, msg_id=msg_id)
        assert f.t == "core.fs.response", f
        return f.p

    def shutdown(self):
        self.send(0, "core.shutdown", raw_payload=b"")


class Result:
    """What collect() gathered: frames (types in order), pid, stdout,
    stderr, code, signal, exited (the exited payload)."""

    def __init__(self):
        self.frames = []
        self.pid = None
        self.stdout = b""
        self.stderr = b""
        self.code = None
        self.signal = None
        self.exited = None

    def __repr__(self):
        return "Result(code=%r, signal=%r, stdout=%r, stderr=%r, frames=%r)" % (
            self.code, self.signal, self.stdout[:200], self.stderr[:200],
            sorted(set(self.frames)))
