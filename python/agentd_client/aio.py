"""The asyncio client: the same operations as client.Client, awaited.

    import asyncio
    from agentd_client.aio import AsyncClient

    async def main():
        async with await AsyncClient.connect("/path/to/agent.sock") as c:
            print((await c.run("uname", "-a")).stdout.decode())
    asyncio.run(main())

Several tasks may use one client at once (frames are routed by id).  Local
file reads and writes of upload()/download() are done inline, a chunk at a
time.
"""
import asyncio
import collections
import os
import tempfile

from . import protocol, transport
from .client import iter_recv, iter_send
from .errors import AgentTimeout, ConnectionClosed, SpawnAgentError


class AsyncClient:
    def __init__(self, fd, sock=None, proc=None):
        self.fd, self.sock, self.proc = fd, sock, proc
        self.loop = asyncio.get_running_loop()
        self.proto = protocol.Protocol()
        self.inbox = collections.defaultdict(collections.deque)
        self.error = None          # set once the connection failed
        self.ready = None
        self._changed = self.loop.create_future()
        self._wlock = asyncio.Lock()
        self.loop.add_reader(fd, self._on_readable)

    # -- opening -------------------------------------------------------------
    @classmethod
    async def connect(cls, path, timeout=60, wait_ready=True):
        c = cls(*transport.open_path(path))
        return await c._ready_or_close(wait_ready, timeout)

    @classmethod
    async def from_fd(cls, fd, timeout=60, wait_ready=True):
        c = cls(*transport.adopt_fd(fd))
        return await c._ready_or_close(wait_ready, timeout)

    @classmethod
    async def spawn(cls, *args, agentd=None, runtime_dir=None, heartbeat_interval=None,
                    env=None, stderr=None, timeout=10, wait_ready=True):
        sock, proc = transport.spawn_agentd(agentd, args, runtime_dir,
                                            heartbeat_interval, env, stderr)
        sock.setblocking(False)
        c = cls(sock.fileno(), sock, proc)
        try:
            return await c._ready_or_close(wait_ready, timeout)
        except ConnectionClosed as e:
            raise SpawnAgentError("agentd exited before it was ready (status %s)"
                                  % proc.poll()) from e

    async def _ready_or_close(self, wait_ready, timeout):
        if wait_ready:
            try:
                await self.wait_ready(timeout)
            except BaseException:
                await self.close(timeout=5)
                raise
        return self

    async def wait_ready(self, timeout=60):
        self.ready = await self._drive(protocol.wait_ready(self.proto, timeout))
        return self.ready

    async def close(self, timeout=10):
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            if self.sock is not None:
                self.sock.close()
            else:
                os.close(self.fd)
            self.fd = None
            self._fail(ConnectionClosed("the connection is closed"))
        if self.proc is not None:
            return await self.loop.run_in_executor(None, transport.wait_agentd,
                                                   self.proc, timeout)
        return None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # -- the I/O driver ----------------------------------------------------------
    def _wake(self):
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = self.loop.create_future()

    def _fail(self, exc):
        if self.error is None:
            self.error = exc
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
        self._wake()

    def _on_readable(self):
        try:
            data = transport.read_some(self.fd, self.sock)
            if data is None:
                return
            if data == b"":
                self._fail(ConnectionClosed("the agent closed the connection"))
                return
            for f in self.proto.receive(data):
                self.inbox[f.id].append(f)
        except Exception as e:
            self._fail(e)
        self._wake()

    async def _drive(self, op):
        res, exc = None, None
        while True:
            try:
                req = op.throw(exc) if exc is not None else op.send(res)
            except StopIteration as e:
                return e.value
            res, exc = None, None
            try:
                if req[0] == "send":
                    await self._send(req[1])
                elif req[0] == "recv":
                    res = await self._recv(req[1], req[2])
                else:
                    q = self.inbox.get(req[1])
                    res = q.popleft() if q else None
            except Exception as e:
                exc = e

    async def _send(self, data):
        async with self._wlock:
            view = memoryview(data)
            while view:
                if self.fd is None:
                    raise ConnectionClosed("the connection is closed")
                n = transport.write_some(self.fd, self.sock, view)
                view = view[n:]
                if view:
                    writable = self.loop.create_future()
                    self.loop.add_writer(self.fd, writable.set_result, None)
                    try:
                        await writable
                    finally:
                        if self.fd is not None:
                            self.loop.remove_writer(self.fd)

    async def _recv(self, ids, timeout):
        deadline = None if timeout is None else self.loop.time() + timeout
        while True:
            for i in ids:
                q = self.inbox.get(i)
                if q:
                    f = q.popleft()
                    if not q:
                        del self.inbox[i]
                    return f
            if self.error is not None:
                raise self.error
            left = None if deadline is None else deadline - self.loop.time()
            if left is not None and left <= 0:
                raise AgentTimeout("nothing from the agent within %.1f s" % timeout)
            try:
                await asyncio.wait_for(asyncio.shield(self._changed), left)
            except asyncio.TimeoutError:
                pass

    # -- exec ----------------------------------------------------------------------
    async def run(self, cmd, *args, input=None, timeout=None, check=False, **kw):
        """As Client.run."""
        spec = protocol.exec_payload(cmd, args, **kw)
        return await self._drive(protocol.exec_run(self.proto, spec, input, timeout, check))

    async def exec(self, cmd, *args, **kw):
        """As Client.exec: an AsyncProcess (async for over its output)."""
        spec = protocol.exec_payload(cmd, args, **kw)
        return AsyncProcess(self, await self._drive(protocol.exec_start(self.proto, spec)))

    # -- filesystem ----------------------------------------------------------------
    async def _fs(self, op, **fields):
        return await self._drive(protocol.fs_call(self.proto, op, fields))

    async def stat(self, path):
        return await self._fs("Stat", path=path)

    async def exists(self, path):
        return await self._drive(protocol.fs_call(self.proto, "Stat", {"path": path},
                                                  check=False)) is not None

    async def list(self, path):
        return await self._fs("List", path=path)

    async def mkdir(self, path):
        await self._fs("Mkdir", path=path)

    async def remove(self, path):
        await self._fs("Remove", path=path)

    async def remove_dir(self, path):
        await self._fs("RemoveDir", path=path)

    async def copy(self, src, dst):
        await self._fs("Copy", src=src, dst=dst)

    async def rename(self, src, dst):
        await self._fs("Rename", src=src, dst=dst)

    async def upload(self, src, dst, mode=None, progress=None, chunk_size=protocol.CHUNK):
        """As Client.upload."""
        if isinstance(src, (str, bytes, os.PathLike)):
            with open(src, "rb") as f:
                if mode is None:
                    mode = os.fstat(f.fileno()).st_mode & 0o7777
                return await self._drive(protocol.upload(self.proto, f, dst, mode,
                                                         progress, chunk_size))
        return await self._drive(protocol.upload(self.proto, src, dst, mode, progress,
                                                 chunk_size))

    async def download(self, src, dst, progress=None):
        """As Client.download."""
        if not isinstance(dst, (str, bytes, os.PathLike)):
            return await self._drive(protocol.download(self.proto, src, dst, progress))
        e = await self.stat(src)
        dst = os.fsdecode(dst)
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(dst),
                                   dir=os.path.dirname(os.path.abspath(dst)))
        try:
            with os.fdopen(fd, "wb") as f:
                n = await self._drive(protocol.download(self.proto, src, f, progress,
                                                        e.size if e.is_file else None))
            os.chmod(tmp, e.perm)
            os.rename(tmp, dst)
            return n
        except BaseException:
            os.unlink(tmp)
            raise

    async def shutdown(self):
        await self._drive(iter_send(self.proto.shutdown()))


