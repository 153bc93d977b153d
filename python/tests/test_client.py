"""The library against the real agentd in host mode: every call of the
blocking and the asyncio API, spawn failures, fs errors, transfers."""
import asyncio
import hashlib
import io
import os
import signal
import socket
import subprocess
import time

import pytest

from agentd_client import (AgentTimeout, Client, ConnectionClosed, ExecError,
                           FsError, SpawnAgentError, TransportError, codec)
from agentd_client.aio import AsyncClient

MIB = 1 << 20


def wait_for(cond, what, timeout=20):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# connecting

def test_spawn_reports_ready(client):
    assert client.ready is not None
    assert client.ready.ready_time_ns >= client.ready.boot_time_ns > 0


def test_spawn_missing_agentd_is_spawn_error(tmp_path):
    with pytest.raises(SpawnAgentError):
        Client.spawn(agentd=str(tmp_path / "no-such-agentd"))


def test_spawn_agentd_that_exits_is_spawn_error():
    with pytest.raises(SpawnAgentError):
        Client.spawn("--no-such-option", stderr=subprocess.DEVNULL)


def test_connect_missing_path_is_transport_error(tmp_path):
    with pytest.raises(TransportError):
        Client.connect(str(tmp_path / "nothing.sock"))


def test_from_fd_on_an_accepted_socket(tmp_path, runtime_dir):
    """agentd --port PATH connects to a listening socket; the accepted fd
    is handed to the client."""
    path = str(tmp_path / "port.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(1)
    proc = subprocess.Popen([os.environ.get("AGENTD", Client.spawn.__globals__[
        "transport"].default_agentd()), "--port", path, "--runtime-dir", runtime_dir])
    try:
        lst.settimeout(10)
        conn, _ = lst.accept()
        c = Client.from_fd(conn.detach())
        assert c.ready is not None
        assert c.run("echo", "fd").stdout == b"fd\n"
        c.close()
        assert proc.wait(timeout=15) == 0
    finally:
        lst.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_later_connections_probe_instead_of_waiting_for_ready(relay):
    """core.ready went out when nobody was connected (as after ./microvm
    --keep); each later client is ready once its probe is answered."""
    for word in ("first", "second"):
        c = Client.connect(relay.path, timeout=20)
        try:
            assert c.ready is None
            assert c.run("echo", word).stdout == word.encode() + b"\n"
        finally:
            c.close()


def test_shutdown_closes_the_connection(spawn):
    c = spawn()
    c.shutdown()
    with pytest.raises(ConnectionClosed):
        c.run("true", timeout=10)


# ---------------------------------------------------------------------------
# run

def test_run_captures_output_and_code(client):
    r = client.run("sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.code, r.signal) == (b"out\n", b"err\n", 3, None)
    assert r.returncode == 3 and r.pid > 0


def test_run_reports_the_killing_signal(client):
    r = client.run("sh", "-c", "kill -TERM $$")
    assert (r.code, r.signal, r.returncode) == (-1, signal.SIGTERM, -signal.SIGTERM)


def test_run_input_env_cwd(client, tmp_path):
    r = client.run("sh", "-c", 'cat; echo "$FOO"; pwd', input=b"in\n",
                   env={"FOO": "bar"}, cwd=str(tmp_path))
    assert r.stdout == b"in\nbar\n" + str(tmp_path).encode() + b"\n"


def test_run_without_input_reads_eof(client):
    assert client.run("cat", timeout=20).stdout == b""


def test_run_large_input_and_output(client):
    data = os.urandom(5 * MIB)
    r = client.run("sh", "-c", "cat; cat >&2", input=data + data)
    assert r.stdout == data + data and r.stderr == b""


def test_run_timeout_kills_the_group(client):
    with pytest.raises(AgentTimeout) as e:
        client.run("sh", "-c", "echo started; sleep 1000", timeout=0.5)
    assert e.value.result.signal == signal.SIGKILL
    assert e.value.result.stdout == b"started\n"


def test_run_check_raises_on_failure(client):
    with pytest.raises(ExecError) as e:
        client.run("false", check=True)
    assert e.value.kind == "exit"


def test_run_rlimits(client):
    r = client.run("sh", "-c", "ulimit -n", rlimits={"nofile": (64, 64)})
    assert r.stdout == b"64\n"


@pytest.mark.parametrize("tty", [False, True])
def test_spawn_failure_not_found(client, tty):
    with pytest.raises(ExecError) as e:
        client.run("no-such-program-xyz", tty=tty)
    assert e.value.not_found and e.value.cmd == "no-such-program-xyz"
    assert "not found" in str(e.value)


def test_spawn_failure_not_executable(client, tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("not a program")
    with pytest.raises(ExecError) as e:
        client.run(str(f))
    assert e.value.kind == "other" and not e.value.not_found


def test_spawn_failure_bad_cwd(client, tmp_path):
    with pytest.raises(ExecError) as e:
        client.run("true", cwd=str(tmp_path / "missing"))
    assert e.value.kind == "bad_cwd"


def test_exec_spawn_failure_raises_from_the_process(client):
    p = client.exec("no-such-program-xyz")
    with pytest.raises(ExecError):
        p.pid
    with pytest.raises(ExecError):
        p.wait()


# ---------------------------------------------------------------------------
# exec: streaming

def test_exec_stdin_output_and_eof(client):
    p = client.exec("cat")
    assert p.pid > 0
    p.write(b"ping")
    assert p.read(timeout=20) == ("stdout", b"ping")
    p.eof()
    assert p.wait(timeout=20) == 0 and p.code == 0


def test_exec_iterates_both_streams(client):
    p = client.exec("sh", "-c", "echo a; echo b >&2")
    got = {"stdout": b"", "stderr": b""}
    for stream, data in p:
        got[stream] += data
    assert got == {"stdout": b"a\n", "stderr": b"b\n"} and p.returncode == 0


def test_exec_signal_reaches_the_process(client):
    p = client.exec("sh", "-c", "echo up; sleep 1000")
    assert p.read(timeout=20) == ("stdout", b"up\n")
    p.signal(signal.SIGTERM)
    assert p.wait(timeout=20) == -signal.SIGTERM and p.exit_signal == signal.SIGTERM


def test_exec_signal_handled_by_the_child(client):
    p = client.exec("sh", "-c", "trap 'echo got-usr1; exit 7' USR1; echo ready; "
                    "while :; do sleep 0.05; done")
    assert p.read(timeout=20) == ("stdout", b"ready\n")
    p.signal(signal.SIGUSR1)
    out, _ = p.communicate(timeout=20)
    assert out == b"got-usr1\n" and p.code == 7


def test_exec_pty_resize_and_eof(client):
    p = client.exec("sh", "-c", "stty size; read x; stty size; cat",
                    tty=True, rows=30, cols=100)
    out = b""
    while b"30 100" not in out:
        out += p.read(timeout=20)[1]
    p.resize(40, 120)
    p.write(b"\n")
    while b"40 120" not in out:
        out += p.read(timeout=20)[1]
    p.eof()  # ^D on a terminal: cat ends
    assert p.wait(timeout=20) == 0


def test_exec_pty_merges_stderr(client):
    p = client.exec("sh", "-c", "echo err >&2", tty=True)
    assert [s for s, _ in p] == ["stdout"] and p.returncode == 0


def test_two_processes_interleave(client):
    a = client.exec("cat")
    b = client.exec("cat")
    b.write(b"to-b")
    a.write(b"to-a")
    assert a.read(timeout=20) == ("stdout", b"to-a")
    assert b.read(timeout=20) == ("stdout", b"to-b")
    a.eof()
    b.eof()
    assert a.wait(timeout=20) == 0 and b.wait(timeout=20) == 0


# ---------------------------------------------------------------------------
# filesystem

def test_fs_operations(client, tmp_path):
    d = str(tmp_path / "a" / "b")
    client.mkdir(d)
    client.mkdir(d)  # existing directory: fine
    e = client.stat(d)
    assert e.is_dir and e.path == d and e.name == "b" and e.modified > 0
    client.write_bytes(d + "/f", b"hello", mode=0o640)
    e = client.stat(d + "/f")
    assert (e.kind, e.size, e.perm) == ("file", 5, 0o640)
    client.copy(d + "/f", d + "/g")
    assert (tmp_path / "a" / "b" / "g").read_bytes() == b"hello"
    assert client.stat(d + "/g").perm == 0o640
    client.rename(d + "/g", str(tmp_path / "moved" / "h"))
    assert (tmp_path / "moved" / "h").read_bytes() == b"hello"
    os.symlink("f", d + "/link")
    names = sorted((e.name, e.kind) for e in client.list(d))
    assert names == [("f", "file"), ("link", "symlink")]
    assert client.exists(d + "/f") and not client.exists(d + "/nope")
    client.remove(d + "/f")
    assert not os.path.exists(d + "/f")
    client.remove_dir(str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a")


@pytest.mark.parametrize("call, prefix", [
    (lambda c, t: c.stat(t + "/missing"), "stat: No such file or directory (os error 2)"),
    (lambda c, t: c.list(t + "/missing"), "opendir: No such file or directory (os error 2)"),
    (lambda c, t: c.remove(t), "remove: Is a directory (os error 21)"),
    (lambda c, t: c.remove_dir(t + "/missing"), "remove_dir: No such file or directory"),
    (lambda c, t: c.copy(t, t + "/x"), "copy: the source path is neither"),
    (lambda c, t: c.rename(t + "/missing", t + "/x"), "rename: No such file or directory"),
    (lambda c, t: c.mkdir(t + "/file/sub"), "mkdir: Not a directory"),
    (lambda c, t: c.read_bytes(t + "/missing"), "open: No such file or directory"),
])
def test_fs_errors_carry_the_guest_text(client, tmp_path, call, prefix):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(FsError) as e:
        call(client, str(tmp_path))
    assert e.value.error.startswith(prefix), e.value.error
    if "(os error" in e.value.error:
        assert e.value.errno > 0
    assert client.run("true").code == 0  # the connection still serves


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def test_upload_and_download_with_progress_and_checksum(client, tmp_path):
    src = tmp_path / "src.bin"
    with open(src, "wb") as f:
        f.write(os.urandom(5 * MIB + 123))
    os.chmod(src, 0o750)
    ups = []
    client.upload(str(src), str(tmp_path / "guest" / "up.bin"),
                  progress=lambda done, total: ups.append((done, total)))
    assert ups[0] == (0, 5 * MIB + 123) and ups[-1] == (5 * MIB + 123, 5 * MIB + 123)
    assert len(ups) == 7  # 0, then one call per 1 MiB chunk
    assert sha256_file(tmp_path / "guest" / "up.bin") == sha256_file(src)
    assert os.stat(tmp_path / "guest" / "up.bin").st_mode & 0o7777 == 0o750
    downs = []
    n = client.download(str(tmp_path / "guest" / "up.bin"), str(tmp_path / "down.bin"),
                        progress=lambda done, total: downs.append((done, total)))
    assert n == 5 * MIB + 123
    assert downs[-1] == (n, n) and all(t == n for _, t in downs)
    assert sha256_file(tmp_path / "down.bin") == sha256_file(src)
    assert os.stat(tmp_path / "down.bin").st_mode & 0o7777 == 0o750


class Recorder(io.RawIOBase):
    """A file object that records the largest single read or write."""

    def __init__(self, data=b""):
        self.src, self.out, self.largest = io.BytesIO(data), hashlib.sha256(), 0

    def readable(self):
        return True

    def read(self, n=-1):
        b = self.src.read(n)
        self.largest = max(self.largest, len(b))
        return b

    def write(self, b):
        self.largest = max(self.largest, len(b))
        self.out.update(b)
        return len(b)


def test_transfers_with_file_objects_stream_in_bounded_chunks(client, tmp_path):
    data = os.urandom(3 * MIB + 7)
    src = Recorder(data)
    client.upload(src, str(tmp_path / "obj.bin"), chunk_size=256 * 1024)
    assert src.largest == 256 * 1024
    assert (tmp_path / "obj.bin").read_bytes() == data
    sink = Recorder()
    assert client.download(str(tmp_path / "obj.bin"), sink) == len(data)
    assert 0 < sink.largest <= codec.FS_CHUNK_MAX
    assert sink.out.hexdigest() == hashlib.sha256(data).hexdigest()


def test_upload_refused_at_open(client, tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(FsError) as e:
        client.upload(io.BytesIO(os.urandom(3 * MIB)), str(tmp_path / "file" / "sub"))
    assert e.value.op == "Write" and e.value.error.startswith("mkdir parent:")
    assert client.run("echo", "ok").stdout == b"ok\n"


def test_upload_aborted_by_a_local_error_commits_nothing(client, tmp_path):
    class Broken(io.RawIOBase):
        n = 0

        def readable(self):
            return True

        def read(self, size=-1):
            self.n += 1
            if self.n > 2:
                raise OSError("local disk failed")
            return b"x" * size

    with pytest.raises(OSError, match="local disk failed"):
        client.upload(Broken(), str(tmp_path / "never.bin"))
    assert not (tmp_path / "never.bin").exists()
    assert client.run("echo", "ok").stdout == b"ok\n"


def test_download_failing_midway_leaves_nothing(client, tmp_path):
    """Reading a directory opens but fails at the first read: the Read
    ends with an error response."""
    with pytest.raises(FsError) as e:
        client.download(str(tmp_path), str(tmp_path / "out.bin"))
    assert e.value.error.startswith("read: Is a directory")
    assert os.listdir(tmp_path) == ["runtime"]


# ---------------------------------------------------------------------------
# asyncio

def arun(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_async_run_exec_and_errors(runtime_dir):
    async def main():
        c = await AsyncClient.spawn(runtime_dir=runtime_dir)
        try:
            assert c.ready is not None
            r = await c.run("sh", "-c", "cat; echo err >&2; exit 5", input=b"in")
            assert (r.stdout, r.stderr, r.code) == (b"in", b"err\n", 5)
            r = await c.run("sh", "-c", "kill -KILL $$")
            assert r.signal == signal.SIGKILL
            with pytest.raises(ExecError) as e:
                await c.run("no-such-program-xyz")
            assert e.value.not_found
            # concurrent runs on one connection
            rs = await asyncio.gather(*[c.run("echo", str(i)) for i in range(20)])
            assert [x.stdout for x in rs] == [b"%d\n" % i for i in range(20)]
            with pytest.raises(AgentTimeout):
                await c.run("sleep", "1000", timeout=0.3)
        finally:
            assert await c.close() == 0
    arun(main())


def test_async_process_stdin_eof_signal_resize(runtime_dir):
    async def main():
        c = await AsyncClient.spawn(runtime_dir=runtime_dir)
        try:
            p = await c.exec("cat")
            assert await p.started() > 0
            await p.write(b"abc")
            assert await p.read(timeout=20) == ("stdout", b"abc")
            await p.eof()
            assert await p.wait() == 0

            p = await c.exec("sleep", "1000")
            await p.started()
            await p.signal(signal.SIGTERM)
            assert await p.wait() == -signal.SIGTERM

            p = await c.exec("sh", "-c", "stty size; read x; stty size", tty=True,
                             rows=30, cols=100)
            out = b""
            while b"30 100" not in out:
                out += (await p.read(timeout=20))[1]
            await p.resize(50, 132)
            await p.write(b"\n")
            async for _, data in p:
                out += data
            assert b"50 132" in out and p.returncode == 0

            p = await c.exec("no-such-program-xyz")
            with pytest.raises(ExecError):
                await p.wait()
        finally:
            assert await c.close() == 0
    arun(main())


def test_async_fs_and_transfers(runtime_dir, tmp_path):
    data = os.urandom(2 * MIB + 5)
    (tmp_path / "src.bin").write_bytes(data)

    async def main():
        c = await AsyncClient.spawn(runtime_dir=runtime_dir)
        try:
            d = str(tmp_path / "x")
            await c.mkdir(d + "/y")
            assert (await c.stat(d)).is_dir
            prog = []
            await c.upload(str(tmp_path / "src.bin"), d + "/y/f",
                           progress=lambda n, t: prog.append((n, t)))
            assert prog[-1] == (len(data), len(data))
            assert [e.name for e in await c.list(d + "/y")] == ["f"]
            await c.copy(d + "/y/f", d + "/g")
            await c.rename(d + "/g", d + "/h")
            n = await c.download(d + "/h", str(tmp_path / "back.bin"))
            assert n == len(data) and (tmp_path / "back.bin").read_bytes() == data
            assert await c.exists(d + "/h")
            await c.remove(d + "/h")
            with pytest.raises(FsError) as e:
                await c.stat(d + "/h")
            assert e.value.errno == 2
            await c.remove_dir(d)
            assert not os.path.exists(d)
        finally:
            assert await c.close() == 0
    arun(main())


def test_async_connect_through_a_socket(relay):
    async def main():
        c = await AsyncClient.connect(relay.path, timeout=20)
        try:
            assert (await c.run("echo", "sock")).stdout == b"sock\n"
        finally:
            await c.close()
        c = await AsyncClient.connect(relay.path, timeout=20)
        try:
            assert c.ready is None
            await c.shutdown()
            with pytest.raises(ConnectionClosed):
                await c.run("true")
        finally:
            await c.close()
    arun(main())
