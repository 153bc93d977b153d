"""An independent host for agentd tests: frames and CBOR with python3-cbor2.

It speaks the seed generation (SPEC sections 1-4) to a real agentd binary,
either spawned on a socketpair (`Agent.spawn`) or over a Unix socket that a
VMM exposes (`Agent.connect`).  Run it with Debian's /usr/bin/python3.
"""
import os
import select
import socket
import struct
import subprocess
import time

import cbor2

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
AGENTD = os.environ.get("AGENTD", os.path.join(ROOT, "agentd"))

FLAGS = {
    "core.ready": 0, "core.shutdown": 4, "core.exec.request": 2,
    "core.exec.started": 0, "core.exec.stdin": 0, "core.exec.stdout": 0,
    "core.exec.stderr": 0, "core.exec.exited": 1, "core.exec.resize": 0,
    "core.exec.signal": 0, "core.fs.request": 2, "core.fs.response": 1,
    "core.fs.data": 0,
}
FRAME_LEN_MAX = 4194304


def encode_frame(msg_id, t, payload, v=1, flags=None, raw_payload=None):
    p = raw_payload if raw_payload is not None else cbor2.dumps(payload)
    body = cbor2.dumps({"v": v, "t": t, "p": p})
    if flags is None:
        flags = FLAGS.get(t, 0)
    return struct.pack(">IIB", len(body) + 5, msg_id, flags) + body


class Frame:
    def __init__(self, msg_id, flags, v, t, p_raw):
        self.id, self.flags, self.v, self.t, self.p_raw = msg_id, flags, v, t, p_raw
        self.p = cbor2.loads(p_raw) if p_raw else None

    def __repr__(self):
        p = self.p
        if isinstance(p, dict) and isinstance(p.get("data"), bytes) and len(p["data"]) > 64:
            p = dict(p, data=b"<%d bytes>" % len(p["data"]))
        return "Frame(id=%d, t=%s, flags=%d, p=%r)" % (self.id, self.t, self.flags, p)


class Agent:
    """A connection to agentd.  Frames read but not yet asked for are kept
    per id, so tests can interleave several sessions."""

    def __init__(self, sock, proc=None):
        self.sock = sock
        self.proc = proc
        self.buf = bytearray()
        self.pending = []
        self.ready = None
        self.next_id = 1

    # -- setup ------------------------------------------------------------
    @classmethod
    def spawn(cls, *args, env=None, wait_ready=True, runtime_dir=None,
              heartbeat_interval=None, stderr=None):
        host, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [AGENTD, "--port-fd", str(guest.fileno())]
        if runtime_dir is not None:
            cmd += ["--runtime-dir", runtime_dir]
        if heartbeat_interval is not None:
            cmd += ["--heartbeat-interval", str(heartbeat_interval)]
        cmd += list(args)
        wrapper = os.environ.get("AGENTD_WRAPPER")
        if wrapper:
            cmd = wrapper.split() + cmd
        proc = subprocess.Popen(cmd, pass_fds=(guest.fileno(),), env=env,
                                stderr=stderr)
        guest.close()
        a = cls(host, proc)
        if wait_ready:
            a.ready = a.recv(timeout=10)
            assert a.ready.t == "core.ready", a.ready
        return a

    @classmethod
    def connect(cls, path, timeout=60, wait_ready=True):
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
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise

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
        self.send_raw(encode_frame(msg_id, t, payload, **kw))

    def _fill(self, timeout):
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            raise TimeoutError("no frame from agentd within %.1fs" % timeout)
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("agentd closed the port")
        self.buf += chunk

    def _parse_one(self):
        if len(self.buf) < 4:
            return None
        n = struct.unpack(">I", self.buf[:4])[0]
        assert 5 <= n <= FRAME_LEN_MAX, "agentd sent a bad frame length %d" % n
        if len(self.buf) < 4 + n:
            return None
        msg_id, flags = struct.unpack(">IB", self.buf[4:9])
        env = cbor2.loads(bytes(self.buf[9:4 + n]))
        del self.buf[:4 + n]
        assert set(env) == {"v", "t", "p"}, env
        return Frame(msg_id, flags, env["v"], env["t"], env["p"])

    def recv(self, timeout=30, msg_id=None):
        """Next frame (for msg_id when given)."""
        for i, f in enumerate(self.pending):
            if msg_id is None or f.id == msg_id:
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            f = self._parse_one()
            while f is not None:
                if msg_id is None or f.id == msg_id:
                    return f
                self.pending.append(f)
                f = self._parse_one()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame for id %s" % msg_id)
            self._fill(left)

    # -- exec ---------------------------------------------------------------
    def exec_start(self, cmd, args=(), env=(), cwd=None, user=None, tty=False,
                   rows=24, cols=80, rlimits=(), msg_id=None):
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
        """Frames of one exec until exited: returns a Result."""
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
                res.frames[-1] = f.t
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
        msg_id = self.exec_start(cmd, args, **kw)
        if stdin is not None:
            if stdin:
                self.stdin(msg_id, stdin)
            self.stdin(msg_id, b"")
        return self.collect(msg_id, timeout=timeout)

    # -- filesystem ---------------------------------------------------------
    def fs(self, op, timeout=60, **fields):
        msg_id = self.new_id()
        self.send(msg_id, "core.fs.request", {"op": {op: fields}})
        f = self.recv(timeout=timeout, msg_id=msg_id)
        assert f.t == "core.fs.response", f
        return f.p

    def shutdown(self):
        self.send(0, "core.shutdown", raw_payload=b"")


class Result:
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