class AsyncProcess(protocol.ExitStatus):
    """As client.Process, with awaitable methods and `async for`."""

    def __init__(self, client, st):
        self.client, self.state = client, st
        self.id = st.id
        self._buffered = collections.deque()
        self._error = None

    async def _step(self, timeout):
        f = await self.client._drive(iter_recv(self.state.id, timeout))
        return self.state.handle(f)

    async def _check_spawn(self):
        if self.state.spawn_failed:
            if self._error is None:
                self._error = await self.client._drive(
                    protocol.spawn_error(self.client.proto, self.state))
            raise self._error

    async def started(self):
        """The guest pid, once core.exec.started arrived (output is kept)."""
        st = self.state
        while not st.started and not st.done:
            o = await self._step(None)
            if o:
                self._buffered.append(o)
        await self._check_spawn()
        return st.pid

    @property
    def pid(self):
        return self.state.pid

    async def read(self, timeout=None):
        if self._buffered:
            return self._buffered.popleft()
        while not self.state.done:
            o = await self._step(timeout)
            if o:
                return o
        await self._check_spawn()
        return None

    def __aiter__(self):
        return self

    async def __anext__(self):
        o = await self.read()
        if o is None:
            raise StopAsyncIteration
        return o

    async def write(self, data):
        for fr in self.state.stdin_frames(data):
            await self.client._send(fr)

    async def eof(self):
        await self.client._send(self.state.eof_frame())

    async def signal(self, sig):
        await self.client._send(self.state.signal_frame(sig))

    async def kill(self):
        await self.signal(protocol.SIGKILL)

    async def resize(self, rows, cols):
        await self.client._send(self.state.resize_frame(rows, cols))

    async def wait(self, timeout=None):
        while await self.read(timeout) is not None:
            pass
        return self.returncode

    async def communicate(self, input=None, timeout=None):
        if input:
            await self.write(input)
        if not self.state.tty and not self.state.stdin_closed:
            await self.eof()
        out = {"stdout": [], "stderr": []}
        while True:
            o = await self.read(timeout)
            if o is None:
                return b"".join(out["stdout"]), b"".join(out["stderr"])
            out[o[0]].append(o[1])

