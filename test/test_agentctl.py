"""Host-mode tests of agentctl: a real agentd on one end of a socketpair
(--port-fd), agentctl on the other (--fd).  Commands run on this host, so
paths are the test's temporary directories.

Run with Debian's /usr/bin/python3 -m pytest test/test_agentctl.py.
"""
import fcntl
import hashlib
import json
import os
import pty
import select
import signal
import socket
import stat
import struct
import subprocess
import termios
import time

import ctypes
import cbor2
import pytest

from testlib import vm_hwm_kib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
AGENTD = os.environ.get("AGENTD", os.path.join(ROOT, "agentd"))
AGENTCTL = os.environ.get("AGENTCTL", os.path.join(ROOT, "agentctl"))


def spawn_agent():
    """agentd on a socketpair; returns (host socket, agentd process)."""
    host, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    cmd = [AGENTD, "--port-fd", str(guest.fileno())]
    wrapper = os.environ.get("AGENTD_WRAPPER")
    if wrapper:
        cmd = wrapper.split() + cmd
    proc = subprocess.Popen(cmd, pass_fds=(guest.fileno(),), stderr=subprocess.DEVNULL)
    guest.close()
    return host, proc


def ctl_args(sock, *args):
    return [AGENTCTL, "--fd", str(sock.fileno())] + list(args)


def run(*args, input=None, timeout=60, stdin=None):
    """One agentctl call against a fresh agentd; the agent ends with it."""
    host, agent = spawn_agent()
    try:
        r = subprocess.run(ctl_args(host, *args), pass_fds=(host.fileno(),), input=input,
                           stdin=stdin if input is None else None,
                           capture_output=True, timeout=timeout)
    finally:
        host.close()
        stop(agent)
    return r


def stop(agent):
    """agentd must end by itself, with status 0, once its host hung up: a
    hang or a crash of agentd fails the test."""
    try:
        rc = agent.wait(timeout=10)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
        raise AssertionError("agentd did not exit within 10 s of the host hanging up")
    assert rc == 0, "agentd exited with status %d" % rc


