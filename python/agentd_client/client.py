"""The blocking client: one connection to agentd, used from one thread.

    from agentd_client import Client
    with Client.connect("/path/to/agent.sock") as c:
        print(c.run("uname", "-a").stdout.decode())
"""
import collections
import os
import select
import tempfile
import time

from . import protocol, transport
from .errors import AgentTimeout, ConnectionClosed, SpawnAgentError


class Client:
    """A connection.  Build one with connect(), from_fd() or spawn(); they
    wait until the agent serves unless wait_ready=False (then call
    wait_ready() yourself).  `ready` holds the boot timings when this
    client was the one that received core.ready, else None."""

    def __init__(self, fd, sock=None, proc=None):
        self.fd, self.sock, self.proc = fd, sock, proc
        self.proto = protocol.Protocol()
        self.inbox = collections.defaultdict(collections.deque)
        self.eof = False
        self.ready = None

    # -- opening -------------------------------------------------------------
    @classmethod
    def connect(cls, path, timeout=60, wait_ready=True):
        """A Unix socket (QEMU's -chardev socket, ./microvm --keep) or a
        character device (/dev/vportNpM) at path."""
        c = cls(*transport.open_path(path))
        return c._ready_or_close(wait_ready, timeout)

    @classmethod
    def from_fd(cls, fd, timeout=60, wait_ready=True):
        """An inherited connected fd (the client owns it from now on)."""
        c = cls(*transport.adopt_fd(fd))
        return c._ready_or_close(wait_ready, timeout)

    @classmethod
    def spawn(cls, *args, agentd=None, runtime_dir=None, heartbeat_interval=None,
              env=None, stderr=None, timeout=10, wait_ready=True):
        """agentd (default: $AGENTD or the repository's ./agentd) as a local
        process on a socketpair (host mode; for tests and development).
        close() ends it and returns its exit status."""
        sock, proc = transport.spawn_agentd(agentd, args, runtime_dir,
                                            heartbeat_interval, env, stderr)
        sock.setblocking(False)
        c = cls(sock.fileno(), sock, proc)
        try:
            return c._ready_or_close(wait_ready, timeout)
        except ConnectionClosed as e:
            raise SpawnAgentError("agentd exited before it was ready (status %s)"
                                  % proc.poll()) from e

    def _ready_or_close(self, wait_ready, timeout):
        if wait_ready:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.close(timeout=5)
                raise
        return self

    def wait_ready(self, timeout=60):
        """Wait until the agent serves (core.ready or the answer to a probe).
        Returns the Ready timings or None."""
        self.ready = self._drive(protocol.wait_ready(self.proto, timeout))
        return self.ready

    def close(self, timeout=10):
        """Close the connection.  For a spawned agentd, wait for it to exit
        (it exits when the port closes) and return its status."""
        if self.fd is not None:
            if self.sock is not None:
                self.sock.close()
            else:
                os.close(self.fd)
            self.fd = None
        if self.proc is not None:
            return transport.wait_agentd(self.proc, timeout)
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the I/O driver --------------------------------------------------------
    def _drive(self, op):
        res, exc = None, None
        while True:
            try:
                req = op.throw(exc) if exc is not None else op.send(res)
            except StopIteration as e:
                return e.value
            res, exc = None, None
            try:
                if req[0] == "send":
                    self._send(req[1])
                elif req[0] == "recv":
                    res = self._recv(req[1], req[2])
                else:  # poll
                    self._pump(0)
                    q = self.inbox.get(req[1])
                    res = q.popleft() if q else None
            except Exception as e:
                exc = e

    def _deliver(self, frames):
        for f in frames:
            self.inbox[f.id].append(f)

    def _check_open(self):
        if self.fd is None:
            raise ConnectionClosed("the connection is closed")

    def _pump(self, timeout):
        """Read what arrives within timeout (0: only what is there)."""
        self._check_open()
        if self.eof:
            raise ConnectionClosed("the agent closed the connection")
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return False
        data = transport.read_some(self.fd, self.sock)
        if data == b"":
            self.eof = True
            raise ConnectionClosed("the agent closed the connection")
        if data:
            self._deliver(self.proto.receive(data))
        return True

    def _send(self, data):
        """Write all of data, reading meanwhile: a host that stops reading
        while it writes can deadlock with the agent's backpressure."""
        self._check_open()
        view = memoryview(data)
        while view:
            r, w, _ = select.select([] if self.eof else [self.fd], [self.fd], [])
            if r:
                self._pump(0)
            if w:
                view = view[transport.write_some(self.fd, self.sock, view):]

    def _recv(self, ids, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for i in ids:
                q = self.inbox.get(i)
                if q:
                    f = q.popleft()
                    if not q:
                        del self.inbox[i]
                    return f
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise AgentTimeout("nothing from the agent within %.1f s" % timeout)
            self._pump(left)

    # -- exec --------------------------------------------------------------------
    def run(self, cmd, *args, input=None, timeout=None, check=False, **kw):
        """Run cmd to completion; returns Completed (stdout, stderr, code,
        signal).  input: bytes for stdin, which is then closed (without
        input the command reads end-of-file at once).  timeout: seconds,
        then the process group is killed and AgentTimeout raised (its
        .result holds what was collected).  check: raise ExecError on a
        non-zero status.  Keywords as exec().  ExecError when the command
        could not be started."""
        spec = protocol.exec_payload(cmd, args, **kw)
        return self._drive(protocol.exec_run(self.proto, spec, input, timeout, check))

    def exec(self, cmd, *args, **kw):
        """Start cmd and return a Process to stream with.  Keywords:
        env (dict or ["K=V"]), cwd, user ("name", "uid:gid" ...), tty,
        rows, cols, rlimits ({"nofile": (soft, hard)})."""
        spec = protocol.exec_payload(cmd, args, **kw)
        return Process(self, self._drive(protocol.exec_start(self.proto, spec)))

    # -- filesystem ----------------------------------------------------------------
    def _fs(self, op, **fields):
        return self._drive(protocol.fs_call(self.proto, op, fields))

    def stat(self, path):
        """Entry of path (symlinks not followed); FsError when missing."""
        return self._fs("Stat", path=path)

    def exists(self, path):
        return self._drive(protocol.fs_call(self.proto, "Stat", {"path": path},
                                            check=False)) is not None

    def list(self, path):
        """Entries of a directory, unsorted."""
        return self._fs("List", path=path)

    def mkdir(self, path):
        """Create path and its parents (an existing directory is fine)."""
        self._fs("Mkdir", path=path)

    def remove(self, path):
        """Remove a file (not a directory)."""
        self._fs("Remove", path=path)

    def remove_dir(self, path):
        """Remove a directory tree (symlinks are not followed)."""
        self._fs("RemoveDir", path=path)

    def copy(self, src, dst):
        """Copy a regular file inside the guest, with its permission bits."""
        self._fs("Copy", src=src, dst=dst)

    def rename(self, src, dst):
        """Rename or move inside the guest (not across filesystems)."""
        self._fs("Rename", src=src, dst=dst)

    def upload(self, src, dst, mode=None, progress=None, chunk_size=protocol.CHUNK):
        """Copy src (a local path or a binary file object) to the guest path
        dst, chunk_size bytes at a time; the guest file appears atomically
        when all arrived.  mode: permission bits (default: a local path's
        own, else the guest's default).  progress(done, total) is called
        after each chunk (total None when unknown)."""
        if isinstance(src, (str, bytes, os.PathLike)):
            with open(src, "rb") as f:
                if mode is None:
                    mode = os.fstat(f.fileno()).st_mode & 0o7777
                return self._drive(protocol.upload(self.proto, f, dst, mode, progress, chunk_size))
        return self._drive(protocol.upload(self.proto, src, dst, mode, progress, chunk_size))

    def download(self, src, dst, progress=None):
        """Copy the guest file src to dst (a local path or a binary file
        object), chunk by chunk.  A path is written to a temporary file
        next to it and renamed at the end (with the guest file's permission
        bits), so a failure leaves nothing behind.  Returns the byte count."""
        if not isinstance(dst, (str, bytes, os.PathLike)):
            return self._drive(protocol.download(self.proto, src, dst, progress))
        e = self.stat(src)
        dst = os.fsdecode(dst)
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(dst),
                                   dir=os.path.dirname(os.path.abspath(dst)))
        try:
            with os.fdopen(fd, "wb") as f:
                n = self._drive(protocol.download(self.proto, src, f, progress,
                                                  e.size if e.is_file else None))
            os.chmod(tmp, e.perm)
            os.rename(tmp, dst)
            return n
        except BaseException:
            os.unlink(tmp)
            raise

    def read_bytes(self, path):
        """A whole guest file in memory (small files only)."""
        import io
        b = io.BytesIO()
        self._drive(protocol.download(self.proto, path, b))
        return b.getvalue()

    def write_bytes(self, path, data, mode=None):
        import io
        self._drive(protocol.upload(self.proto, io.BytesIO(data), path, mode))

    def shutdown(self):
        """Power the guest off (nothing is sent back; the port closes)."""
        self._drive(iter_send(self.proto.shutdown()))