def kill_pid(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


PR_SET_CHILD_SUBREAPER = 36


def _children():
    """pid -> state of this process's children (orphans come here too)."""
    me, out = os.getpid(), {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            out[int(d)] = fields[0]
    return out


@pytest.fixture(scope="module", autouse=True)
def _subreaper():
    """Orphans of this module's processes (a session's `sleep 300` after
    agentd was killed) are re-parented to pytest, so they can be found."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture(autouse=True)
def _no_process_left(_subreaper):
    """Every test ends every process it starts: whatever is left after a
    test (polled for a few seconds) is killed and fails the test."""
    before = set(_children())
    yield
    deadline = time.monotonic() + 5
    while True:
        left = {pid: st for pid, st in _children().items() if pid not in before}
        for pid, st in list(left.items()):
            if st == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                del left[pid]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    leaked, rounds = sorted(left), 0
    while left and rounds < 50:
        # Killing an orphan re-parents its own children here: repeat.
        for pid in left:
            try:
                pgid = os.getpgid(pid)
                if pgid != os.getpgid(0):
                    os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
            kill_pid(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        left = {pid for pid in _children() if pid not in before}
        rounds += 1
    assert not leaked, "processes left by the test: %r" % leaked


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# exec: output, exit status

def test_exec_streams_stdout_and_stderr_apart():
    r = run("exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3, r
    assert r.stdout == b"out\n"
    assert r.stderr == b"err\n"


def test_exec_env_workdir(tmp_path):
    r = run("exec", "-e", "FOO=bar baz", "-w", str(tmp_path), "--",
            "sh", "-c", 'printf "%s|%s" "$FOO" "$(pwd)"')
    assert r.returncode == 0, r
    assert r.stdout.decode() == "bar baz|%s" % tmp_path


def test_exec_env_copies_local_value():
    host, agent = spawn_agent()
    try:
        r = subprocess.run(ctl_args(host, "exec", "-e", "AGENTCTL_T", "--", "sh", "-c",
                                    'echo "$AGENTCTL_T"'),
                           pass_fds=(host.fileno(),), capture_output=True, timeout=30,
                           env=dict(os.environ, AGENTCTL_T="from-host"))
    finally:
        host.close()
        stop(agent)
    assert r.stdout == b"from-host\n", r


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1])
def test_exec_killed_by_signal_is_128_plus_n(sig):
    r = run("exec", "--", "sh", "-c", "kill -%d $$" % sig)
    assert r.returncode == 128 + sig, r


def test_exec_not_found_is_127():
    r = run("exec", "--", "/nonexistent/agentctl-test-program")
    assert r.returncode == 127, r
    assert b"cannot run" in r.stderr
    r = run("exec", "--", "agentctl-no-such-command-xyz")
    assert r.returncode == 127, r


def test_exec_not_executable_is_126(tmp_path):
    f = tmp_path / "data"
    f.write_bytes(b"not a program\n")
    f.chmod(0o644)
    r = run("exec", "--", str(f))
    assert r.returncode == 126, r


def test_exec_bad_workdir_is_126(tmp_path):
    r = run("exec", "-w", str(tmp_path / "missing"), "--", "true")
    assert r.returncode == 126, r
    assert b"working directory" in r.stderr


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_exec_timeout_is_124_and_kills_the_group(tmp_path):
    pidfile = tmp_path / "bg.pid"
    r = run("exec", "--timeout", "1s", "--", "sh", "-c",
            "sleep 300 & echo $! > %s; wait" % pidfile, timeout=30)
    assert r.returncode == 124, r
    assert b"timed out" in r.stderr
    pid = int(pidfile.read_text())
    try:
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid), "background child of the timed-out command survived"
    finally:
        kill_pid(pid)


def test_usage_errors_are_125():
    r = subprocess.run([AGENTCTL, "--fd", "0", "exec"], capture_output=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 125 and b"usage" in r.stderr
    r = subprocess.run([AGENTCTL, "exec", "--", "true"], capture_output=True)
    assert r.returncode == 125 and b"no agent port" in r.stderr
    r = subprocess.run([AGENTCTL, "--fd", "0", "frobnicate"], capture_output=True)
    assert r.returncode == 125 and b"unknown command" in r.stderr
    r = subprocess.run([AGENTCTL, "--fd", "99", "exec", "--", "true"], capture_output=True)
    assert r.returncode == 125


def test_transport_errors_are_125():
    # No agent at all: the port closes before core.ready.
    host, guest = socket.socketpair()
    guest.close()
    r = subprocess.run(ctl_args(host, "exec", "--", "true"), pass_fds=(host.fileno(),),
                       capture_output=True, timeout=30)
    host.close()
    assert r.returncode == 125, r
    assert b"closed the connection" in r.stderr

    # The agent dies while the command runs; its session's sleep is
    # orphaned and must be ended here.
    host, agent = spawn_agent()
    p = subprocess.Popen(ctl_args(host, "exec", "--", "sh", "-c", "echo $$; exec sleep 300"),
                         pass_fds=(host.fileno(),), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    host.close()
    sleeper = None
    try:
        sleeper = int(p.stdout.readline())
        agent.kill()
        agent.wait()
        out, err = p.communicate(timeout=30)
        assert p.returncode == 125, err
        assert b"connection to the agent lost" in err
    finally:
        p.kill()
        p.wait()
        agent.kill()
        agent.wait()
        if sleeper:
            kill_pid(sleeper)


def test_no_ready_within_timeout_is_125():
    host, guest = socket.socketpair()
    r = subprocess.run(ctl_args(host, "--ready-timeout", "300ms", "ready"),
                       pass_fds=(host.fileno(),), capture_output=True, timeout=30)
    host.close()
    guest.close()
    assert r.returncode == 125 and b"not ready" in r.stderr, r


def test_help():
    r = subprocess.run([AGENTCTL, "--help"], capture_output=True)
    assert r.returncode == 0 and b"exec" in r.stdout and b"cp" in r.stdout
    for cmd in ("exec", "cp", "ls", "stat", "mkdir", "rm", "mv", "cat", "ready", "shutdown"):
        r = subprocess.run([AGENTCTL, cmd, "--help"], capture_output=True)
        assert r.returncode == 0, cmd
        assert r.stdout.startswith(b"usage: agentctl " + cmd.encode()), cmd
    r = subprocess.run([AGENTCTL, "exec", "--help"], capture_output=True)
    assert b"124" in r.stdout and b"127" in r.stdout


# ---------------------------------------------------------------------------
# exec: stdin

def test_stdin_not_forwarded_without_i():
    # Even with a pipe that never closes, the remote command reads EOF.
    rd, wr = os.pipe()
    try:
        r = run("exec", "--", "sh", "-c", "cat; echo done", stdin=rd, timeout=30)
    finally:
        os.close(rd)
        os.close(wr)
    assert r.returncode == 0, r
    assert r.stdout == b"done\n"


def test_stdin_forwarded_with_i():
    data = os.urandom(5 << 20)
    r = run("exec", "-i", "--", "sha256sum", input=data, timeout=120)
    assert r.returncode == 0, r
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_stdout_closed_becomes_sigpipe():
    host, agent = spawn_agent()
    try:
        p = subprocess.Popen(ctl_args(host, "exec", "--", "yes"), pass_fds=(host.fileno(),),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout.read(4) == b"y\ny\n"
        p.stdout.close()
        p.wait(timeout=30)
    finally:
        host.close()
        stop(agent)
    assert p.returncode == 128 + signal.SIGPIPE


# ---------------------------------------------------------------------------
# exec: signals from the user

def exec_until_up(host, script):
    """agentctl exec of `sh -c script`, once the script has printed "up"."""
    p = subprocess.Popen(ctl_args(host, "exec", "--", "sh", "-c", script),
                         pass_fds=(host.fileno(),), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"up\n"
    except BaseException:
        p.kill()
        p.wait()
        raise
    return p


def test_sigint_and_sigterm_are_forwarded():
    host, agent = spawn_agent()
    try:
        p = exec_until_up(host, 'trap "echo got-int; exit 7" INT; echo up; '
                                'while :; do sleep 0.05; done')
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 7, err
        assert out == b"got-int\n"

        p = exec_until_up(host, "echo up; sleep 300")
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
        assert p.returncode == 128 + signal.SIGTERM
    finally:
        host.close()
        stop(agent)


# ---------------------------------------------------------------------------
# exec: terminal mode through a pseudo-terminal

class Term:
    """agentctl running on the slave side of a fresh pty (as its
    controlling terminal); the test plays the user on the master."""

    def __init__(self, host, args, rows=33, cols=101):
        self.master, self.slave = pty.openpty()
        self.set_size(rows, cols)
        self.before = termios.tcgetattr(self.slave)
        slave = self.slave

        def ctty():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(ctl_args(host, *args), pass_fds=(host.fileno(),),
                                     stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=ctty,
                                     env=dict(os.environ, TERM="xterm-test"))
        self.out = b""

    def set_size(self, rows, cols):
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, data):
        os.write(self.master, data)

    def read_until(self, needle, timeout=30):
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, "no %r in %r" % (needle, self.out)
            r, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if r:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:
                    break
        return self.out

    def close(self):
        try:
            self.proc.wait(timeout=30)
        finally:
            os.close(self.master)
            os.close(self.slave)


def test_tty_mode_size_input_exit_and_terminal_restored():
    host, agent = spawn_agent()
    t = Term(host, ["exec", "-t", "--", "sh", "-c",
                    'stty size; tty; echo "term=$TERM"; read x; echo "got:$x"; exit 5'])
    try:
        out = t.read_until(b"term=")
        assert b"33 101" in out
        assert b"/dev/pts/" in out
        t.read_until(b"\n", timeout=5)
        assert b"term=xterm-test" in t.out
        t.write(b"hello\n")
        t.read_until(b"got:hello")
        assert t.proc.wait(timeout=30) == 5
        after = termios.tcgetattr(t.slave)
        assert after == t.before, "local terminal not restored"
        assert after[3] & termios.ECHO and after[3] & termios.ICANON
    finally:
        t.close()
        host.close()
        stop(agent)


def test_tty_mode_resize_is_forwarded():
    host, agent = spawn_agent()
    t = Term(host, ["exec", "-t", "--", "sh", "-c",
                    'stty size; while read x; do stty size; done'], rows=24, cols=80)
    try:
        t.read_until(b"24 80")
        t.set_size(40, 120)  # the kernel sends SIGWINCH to agentctl
        deadline = time.monotonic() + 20
        while b"40 120" not in t.out:
            assert time.monotonic() < deadline, t.out
            t.write(b"\n")
            try:
                t.read_until(b"40 120", timeout=0.3)
            except AssertionError:
                pass
        t.write(b"\x04")  # ^D ends the loop
        assert t.proc.wait(timeout=30) == 0
    finally:
        t.close()
        host.close()
        stop(agent)


def test_tty_mode_terminal_restored_when_agent_dies():
    host, agent = spawn_agent()
    t = Term(host, ["exec", "-t", "--", "sh", "-c", "echo up:$$:; exec sleep 300"])
    sleeper = None
    try:
        out = t.read_until(b":\r")
        sleeper = int(out.split(b"up:")[1].split(b":")[0])
        agent.kill()
        agent.wait()
        assert t.proc.wait(timeout=30) == 125
        assert termios.tcgetattr(t.slave) == t.before
    finally:
        if sleeper:
            kill_pid(sleeper)
        t.proc.kill()
        t.close()
        host.close()
        agent.kill()
        agent.wait()


# ---------------------------------------------------------------------------
# several clients on one connection (what `microvm --keep` relies on)

def test_second_client_on_the_same_port_needs_no_ready():
    host, agent = spawn_agent()
    try:
        for i in range(3):
            r = subprocess.run(ctl_args(host, "--ready-timeout", "10s", "exec", "--",
                                        "echo", "call%d" % i),
                               pass_fds=(host.fileno(),), capture_output=True, timeout=30)
            assert r.returncode == 0, r
            assert r.stdout == b"call%d\n" % i
        r = subprocess.run(ctl_args(host, "ready"), pass_fds=(host.fileno(),),
                           capture_output=True, timeout=30)
        assert r.returncode == 0 and b"earlier client" in r.stdout, r
    finally:
        host.close()
        stop(agent)


def test_ready_prints_timings():
    r = run("ready", "--json")
    assert r.returncode == 0, r
    j = json.loads(r.stdout)
    assert j["ready"] is True
    assert 0 < j["boot_time_ns"] <= j["ready_time_ns"]
    r = run("ready")
    assert r.returncode == 0 and b"agent start to ready" in r.stdout


# ---------------------------------------------------------------------------
# filesystem commands

def test_cp_file_both_ways_keeps_mode(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300000))
    src.chmod(0o751)
    gdir = tmp_path / "guest"
    r = run("cp", str(src), ":%s/sub/dst.bin" % gdir)
    assert r.returncode == 0, r
    dst = gdir / "sub" / "dst.bin"
    assert dst.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(dst.stat().st_mode) == 0o751

    back = tmp_path / "back.bin"
    r = run("cp", "guest:%s" % dst, str(back))
    assert r.returncode == 0, r
    assert back.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(back.stat().st_mode) == 0o751
    assert [p.name for p in tmp_path.iterdir() if "agentctl" in p.name] == []


def test_cp_into_directories_and_stdio(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "h").mkdir()
    f = tmp_path / "name.txt"
    f.write_text("hello\n")
    assert run("cp", str(f), ":%s/g" % tmp_path).returncode == 0
    assert (tmp_path / "g" / "name.txt").read_text() == "hello\n"
    assert run("cp", ":%s/g/name.txt" % tmp_path, str(tmp_path / "h") + "/").returncode == 0
    assert (tmp_path / "h" / "name.txt").read_text() == "hello\n"
    r = run("cp", "-", ":%s/g/from-stdin" % tmp_path, input=b"piped\x00bytes")
    assert r.returncode == 0, r
    assert (tmp_path / "g" / "from-stdin").read_bytes() == b"piped\x00bytes"
    r = run("cp", ":%s/g/from-stdin" % tmp_path, "-")
    assert r.returncode == 0 and r.stdout == b"piped\x00bytes"
    r = run("cat", "%s/g/name.txt" % tmp_path, "%s/g/from-stdin" % tmp_path)
    assert r.stdout == b"hello\npiped\x00bytes"


def test_cp_errors(tmp_path):
    r = run("cp", ":%s/missing" % tmp_path, str(tmp_path / "x"))
    assert r.returncode == 1 and b"missing" in r.stderr
    assert not (tmp_path / "x").exists()
    (tmp_path / "d").mkdir()
    r = run("cp", ":%s/d" % tmp_path, str(tmp_path / "y"))
    assert r.returncode == 125 and b"use -r" in r.stderr
    r = run("cp", "a", "b")
    assert r.returncode == 125 and b"guest path" in r.stderr
    r = run("cat", str(tmp_path / "missing"))
    assert r.returncode == 1


def make_tree(root):
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "top.txt").write_text("top")
    (root / "a" / "one").write_bytes(os.urandom(1000))
    (root / "a" / "b" / "two").write_bytes(b"")
    (root / "a" / "b" / "c" / "three").write_bytes(os.urandom(70000))
    (root / "a" / "one").chmod(0o700)
    (root / "a" / "b" / "c").chmod(0o750)


def tree(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel] = ("dir", stat.S_IMODE(os.stat(dirpath).st_mode) if rel != "." else None)
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.join(rel, f)] = (hashlib.sha256(fh.read()).hexdigest(),
                                             stat.S_IMODE(os.stat(p).st_mode))
    return out


def test_cp_recursive_both_ways(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    r = run("cp", "-r", str(src), ":%s/up" % tmp_path)
    assert r.returncode == 0, r
    up = tree(tmp_path / "up")
    want = tree(src)
    # Directory modes cannot be set through the seed protocol (Mkdir has
    # no mode); file contents and modes must match.
    assert {k: v for k, v in up.items() if v[0] != "dir"} == \
        {k: v for k, v in want.items() if v[0] != "dir"}
    assert set(up) == set(want)

    (tmp_path / "down").mkdir()
    r = run("cp", "-r", ":%s" % src, str(tmp_path / "down"))
    assert r.returncode == 0, r
    assert tree(tmp_path / "down" / "src") == want


def test_ls_json_and_human(tmp_path):
    (tmp_path / "f").write_bytes(b"12345")
    (tmp_path / "f").chmod(0o640)
    (tmp_path / "d").mkdir()
    os.symlink("f", tmp_path / "l")
    r = run("ls", "--json", str(tmp_path))
    assert r.returncode == 0, r
    entries = {e["name"]: e for e in json.loads(r.stdout)}
    assert set(entries) == {"f", "d", "l"}
    assert entries["f"]["kind"] == "file" and entries["f"]["size"] == 5
    assert entries["f"]["perm"] == "0640" and entries["f"]["mode"] == 0o100640
    assert entries["f"]["path"] == "%s/f" % tmp_path
    assert isinstance(entries["f"]["modified"], int)
    assert entries["d"]["kind"] == "dir" and entries["l"]["kind"] == "symlink"
    r = run("ls", str(tmp_path))
    lines = r.stdout.decode().splitlines()
    assert [ln.split()[-1] for ln in lines] == ["d", "f", "l"]
    assert lines[1].startswith("-rw-r----- ")
    r = run("ls", str(tmp_path / "nope"))
    assert r.returncode == 1


def test_stat_json(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 10)
    r = run("stat", "--json", str(tmp_path / "f"))
    assert r.returncode == 0, r
    j = json.loads(r.stdout)
    assert j["kind"] == "file" and j["size"] == 10 and j["path"] == str(tmp_path / "f")
    r = run("stat", "--json", str(tmp_path / "f"), str(tmp_path))
    assert [e["kind"] for e in json.loads(r.stdout)] == ["file", "dir"]
    r = run("stat", str(tmp_path / "missing"))
    assert r.returncode == 1 and b"missing" in r.stderr


def test_mkdir_mv_rm(tmp_path):
    assert run("mkdir", str(tmp_path / "x" / "y")).returncode == 0
    assert (tmp_path / "x" / "y").is_dir()
    (tmp_path / "x" / "y" / "f").write_text("f")
    assert run("mv", str(tmp_path / "x" / "y" / "f"), str(tmp_path / "g")).returncode == 0
    assert (tmp_path / "g").read_text() == "f"
    assert run("rm", str(tmp_path / "g")).returncode == 0
    assert not (tmp_path / "g").exists()
    r = run("rm", str(tmp_path / "x"))
    assert r.returncode == 1
    assert run("rm", "-r", str(tmp_path / "x")).returncode == 0
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cp_100mib_round_trip(tmp_path):
    src = tmp_path / "big"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    want = sha256_file(src)
    r = run("cp", str(src), ":%s/guest-big" % tmp_path, timeout=600)
    assert r.returncode == 0, r
    assert sha256_file(tmp_path / "guest-big") == want
    r = run("cp", ":%s/guest-big" % tmp_path, str(tmp_path / "back"), timeout=600)
    assert r.returncode == 0, r
    assert sha256_file(tmp_path / "back") == want
    # Through stdin and stdout too.
    with open(src, "rb") as f:
        r = run("cp", "-", ":%s/guest-big2" % tmp_path, stdin=f, timeout=600)
    assert r.returncode == 0, r
    assert sha256_file(tmp_path / "guest-big2") == want
    host, agent = spawn_agent()
    try:
        p = subprocess.Popen(ctl_args(host, "cat", str(tmp_path / "guest-big2")),
                             pass_fds=(host.fileno(),), stdout=subprocess.PIPE)
        h = hashlib.sha256()
        for chunk in iter(lambda: p.stdout.read(1 << 20), b""):
            h.update(chunk)
        assert p.wait(timeout=600) == 0
    finally:
        host.close()
        stop(agent)
    assert h.hexdigest() == want


# ---------------------------------------------------------------------------
# a hostile agent: agentctl stays bounded and fails cleanly

def frame(msg_id, t, payload, flags=0):
    body = cbor2.dumps({"v": 1, "t": t, "p": cbor2.dumps(payload)})
    return struct.pack(">IIB", len(body) + 5, msg_id, flags) + body


READY = frame(0, "core.ready", {"boot_time_ns": 1, "init_time_ns": 2, "ready_time_ns": 3})


@pytest.mark.parametrize("evil,msg", [
    (struct.pack(">IIB", 0xFFFFFFF0, 1, 0) + b"x" * 100, b"larger than 4 MiB"),
    (struct.pack(">IIB", 3, 1, 0), b"shorter"),
    (struct.pack(">IIB", 6, 1, 0) + b"\xff", b"undecodable"),
])
def test_hostile_agent_frames(evil, msg):
    host, fake = socket.socketpair()
    fake.sendall(READY + evil)
    r = subprocess.run(ctl_args(host, "exec", "--", "true"), pass_fds=(host.fileno(),),
                       capture_output=True, timeout=30)
    host.close()
    fake.close()
    assert r.returncode == 125, r
    assert msg in r.stderr


def test_hostile_agent_bad_listing(tmp_path):
    """Names a guest lists must be single components: no ../ escapes."""
    host, fake = socket.socketpair()
    proc = subprocess.Popen(ctl_args(host, "cp", "-r", ":/d", str(tmp_path / "out")),
                         pass_fds=(host.fileno(),), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    host.close()
    fake.sendall(READY)
    buf = b""

    def next_request():
        nonlocal buf
        while True:
            if len(buf) >= 4:
                n = struct.unpack(">I", buf[:4])[0]
                if len(buf) >= 4 + n:
                    msg_id = struct.unpack(">I", buf[4:8])[0]
                    env = cbor2.loads(buf[9:4 + n])
                    buf = buf[4 + n:]
                    return msg_id, env["t"], cbor2.loads(env["p"])
            chunk = fake.recv(65536)
            assert chunk, "agentctl hung up"
            buf += chunk

    def entry(path, kind):
        return {"path": path, "kind": kind, "size": 1,
                "mode": 0o40755 if kind == "dir" else 0o100644, "modified": None}

    def respond(msg_id, data=None):
        fake.sendall(frame(msg_id, "core.fs.response",
                           {"ok": True, "error": None, "data": data}, flags=1))

    for _ in range(10):
        msg_id, t, req = next_request()
        op, = req["op"]
        path = req["op"][op]["path"]
        if op == "Stat":
            respond(msg_id, {"Stat": entry(path, "dir")})
        elif op == "List":
            respond(msg_id, {"List": [entry("/d/../../escape", "file"),
                                      entry("/elsewhere/x", "file"),
                                      entry("/d/ok", "file")]})
        elif op == "Read":
            assert path == "/d/ok"
            fake.sendall(frame(msg_id, "core.fs.data", {"data": b"fine"}))
            respond(msg_id)
            break
    out, err = proc.communicate(timeout=30)
    fake.close()
    assert proc.returncode == 1, err
    assert b"bad entry" in err
    assert (tmp_path / "out" / "ok").read_bytes() == b"fine"
    assert sorted(os.listdir(tmp_path / "out")) == ["ok"]
    assert not (tmp_path / "escape").exists()


def test_shutdown():
    host, agent = spawn_agent()
    try:
        r = subprocess.run(ctl_args(host, "shutdown", "--timeout", "10s"),
                           pass_fds=(host.fileno(),), capture_output=True, timeout=30)
    finally:
        host.close()
    stop(agent)
    assert r.returncode == 0, r


# ---------------------------------------------------------------------------
# --g7: the generation-7 boot handshake, against a scripted fake agent

class FakeAgent:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def recv(self):
        """(id, flags, v, t, payload) of the next frame from agentctl."""
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    msg_id, flags = struct.unpack(">IB", self.buf[4:9])
                    env = cbor2.loads(self.buf[9:4 + n])
                    self.buf = self.buf[4 + n:]
                    p = env["p"]
                    return msg_id, flags, env["v"], env["t"], cbor2.loads(p) if p else None
            chunk = self.sock.recv(65536)
            assert chunk, "agentctl hung up"
            self.buf += chunk

    def send(self, msg_id, t, payload, flags=0):
        body = cbor2.dumps({"v": 7, "t": t, "p": cbor2.dumps(payload)})
        self.sock.sendall(struct.pack(">IIB", len(body) + 5, msg_id, flags) + body)

    def boot(self):
        msg_id, flags, v, t, p = self.recv()
        assert (msg_id, flags, v, t) == (0, 0, 7, "core.bootstrap")
        assert p == {"security_profile": "default"}
        self.send(0, "core.init.resolved", {"default_user": {"uid": 0, "gid": 0}})
        msg_id, flags, v, t, p = self.recv()
        assert (msg_id, v, t, p) == (0, 7, "core.init.ack", {})
        self.send(0, "core.ready", {"boot_time_ns": 10, "init_time_ns": 20,
                                    "ready_time_ns": 30, "agent_version": "0.6.18"})


def g7_exec(script, *args):
    host, fake_sock = socket.socketpair()
    proc = subprocess.Popen(ctl_args(host, "--g7", "exec", "--") + list(args),
                            pass_fds=(host.fileno(),), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    host.close()
    fake = FakeAgent(fake_sock)
    fake.boot()
    msg_id, flags, v, t, p = fake.recv()
    assert (flags, v, t) == (2, 7, "core.exec.request")
    script(fake, msg_id, p)
    out, err = proc.communicate(timeout=30)
    fake_sock.close()
    return proc.returncode, out, err


def test_g7_boot_and_exec():
    def script(fake, msg_id, req):
        assert req["cmd"] == "echo" and req["args"] == ["hi"]
        fake.send(msg_id, "core.exec.started", {"pid": 42})
        fake.send(msg_id, "core.exec.stdout", {"data": b"hi\n"})
        fake.send(msg_id, "core.exec.exited", {"code": 4}, flags=1)
    rc, out, err = g7_exec(script, "echo", "hi")
    assert rc == 4, err
    assert out == b"hi\n"


@pytest.mark.parametrize("kind,status", [("not_found", 127), ("permission_denied", 126),
                                         ("bad_cwd", 126)])
def test_g7_exec_failed(kind, status):
    def script(fake, msg_id, req):
        fake.send(msg_id, "core.exec.failed", {
            "kind": kind, "errno": 2, "errno_name": "ENOENT",
            "message": 'spawn "nosuch": No such file or directory (os error 2)',
            "stage": "Command::spawn"}, flags=1)
    rc, out, err = g7_exec(script, "nosuch")
    assert rc == status, err
    assert b"No such file" in err


def test_g7_refuses_seed_fs_commands():
    r = subprocess.run([AGENTCTL, "--fd", "0", "--g7", "ls", "/"], capture_output=True)
    assert r.returncode == 125 and b"--g7" in r.stderr


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes_from_the_agent_fail_cleanly(seed):
    import random
    rnd = random.Random(seed)
    junk = bytearray(rnd.randbytes(rnd.randrange(1, 3000)))
    if seed % 2:
        # A plausible frame header in front, so the envelope decoder runs.
        junk[:9] = struct.pack(">IIB", len(junk) - 4, 1, rnd.randrange(256))
    host, fake = socket.socketpair()
    fake.sendall(READY + bytes(junk))
    fake.shutdown(socket.SHUT_WR)
    r = subprocess.run(ctl_args(host, "exec", "--", "true"), pass_fds=(host.fileno(),),
                       capture_output=True, timeout=30)
    host.close()
    fake.close()
    assert r.returncode == 125, r
    assert r.stderr.startswith(b"agentctl: "), r.stderr


def cp_on_a_terminal(*args):
    """agentctl cp with stderr on a pty; returns what it printed there."""
    master, slave = pty.openpty()
    host, agent = spawn_agent()
    out = b""
    try:
        p = subprocess.Popen(ctl_args(host, "cp", *args), pass_fds=(host.fileno(),),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=slave)
        os.close(slave)
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert p.wait(timeout=60) == 0
    finally:
        os.close(master)
        host.close()
        stop(agent)
    return out


def test_progress_bar_only_on_a_terminal(tmp_path):
    src = tmp_path / "big"
    src.write_bytes(os.urandom(16 << 20))
    r = run("cp", str(src), ":%s/up1" % tmp_path)
    assert r.returncode == 0 and r.stderr == b"", r
    out = cp_on_a_terminal(str(src), ":%s/up2" % tmp_path)
    assert b"100%" in out and b"MiB/s" in out, out
    assert (tmp_path / "up2").read_bytes() == src.read_bytes()
    assert cp_on_a_terminal("-q", str(src), ":%s/up3" % tmp_path) == b""
    small = tmp_path / "small"
    small.write_bytes(b"x" * 1000)
    assert cp_on_a_terminal(str(small), ":%s/up4" % tmp_path) == b""


# ---------------------------------------------------------------------------
# a hostile guest: a scripted seed agent that speaks for the guest

def entry(path, kind="file", mode=None, size=1):
    if mode is None:
        mode = 0o40755 if kind == "dir" else 0o100644
    return {"path": path, "kind": kind, "size": size, "mode": mode, "modified": None}


class SeedFake:
    """agentctl --fd N against a scripted seed agent: crafted but
    well-formed frames.  The ready probe is consumed at start."""

    def __init__(self, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen):
        self.sock, host = socket.socketpair()
        self.proc = subprocess.Popen(ctl_args(host, *args), pass_fds=(host.fileno(),),
                                     stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=stderr, **popen)
        host.close()
        self.buf = b""
        self.sock.sendall(READY)
        probe = self.recv()
        assert probe[1] == "core.fs.request" and probe[2]["op"] == {"Stat": {"path": "/"}}

    def recv(self):
        """(id, type, payload) of agentctl's next frame, None at its EOF."""
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    msg_id = struct.unpack(">I", self.buf[4:8])[0]
                    env = cbor2.loads(self.buf[9:4 + n])
                    self.buf = self.buf[4 + n:]
                    p = env["p"]
                    return msg_id, env["t"], cbor2.loads(p) if p else None
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self.buf += chunk

    def send(self, msg_id, t, payload, flags=0):
        self.sock.sendall(frame(msg_id, t, payload, flags))

    def respond(self, msg_id, data=None, error=None):
        self.send(msg_id, "core.fs.response",
                  {"ok": error is None, "error": error, "data": data}, flags=1)

    def serve(self, tree, contents=None, until=None):
        """Answer Stat, List and Read from tree (path -> (entry, listing))
        and contents (path -> bytes) until agentctl hangs up (or until()
        says so after a request)."""
        contents = contents or {}
        while True:
            req = self.recv()
            if req is None:
                return
            msg_id, t, p = req
            if t != "core.fs.request":
                continue
            (op, args), = p["op"].items()
            path = args.get("path")
            if op == "Stat" and path in tree:
                self.respond(msg_id, {"Stat": tree[path][0]})
            elif op == "List" and path in tree:
                self.respond(msg_id, {"List": tree[path][1]})
            elif op == "Read" and path in contents:
                self.send(msg_id, "core.fs.data", {"data": contents[path]})
                self.respond(msg_id)
            else:
                self.respond(msg_id, error="No such file or directory (os error 2)")
            if until and until(op, path):
                return

    def finish(self, timeout=60):
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self.close()
        return self.proc.returncode, out, err

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tree_dir(path, mode, children):
    """A directory of the fake tree: its Stat entry and its listing."""
    return entry(path, "dir", mode), children


def test_cp_r_never_follows_or_changes_local_paths(tmp_path):
    """Issue 17.1: the guest lists as directories what is a local file and
    local symlinks; agentctl refuses them (exit 1) and changes nothing it
    did not create."""
    dst = tmp_path / "dst"
    g = dst / "g"
    g.mkdir(parents=True)
    g.chmod(0o700)
    (g / "notes.txt").write_text("mine")
    (g / "notes.txt").chmod(0o600)
    victim = tmp_path / "victim"
    victim.write_text("victim")
    victim.chmod(0o600)
    (tmp_path / "outside").mkdir()
    os.symlink("../../victim", g / "link")
    os.symlink("../../outside", g / "sub")
    os.symlink("../../victim", g / "flink")
    tree = {
        "/g": tree_dir("/g", 0o40777, [
            entry("/g/notes.txt", "dir", 0o46777), entry("/g/link", "dir", 0o40777),
            entry("/g/sub", "dir", 0o40777), entry("/g/flink", "file", 0o100777),
            entry("/g/new", "file", 0o106777), entry("/g/newdir", "dir", 0o42777)]),
        "/g/notes.txt": tree_dir("/g/notes.txt", 0o46777, [entry("/g/notes.txt/x")]),
        "/g/link": tree_dir("/g/link", 0o40777, []),
        "/g/sub": tree_dir("/g/sub", 0o40777, [entry("/g/sub/pwned", "file", 0o104777)]),
        "/g/newdir": tree_dir("/g/newdir", 0o42777, [entry("/g/newdir/f", "file", 0o104755)]),
    }
    contents = {p: b"guest" for p in ("/g/notes.txt/x", "/g/sub/pwned", "/g/flink",
                                       "/g/new", "/g/newdir/f")}
    with SeedFake("cp", "-r", ":/g", str(dst), umask=0o022) as fake:
        fake.serve(tree, contents)
        rc, out, err = fake.finish()
    assert rc == 1, err
    assert err.count(b"cannot overwrite non-directory with directory") == 3, err
    assert b"not replacing a symbolic link" in err
    assert (g / "notes.txt").read_text() == "mine"
    assert stat.S_IMODE((g / "notes.txt").lstat().st_mode) == 0o600
    assert victim.read_text() == "victim" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert os.listdir(tmp_path / "outside") == []
    assert os.readlink(g / "link") == "../../victim" and os.readlink(g / "flink") == "../../victim"
    # An existing directory is merged into; its mode stays.
    assert stat.S_IMODE(g.stat().st_mode) == 0o700
    # New files and directories: no setuid/setgid, umask applied.
    assert (g / "new").read_bytes() == b"guest"
    assert stat.S_IMODE((g / "new").stat().st_mode) == 0o755
    assert stat.S_IMODE((g / "newdir").stat().st_mode) == 0o755
    assert stat.S_IMODE((g / "newdir" / "f").stat().st_mode) == 0o755
    assert sorted(os.listdir(g)) == ["flink", "link", "new", "newdir", "notes.txt", "sub"]


@pytest.mark.parametrize("preserve,umask,want", [(False, 0o077, 0o700), (False, 0o022, 0o755),
                                                 (True, 0o077, 0o6777)])
def test_cp_download_mode_loses_setuid_and_gets_umask(tmp_path, preserve, umask, want):
    """Issue 11 item 11: guest modes are not trusted unless -p."""
    tree = {"/f": (entry("/f", "file", 0o106777, size=4), None),
            "/d": tree_dir("/d", 0o46777, [entry("/d/f", "file", 0o106777)])}
    contents = {"/f": b"data", "/d/f": b"data"}
    opts = ["-p"] if preserve else []
    with SeedFake("cp", *opts, ":/f", str(tmp_path / "f"), umask=umask) as fake:
        fake.serve(tree, contents)
        rc, out, err = fake.finish()
    assert rc == 0, err
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == want
    with SeedFake("cp", "-r", *opts, ":/d", str(tmp_path / "d"), umask=umask) as fake:
        fake.serve(tree, contents)
        rc, out, err = fake.finish()
    assert rc == 0, err
    assert stat.S_IMODE((tmp_path / "d" / "f").stat().st_mode) == want
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == (want if preserve else want)


def no_controls(data, allow=b"\n"):
    """True when data holds no C0 (other than allow), DEL, C1 or invalid
    UTF-8: nothing a terminal would act on."""
    text = data.decode("utf-8", errors="replace")
    bad = [c for c in text if (ord(c) < 0x20 and c.encode() not in allow) or
           0x7f <= ord(c) <= 0x9f or c == "\ufffd"]
    return not bad


EVIL_NAMES = ["a\x1b]0;owned\x07b", "c\nforged line", "d\x9b2Jm", "e\x7f\x08", "fine-\u00e9\u20ac"]


def test_ls_and_stat_escape_guest_names():
    """Issue 17.2: names reach the terminal with control characters shown
    as '?'; --json is unchanged."""
    listing = [entry("/d/" + n) for n in EVIL_NAMES]
    tree = {"/d": tree_dir("/d", 0o40755, listing),
            "/asked": (entry("/\x1b]52;c;ZXZpbA==\x07osc52"), None)}
    with SeedFake("ls", "/d") as fake:
        fake.serve(tree)
        rc, out, err = fake.finish()
    assert rc == 0, err
    assert no_controls(out), out
    lines = out.decode().splitlines()
    assert len(lines) == len(EVIL_NAMES), out
    assert lines[0].endswith(" a?]0;owned?b") and lines[1].endswith(" c?forged line")
    assert lines[4].endswith(" fine-\u00e9\u20ac"), "valid UTF-8 must stay as it is"
    with SeedFake("ls", "--json", "/d") as fake:
        fake.serve(tree)
        rc, out, err = fake.finish()
    assert sorted(e["name"] for e in json.loads(out)) == sorted(EVIL_NAMES)
    with SeedFake("stat", "/asked") as fake:
        fake.serve(tree)
        rc, out, err = fake.finish()
    assert rc == 0 and no_controls(out), out
    assert out.decode().rstrip("\n").endswith(" /asked"), "stat shows the path asked for"


def test_errors_and_warnings_escape_guest_text(tmp_path):
    evil = "No such file\x1b[2J\x1b]52;c;ZXZpbA==\x07\nagentctl: forged"
    with SeedFake("stat", "/x") as fake:
        msg_id, t, p = fake.recv()
        fake.respond(msg_id, error=evil)
        rc, out, err = fake.finish()
    assert rc == 1 and no_controls(err), err
    assert err.count(b"\n") == 1 and b"forged" in err
    # a warning (skipped symlink) and an error naming guest paths
    tree = {"/d": tree_dir("/d", 0o40755, [entry("/d/l\x1b[31m", "symlink"),
                                            entry("/d/../\x1b[1mx", "file")])}
    with SeedFake("cp", "-r", ":/d", str(tmp_path / "out")) as fake:
        fake.serve(tree)
        rc, out, err = fake.finish()
    assert rc == 1 and b"skipping" in err and b"bad entry" in err, err
    assert no_controls(err), err


def test_progress_bar_escapes_guest_name(tmp_path):
    name = "\x1b]0;title\x07\x1b[2Jbig"
    tree = {"/d": tree_dir("/d", 0o40755, [entry("/d/" + name, "file", size=16 << 20)])}
    master, slave = pty.openpty()
    fake = SeedFake("cp", "-r", ":/d", str(tmp_path / "out"), stderr=slave)
    os.close(slave)
    try:
        fake.serve(tree, {"/d/" + name: b"x" * 1000})
        rc, out, err = fake.finish()
        shown = b""
        while select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        fake.close()
        os.close(master)
    assert rc == 0
    assert b"?]0;title??[2Jbig" in shown, shown
    assert no_controls(shown, allow=b"\r\n"), shown


def wait_for(cond, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.02)


def temp_files(d):
    return [p for p in os.listdir(d) if ".agentctl-" in p]


@pytest.mark.parametrize("how", ["drop", "malformed", "SIGINT", "SIGTERM", "SIGHUP", "idle"])
def test_interrupted_download_leaves_nothing(tmp_path, how):
    """Issue 17.3: the partial temporary file goes on every way out."""
    out = tmp_path / "out"
    out.mkdir()
    args = ["--idle-timeout", "1s"] if how == "idle" else []
    with SeedFake(*args, "cp", ":/f", str(out / "f")) as fake:
        msg_id, t, p = fake.recv()                  # Stat
        fake.respond(msg_id, {"Stat": entry("/f", size=10 << 20)})
        msg_id, t, p = fake.recv()                  # Read
        assert p["op"] == {"Read": {"path": "/f"}}
        fake.send(msg_id, "core.fs.data", {"data": b"g" * 65536})

        def partial():
            tmp = temp_files(out)
            return tmp and os.path.getsize(out / tmp[0]) == 65536
        wait_for(partial, "the partial temporary file")
        if how == "drop":
            fake.sock.shutdown(socket.SHUT_RDWR)
        elif how == "malformed":
            fake.sock.sendall(struct.pack(">IIB", 6, msg_id, 0) + b"\xff")
        elif how.startswith("SIG"):
            fake.proc.send_signal(getattr(signal, how))
        rc, _, err = fake.finish()
    if how.startswith("SIG"):
        assert rc == -getattr(signal, how), err
    else:
        assert rc == 125, err
    assert os.listdir(out) == [], err


def test_idle_timeout_gives_up_with_125():
    """Issue 17.4: an agent that answers the probe and then nothing."""
    with SeedFake("--idle-timeout", "1s", "ls", "/") as fake:
        assert fake.recv()[1] == "core.fs.request"      # List, never answered
        rc, out, err = fake.finish()
    assert rc == 125, err
    assert b"did not answer for 1.0 s" in err


def test_idle_timeout_ignores_frames_for_other_ids():
    """A trickle of frames for another id is no answer."""
    with SeedFake("--idle-timeout", "1s", "cat", "/f") as fake:
        msg_id, t, p = fake.recv()
        assert p["op"] == {"Read": {"path": "/f"}}
        deadline = time.monotonic() + 30
        try:
            while fake.proc.poll() is None and time.monotonic() < deadline:
                fake.send(msg_id + 1000, "core.fs.data", {"data": b"x"})
                time.sleep(0.1)
        except OSError:
            pass
        assert fake.proc.poll() is not None, "no idle timeout within 30 s"
        rc, out, err = fake.finish()
    assert rc == 125 and out == b"", err
    assert b"did not answer" in err


def test_idle_timeout_on_an_upload_the_agent_never_takes(tmp_path):
    src = tmp_path / "big"
    src.write_bytes(b"u" * (16 << 20))
    with SeedFake("--idle-timeout", "1s", "cp", "-q", str(src), ":/dst") as fake:
        msg_id, t, p = fake.recv()                  # Stat /dst: a directory
        assert p["op"] == {"Stat": {"path": "/dst"}}
        fake.respond(msg_id, {"Stat": entry("/dst", "dir")})
        # ... and then the fake reads nothing more: agentctl's writes stall.
        rc, out, err = fake.finish()
    assert rc == 125, err
    assert b"did not answer" in err


def test_download_replaces_the_file_atomically(tmp_path):
    """A reader of the old file keeps it whole, and the destination never
    holds part of the new content (fails when agentctl writes in place)."""
    dst = tmp_path / "f"
    dst.write_bytes(b"old content\n")
    old_ino = dst.stat().st_ino
    reader = os.open(dst, os.O_RDONLY)
    try:
        with SeedFake("cp", ":/f", str(dst)) as fake:
            msg_id, t, p = fake.recv()
            fake.respond(msg_id, {"Stat": entry("/f", mode=0o100644, size=20)})
            msg_id, t, p = fake.recv()
            fake.send(msg_id, "core.fs.data", {"data": b"new part 1|"})

            def written():
                tmp = temp_files(tmp_path)
                return (tmp and os.path.getsize(tmp_path / tmp[0]) == 11) or \
                    dst.read_bytes() != b"old content\n"
            wait_for(written, "the first chunk to be written")
            assert dst.read_bytes() == b"old content\n", "the destination was written in place"
            fake.send(msg_id, "core.fs.data", {"data": b"new part 2"})
            fake.respond(msg_id)
            rc, out, err = fake.finish()
        assert rc == 0, err
        assert dst.read_bytes() == b"new part 1|new part 2"
        assert dst.stat().st_ino != old_ino
        assert os.pread(reader, 100, 0) == b"old content\n"
        assert temp_files(tmp_path) == []
    finally:
        os.close(reader)



def unread(sock):
    """Bytes sent on a Unix socket that the peer has not read yet."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


def test_memory_bounded_against_endless_frames():
    """agentctl's memory against an agent sending maximal frames without
    end: the frame reader holds one frame plus one read chunk, the decode
    arena at most ARENA_LIMIT for one frame, nothing is kept across frames.
    400 MiB of data frames and listings for other ids and for the file
    being read must stay within that bound."""
    frame_max, read_chunk, arena_limit = 4194304 + 4, 65536, 32 << 20
    bound_kib = (frame_max + read_chunk + arena_limit + (2 << 20)) // 1024
    data = frame(0, "core.fs.data", {"data": b"z" * (4194304 - 200)})
    listing = cbor2.dumps({"ok": True, "error": None,
                           "data": {"List": [entry("/%d" % i) for i in range(65000)]}})
    with SeedFake("cat", "/f", stdout=subprocess.DEVNULL) as fake:
        msg_id, t, p = fake.recv()
        for i in range(100):
            other = struct.pack(">I", msg_id + 1 + i)
            fake.sock.sendall(data[:4] + (struct.pack(">I", msg_id) if i % 2 else other) +
                              data[8:])
            if i % 25 == 0:
                body = cbor2.dumps({"v": 1, "t": "core.fs.response", "p": listing})
                fake.sock.sendall(struct.pack(">IIB", len(body) + 5, msg_id + 500 + i, 1) + body)
        assert len(listing) < 4194304 - 100
        # Everything above was read once agentctl answers nothing more:
        # a final data frame for our id is consumed only after the rest.
        fake.send(msg_id, "core.fs.data", {"data": b"last"})
        wait_for(lambda: unread(fake.sock) == 0, "agentctl to read every frame")
        hwm = vm_hwm_kib(fake.proc.pid)
        fake.respond(msg_id)
        rc, out, err = fake.finish()
    assert rc == 0, err
    assert hwm <= bound_kib, "agentctl peaked at %d KiB (bound %d KiB)" % (hwm, bound_kib)


def test_sighup_is_forwarded_and_third_sigint_kills():
    host, agent = spawn_agent()
    p = None
    try:
        p = exec_until_up(host, 'trap "echo got-hup; exit 9" HUP; echo up; '
                                'while :; do sleep 0.05; done')
        p.send_signal(signal.SIGHUP)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 9, err
        assert out == b"got-hup\n"

        # A command that shrugs off SIGINT: the third one is SIGKILL.
        p = exec_until_up(host, 'trap "echo int" INT; echo up; while :; do sleep 0.05; done')
        for _ in range(2):
            p.send_signal(signal.SIGINT)
            assert p.stdout.readline() == b"int\n"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 128 + signal.SIGKILL, err
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        host.close()
        stop(agent)


def test_timeout_gives_up_when_the_kill_is_never_reported():
    """--timeout sends SIGKILL; an agent that never reports the exit is
    given up on after the grace period (10 s): 124, not a hang."""
    with SeedFake("exec", "--timeout", "300ms", "--", "sleep", "300") as fake:
        msg_id, t, p = fake.recv()
        assert t == "core.exec.request" and p["cmd"] == "sleep"
        fake.send(msg_id, "core.exec.started", {"pid": 4242})
        signals = []
        while True:
            m = fake.recv()
            if m is None:
                break
            if m[1] == "core.exec.signal":
                signals.append(m[2]["signal"])
        rc, out, err = fake.finish()
    assert rc == 124, err
    assert signals == [9]
    assert b"timed out" in err


def test_tty_mode_sends_eot_at_end_of_piped_stdin():
    """-t with a pipe as stdin: at its end the remote terminal gets ^D,
    so a reader of the PTY sees end-of-file (an empty frame would be
    ignored by a PTY session and the command would wait forever)."""
    r = run("exec", "-t", "--", "sh", "-c", "cat >/dev/null; echo cat-ended",
            input=b"line one\nline two\n", timeout=60)
    assert r.returncode == 0, r
    assert b"cat-ended" in r.stdout


def test_answer_without_its_entry_is_an_error():
    """ls of a path whose List fails falls back to Stat; a Stat answered
    "ok" without an entry must not crash agentctl (it did: a NULL path)."""
    with SeedFake("ls", "/x") as fake:
        msg_id, t, p = fake.recv()
        assert p["op"] == {"List": {"path": "/x"}}
        fake.respond(msg_id, error="Not a directory (os error 20)")
        msg_id, t, p = fake.recv()
        assert p["op"] == {"Stat": {"path": "/x"}}
        fake.respond(msg_id)                            # ok, but no entry
        rc, out, err = fake.finish()
    assert rc == 1, err
    assert b"/x:" in err


def test_frames_that_never_end_a_request_fail():
    """Data frames on a Stat's id never end it: a protocol error (125), not
    an endless wait that the idle timeout would keep extending."""
    with SeedFake("stat", "/x") as fake:
        msg_id, t, p = fake.recv()
        deadline = time.monotonic() + 30
        try:
            while fake.proc.poll() is None and time.monotonic() < deadline:
                fake.send(msg_id, "core.fs.data", {"data": b"x"})
        except OSError:
            pass
        assert fake.proc.poll() is not None, "agentctl kept taking frames for 30 s"
        rc, out, err = fake.finish()
    assert rc == 125, err
    assert b"core.fs.data in answer to a file request" in err