def iter_send(data):
    yield ("send", data)


class Process(protocol.ExitStatus):
    """A running command: pid, write(), eof(), signal(), resize(); iterate
    for ("stdout"|"stderr", bytes) until it exits; wait() for the status.
    code and exit_signal are None until it exited.  ExecError (from pid,
    read, wait ...) when the command could not be started."""

    def __init__(self, client, st):
        self.client, self.state = client, st
        self.id = st.id
        self._buffered = collections.deque()
        self._error = None

    def _step(self, timeout):
        return self.state.handle(self.client._drive(iter_recv(self.state.id, timeout)))

    def _check_spawn(self):
        if self.state.spawn_failed:
            if self._error is None:
                self._error = self.client._drive(
                    protocol.spawn_error(self.client.proto, self.state))
            raise self._error

    @property
    def pid(self):
        """The guest pid (waits for core.exec.started, keeping output)."""
        st = self.state
        while not st.started and not st.done:
            o = self._step(None)
            if o:
                self._buffered.append(o)
        self._check_spawn()
        return st.pid

    def read(self, timeout=None):
        """The next ("stdout"|"stderr", bytes), or None once the process
        exited and all output was read.  AgentTimeout after timeout s."""
        if self._buffered:
            return self._buffered.popleft()
        while not self.state.done:
            o = self._step(timeout)
            if o:
                return o
        self._check_spawn()
        return None

    def __iter__(self):
        while True:
            o = self.read()
            if o is None:
                return
            yield o

    def write(self, data):
        for fr in self.state.stdin_frames(data):
            self.client._send(fr)

    def eof(self):
        """End of input (pipe mode: stdin is closed; PTY mode: ^D)."""
        self.client._send(self.state.eof_frame())

    def signal(self, sig):
        """Send a signal (1..31) to the process group."""
        self.client._send(self.state.signal_frame(sig))

    def kill(self):
        self.signal(protocol.SIGKILL)

    def resize(self, rows, cols):
        """New terminal size (PTY mode)."""
        self.client._send(self.state.resize_frame(rows, cols))

    def wait(self, timeout=None):
        """Discard remaining output, wait for the exit; returns returncode
        (code, or -signal)."""
        while self.read(timeout) is not None:
            pass
        return self.returncode

    def communicate(self, input=None, timeout=None):
        """Write input, close stdin, collect (stdout, stderr) to the end."""
        if input:
            self.write(input)
        if not self.state.tty and not self.state.stdin_closed:
            self.eof()
        out = {"stdout": [], "stderr": []}
        while True:
            o = self.read(timeout)
            if o is None:
                return b"".join(out["stdout"]), b"".join(out["stderr"])
            out[o[0]].append(o[1])



def iter_recv(msg_id, timeout):
    f = yield ("recv", (msg_id,), timeout)
    return f
