"""Exec sessions (SPEC 5) driven through the real agentd binary."""
import hashlib
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest

from conftest import SANITIZED
from testlib import output_memory_bound_kib, read_status

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for user switching")
MiB = 1 << 20


def started_first(res):
    return res.frames[0] == "core.exec.started"


def wait_for(cond, what, timeout=30, interval=0.01):
    """Poll cond() until it returns a true value; that value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(interval)


def proc_status(pid):
    """/proc/PID/status as a dict, or None once the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            return dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
    except (FileNotFoundError, ProcessLookupError):
        return None


def gone(pid):
    return proc_status(pid) is None


def wait_blocked_writing(pid):
    """Until pid, a cat of /dev/zero or of a cached file (it can sleep only
    in its write to stdout), sleeps for 20 polls in a row: the agent stopped
    reading its pipe (a reader merely slower than the writer lets it run now
    and then).  /proc/PID/wchan would say pipe_write; kernels may hide it."""
    seen = [0]

    def blocked():
        st = proc_status(pid)
        seen[0] = seen[0] + 1 if st and st["State"].split()[0] == "S" else 0
        return seen[0] >= 20
    wait_for(blocked, "pid %d blocked writing" % pid)


# ---- basics ------------------------------------------------------------------

def test_echo(agent):
    res = agent.run("echo", "hello", "world")
    assert res.stdout == b"hello world\n"
    assert res.stderr == b""
    assert res.code == 0 and res.signal is None
    assert started_first(res) and res.frames[-1] == "core.exec.exited"
    assert res.pid > 0


def test_stderr_separate(agent):
    res = agent.run("sh", "-c", "echo out; echo err >&2; exit 3")
    assert (res.stdout, res.stderr, res.code) == (b"out\n", b"err\n", 3)


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_codes(agent, code):
    res = agent.run("sh", "-c", "exit %d" % code)
    assert res.code == code
    assert "signal" not in res.exited


def test_killed_by_sigkill(agent):
    i = agent.exec_start("sleep", ["100"])
    assert agent.recv(msg_id=i).t == "core.exec.started"
    agent.signal(i, 9)
    res = agent.collect(i)
    assert res.code == -1 and res.signal == 9


def test_killed_by_own_signal(agent):
    res = agent.run("sh", "-c", "kill -TERM $$")
    assert res.code == -1 and res.signal == 15


@pytest.mark.parametrize("tty", [False, True])
def test_command_not_found(agent, tty):
    res = agent.run("no-such-command-agentd-test", tty=tty)
    assert res.code == -1
    assert res.frames == ["core.exec.exited"]  # no started


def test_not_executable(agent, tmp_path):
    f = tmp_path / "plain"
    f.write_text("#!/bin/sh\necho hi\n")
    res = agent.run(str(f))
    assert res.code == -1 and res.frames == ["core.exec.exited"]


@pytest.mark.parametrize("tty", [False, True])
def test_bad_cwd(agent, tty):
    res = agent.run("true", cwd="/nonexistent-agentd-dir", tty=tty)
    assert res.code == -1 and res.frames == ["core.exec.exited"]


def test_cwd(agent, tmp_path):
    res = agent.run("pwd", cwd=str(tmp_path))
    assert res.stdout == str(tmp_path).encode() + b"\n"


@pytest.mark.parametrize("tty", [False, True])
def test_unknown_user(agent, tty):
    res = agent.run("true", user="no_such_user_agentd", tty=tty)
    assert res.code == -1 and res.frames == ["core.exec.exited"]


@pytest.mark.parametrize("spec", ["", " ", ":", "nobody:", "nobody:no_such_group_agentd"])
def test_bad_user_specs(agent, spec):
    res = agent.run("id", "-u", user=spec)
    if spec.strip() == "":
        assert res.code == 0  # blank = no user switch
    else:
        assert res.code == -1 and res.frames == ["core.exec.exited"]


# ---- user, env, PATH --------------------------------------------------------

@ROOT_ONLY
def test_user_by_name_sets_ids_groups_and_home(agent):
    res = agent.run("sh", "-c", "id -u; id -g; id -G; echo $HOME", user="nobody")
    assert res.code == 0, res
    uid, gid, groups, home = res.stdout.decode().split("\n")[:4]
    assert (uid, gid) == ("65534", "65534")
    assert "0" not in groups.split()
    assert home == "/nonexistent"


@ROOT_ONLY
def test_user_numeric_and_group(agent):
    res = agent.run("sh", "-c", "id -u; id -g; id -G", user=" 4321 : 99 ")
    assert res.code == 0, res
    assert res.stdout.decode().split() == ["4321", "99", "99"]


@ROOT_ONLY
def test_home_from_request_env_wins(agent):
    res = agent.run("sh", "-c", "echo $HOME", user="nobody", env=["HOME=/custom"])
    assert res.stdout == b"/custom\n"


@ROOT_ONLY
def test_msb_user_default(spawn_agent):
    env = dict(os.environ, MSB_USER="nobody")
    a = spawn_agent(env=env)
    assert a.run("id", "-u").stdout == b"65534\n"
    # an explicit user wins over MSB_USER
    assert a.run("id", "-u", user="0").stdout == b"0\n"


def test_env_overlay_and_path_rule(spawn_agent, runtime_dir):
    env = dict(os.environ, PATH="/usr/bin:/bin", AGENT_VAR="agent")
    a = spawn_agent(env=env)
    scripts = str(runtime_dir / "scripts")
    res = a.run("sh", "-c", 'echo "$FOO|$AGENT_VAR|$PATH|$NOEQ"',
                env=["FOO=one", "FOO=two", "NOEQ", "AGENT_VAR=over=ridden"])
    assert res.stdout.decode() == "two|over=ridden|%s:/usr/bin:/bin|\n" % scripts
    # a PATH in the request gets the scripts dir prepended
    res = a.run("sh", "-c", 'echo "$PATH"', env=["PATH=/bin:/usr/bin"])
    assert res.stdout.decode() == "%s:/bin:/usr/bin\n" % scripts


def test_default_path_when_agent_has_none(spawn_agent, runtime_dir):
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    a = spawn_agent(env=env)
    res = a.run("/bin/sh", "-c", 'echo "$PATH"')
    assert res.stdout.decode() == "%s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" % (
        runtime_dir / "scripts")


def test_scripts_dir_program_lookup(agent, runtime_dir):
    script = runtime_dir / "scripts" / "hello-agentd"
    script.write_text("#!/bin/sh\necho from-scripts \"$@\"\n")
    script.chmod(0o755)
    res = agent.run("hello-agentd", "x")
    assert res.stdout == b"from-scripts x\n" and res.code == 0


# ---- rlimits ------------------------------------------------------------------

RLIMITS = {
    # name: (/proc/self/limits row, soft, hard)
    "cpu": ("Max cpu time", 1000, 2000),
    "fsize": ("Max file size", 1 << 30, 1 << 31),
    "data": ("Max data size", 1 << 33, 1 << 34),
    "stack": ("Max stack size", 4 * MiB, 16 * MiB),
    "core": ("Max core file size", 0, 1 << 20),
    "rss": ("Max resident set", 1 << 30, 1 << 31),
    "nproc": ("Max processes", 5000, 6000),
    "nofile": ("Max open files", 100, 200),
    "memlock": ("Max locked memory", 1 << 16, 1 << 17),
    "as": ("Max address space", 1 << 34, 1 << 35),
    "locks": ("Max file locks", 300, 400),
    "sigpending": ("Max pending signals", 500, 600),
    "msgqueue": ("Max msgqueue size", 8192, 16384),
    "nice": ("Max nice priority", 5, 10),
    "rtprio": ("Max realtime priority", 1, 2),
    "rttime": ("Max realtime timeout", 100000, 200000),
}


RLIMIT_NUMBERS = ["cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile",
                  "memlock", "as", "locks", "sigpending", "msgqueue", "nice",
                  "rtprio", "rttime"]  # SPEC 5.6


@ROOT_ONLY
@pytest.mark.parametrize("name", sorted(RLIMITS))
def test_rlimit_applied(agent, name):
    row, soft, hard = RLIMITS[name]
    # Without CAP_SYS_RESOURCE a hard limit cannot be raised: stay below
    # the agent's own (inherited) limits.
    _, cur_hard = resource.getrlimit(RLIMIT_NUMBERS.index(name))
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    res = agent.run("cat", "/proc/self/limits", rlimits=[(name, soft, hard)])
    assert res.code == 0, res
    line = [l for l in res.stdout.decode().splitlines() if l.startswith(row)]
    assert len(line) == 1, res.stdout
    fields = line[0][len(row):].split()
    assert (int(fields[0]), int(fields[1])) == (soft, hard)


def test_rlimit_unlimited_and_unknown_name(agent):
    inf = (1 << 64) - 1
    res = agent.run("cat", "/proc/self/limits",
                    rlimits=[("no_such_limit", 1, 1), ("core", inf, inf)])
    assert res.code == 0, res
    assert re.search(r"Max core file size\s+unlimited\s+unlimited", res.stdout.decode())


def test_rlimit_failure_is_spawn_failure(agent):
    res = agent.run("true", rlimits=[("nofile", 200, 100)])  # soft > hard
    assert res.code == -1 and res.frames == ["core.exec.exited"]


# ---- stdin ----------------------------------------------------------------------

def send_stdin_chunks(agent, i, data, chunk=MiB, eof=True):
    for off in range(0, len(data), chunk):
        agent.stdin(i, data[off:off + chunk])
    if eof:
        agent.stdin(i, b"")


def test_stdin_16mib_through_sha256sum(agent):
    data = os.urandom(16 * MiB)
    i = agent.exec_start("sh", ["-c", "cat | sha256sum"])
    send_stdin_chunks(agent, i, data)
    res = agent.collect(i)
    assert res.code == 0
    assert res.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_stdin_echoed_back_by_cat(agent):
    # Both directions at once: the host writes from a thread while reading.
    data = os.urandom(12 * MiB + 12345)
    i = agent.exec_start("cat")
    t = threading.Thread(target=send_stdin_chunks, args=(agent, i, data, 300000))
    t.start()
    res = agent.collect(i, timeout=120)
    t.join()
    assert res.code == 0 and res.stdout == data


def test_stdin_eof(agent):
    assert agent.run("cat", stdin=b"").stdout == b""
    res = agent.run("sh", "-c", "read x; echo got:$x; cat; echo end", stdin=b"line1\nrest")
    assert res.stdout == b"got:line1\nrestend\n"


def test_stdin_after_eof_dropped_and_before_started(agent):
    i = agent.new_id()
    # stdin may arrive right behind the request, before started is seen
    agent.send_raw(b"".join([]))
    agent.exec_start("cat", msg_id=i)
    agent.stdin(i, b"abc")
    agent.stdin(i, b"")
    agent.stdin(i, b"dropped")
    res = agent.collect(i)
    assert res.stdout == b"abc" and res.code == 0


def test_stdin_to_exited_child_is_harmless(agent):
    i = agent.exec_start("sh", ["-c", "exec 0<&-; sleep 0.2; echo done"])
    agent.stdin(i, b"x" * 300000)
    res = agent.collect(i)
    assert res.stdout == b"done\n" and res.code == 0
    assert agent.run("echo", "ok").stdout == b"ok\n"


@pytest.mark.slow
def test_child_never_reading_stdin_stalls_nothing(agent):
    """9 MiB queued for a child that never reads: the port pauses, the agent
    gives up on that stdin after 5 s, the other session and shutdown go on."""
    stuck = agent.exec_start("sleep", ["100"])
    assert agent.recv(msg_id=stuck).t == "core.exec.started"
    t = threading.Thread(target=send_stdin_chunks,
                         args=(agent, stuck, b"z" * (9 * MiB), MiB, False))
    t.start()
    t.join(timeout=60)
    assert not t.is_alive()
    assert agent.run("echo", "alive", timeout=30).stdout == b"alive\n"
    agent.shutdown()
    res = agent.collect(stuck, timeout=10)
    assert res.signal == 15
    assert agent.proc.wait(timeout=10) == 0


# ---- output -------------------------------------------------------------------

@pytest.mark.slow
def test_stdout_256mib_checksum(agent, tmp_path, figures):
    size = 256 * MiB
    src = tmp_path / "big"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        for _ in range(size // (4 * MiB)):
            block = os.urandom(4 * MiB)
            h.update(block)
            f.write(block)
    got = hashlib.sha256()
    count = [0]

    def sink(b):
        got.update(b)
        count[0] += len(b)

    t0 = time.monotonic()
    i = agent.exec_start("cat", [str(src)])
    res = agent.collect(i, timeout=600, sink=sink)
    dt = time.monotonic() - t0
    assert res.code == 0
    assert count[0] == size and got.hexdigest() == h.hexdigest()
    figures.record("exec stdout 256 MiB through the socketpair", size / dt / 1e6, "MB/s")


@pytest.mark.parametrize("tty", [False, True])
def test_tail_then_exit_loses_nothing(agent, tty):
    script = "head -c 200000 /dev/zero | tr '\\0' x; printf END"
    for _ in range(10 if not SANITIZED else 3):
        res = agent.run("sh", "-c", script, tty=tty)
        assert res.code == 0
        assert res.stdout == b"x" * 200000 + b"END"


def test_many_small_writes_then_exit(agent):
    res = agent.run("sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo $i; i=$((i+1)); done")
    assert res.stdout == b"".join(b"%d\n" % i for i in range(2000))



def test_slow_host_bounded_memory_no_loss(agent, tmp_path, figures):
    size = 64 * MiB
    src = tmp_path / "data"
    data = os.urandom(size)
    src.write_bytes(data)
    pid = agent.proc.pid
    before = read_status(pid, "VmHWM")
    i = agent.exec_start("cat", [str(src)])
    f = agent.recv(msg_id=i)
    assert f.t == "core.exec.started"
    # the host reads nothing more until the agent stopped reading cat
    wait_blocked_writing(f.p["pid"])
    stalled = read_status(pid, "VmHWM")
    res = agent.collect(i, timeout=300)
    after = read_status(pid, "VmHWM")
    assert res.code == 0 and res.stdout == data
    # The agent holds at most its output bound (plus one frame) whatever
    # the child writes: far below the 64 MiB the child produced.
    if not SANITIZED:  # ASan's quarantine keeps freed memory resident
        bound = output_memory_bound_kib()  # from agent.h, see testlib
        assert stalled - before <= bound, (before, stalled, bound)
        assert after - before <= bound, (before, after, bound)
        figures.record("agent peak RSS (VmHWM) in the slow-reader test", after, "kB")


def read_until(agent, i, needle, timeout=10):
    """stdout of session i up to needle (frames of other types fail)."""
    out = b""
    while needle not in out:
        f = agent.recv(msg_id=i, timeout=timeout)
        assert f.t == "core.exec.stdout", f
        out += f.p["data"]
    return out


# ---- PTY ------------------------------------------------------------------------

def test_pty_output(agent):
    res = agent.run("sh", "-c", "echo hi; echo err >&2", tty=True)
    assert res.code == 0
    assert res.stdout == b"hi\r\nerr\r\n"
    assert "core.exec.stderr" not in res.frames


def test_pty_tty_path(agent):
    res = agent.run("tty", tty=True)
    assert res.code == 0
    assert res.stdout.startswith(b"/dev/pts/"), res


def test_pty_initial_size_and_resize(agent):
    i = agent.exec_start("sh", ["-c", "stty size; read x; stty size"], tty=True, rows=33, cols=77)
    assert agent.recv(msg_id=i).t == "core.exec.started"
    first = read_until(agent, i, b"\n")
    assert first == b"33 77\r\n"
    agent.resize(i, 50, 132)
    agent.stdin(i, b"go\r")
    res = agent.collect(i)
    assert res.code == 0
    assert res.stdout.rstrip().endswith(b"50 132")


def test_pty_ctrl_c_kills_foreground_job(agent):
    i = agent.exec_start("sleep", ["100"], tty=True)
    assert agent.recv(msg_id=i).t == "core.exec.started"
    agent.stdin(i, b"\x03")
    res = agent.collect(i, timeout=10)
    assert res.code == -1 and res.signal == 2


def test_pty_eof_ignored_ctrl_d_ends_input(agent):
    i = agent.exec_start("cat", tty=True)
    agent.stdin(i, b"")       # ignored: the terminal stays open
    agent.stdin(i, b"abc\r")
    agent.stdin(i, b"\x04")   # ^D at line start: EOF for cat
    res = agent.collect(i, timeout=10)
    assert res.code == 0
    assert res.stdout.count(b"abc") == 2  # echo + cat


# ---- process hygiene ------------------------------------------------------------

@pytest.mark.parametrize("tty", [False, True])
def test_child_gets_only_fds_0_1_2(agent, tty):
    # A live PTY session must not leak its master into later children.
    other = agent.exec_start("sleep", ["100"], tty=True)
    assert agent.recv(msg_id=other).t == "core.exec.started"
    res = agent.run("ls", "-l", "/proc/self/fd", tty=tty)
    assert res.code == 0
    fds = sorted(int(m) for m in re.findall(rb"\s(\d+) ->", res.stdout))
    # ls itself has the directory it lists open as the next free fd
    assert fds == [0, 1, 2, 3], res.stdout
    assert re.search(rb"\s3 -> /proc/\d+/fd", res.stdout)
    agent.signal(other, 9)
    assert agent.collect(other).signal == 9


@pytest.mark.parametrize("tty", [False, True])
def test_child_signal_mask_and_dispositions_clean(agent, tty):
    res = agent.run("grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status", tty=tty)
    lines = res.stdout.decode().split()
    assert lines == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"], res


def test_child_is_session_leader(agent):
    res = agent.run("sh", "-c", "cut -d' ' -f6,8 /proc/$$/stat; echo $$")
    sid, _ = res.stdout.decode().split("\n")[0].split()
    assert sid == res.stdout.decode().split("\n")[1]


def group_members(pgid):
    pids = []
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        if int(st[st.rindex(")") + 2:].split()[2]) == pgid:
            pids.append(int(d))
    return pids


def test_signal_goes_to_process_group(agent):
    i = agent.exec_start("sh", ["-c", "sleep 100 & exec sleep 100"])
    f = agent.recv(msg_id=i)
    assert f.t == "core.exec.started"
    pid = f.p["pid"]
    # both sleeps run: sh forked the background one and exec'd the other
    wait_for(lambda: len(group_members(pid)) == 2 and
             (proc_status(pid) or {}).get("Name", "").strip() == "sleep",
             "both sleeps in the group")
    agent.signal(i, 15)
    # exited needs stdout EOF, which needs the background sleep dead too
    res = agent.collect(i, timeout=10)
    assert res.code == -1 and res.signal == 15


def test_signal_out_of_range_ignored(agent):
    i = agent.exec_start("sleep", ["100"])
    assert agent.recv(msg_id=i).t == "core.exec.started"
    for sig in (0, -1, 32, 64, 1000):
        agent.signal(i, sig)
    assert agent.run("true").code == 0  # the agent still serves
    agent.signal(i, 9)
    assert agent.collect(i).signal == 9


def test_background_holder_keeps_session_until_it_closes(agent):
    res = agent.run("sh", "-c", "(sleep 0.5; echo late) & echo early")
    assert res.stdout == b"early\nlate\n" and res.code == 0


# ---- concurrency, zombies, fds -------------------------------------------------

def test_200_concurrent_sessions(agent):
    ids = {}
    for n in range(200):
        ids[agent.exec_start("sh", ["-c", "echo %d; sleep 0.3; exit %d" % (n, n % 256)])] = n
    for i, n in ids.items():
        res = agent.collect(i, timeout=120)
        assert res.code == n % 256 and res.stdout == b"%d\n" % n


def agent_children_zombies(pid):
    zombies = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] == "Z":
            zombies += 1
    return zombies


@pytest.mark.slow
def test_2000_sequential_no_zombies_no_fd_growth(agent):
    pid = agent.proc.pid
    for _ in range(20):
        assert agent.run("true").code == 0
    fds_before = sorted(os.listdir("/proc/%d/fd" % pid))
    for _ in range(2000):
        assert agent.run("true").code == 0
    # orphaned grandchildren are reaped too (a zombie stays in /proc)
    res = agent.run("sh", "-c", "sleep 0.1 >/dev/null 2>&1 </dev/null & echo $!")
    orphan = int(res.stdout)
    wait_for(lambda: gone(orphan), "the orphan reaped")
    assert agent_children_zombies(pid) == 0
    assert sorted(os.listdir("/proc/%d/fd" % pid)) == fds_before


def test_child_memory_released_after_exec_and_failure(agent):
    """Each child runs on a stack and a copy of its spawn that the agent
    maps for it; they are unmapped once the child exec'd or failed (a
    leak would be 68 KiB and more per exec)."""
    pid = agent.proc.pid
    for _ in range(5):
        agent.run("true")
    before = read_status(pid, "VmSize")
    for _ in range(80):
        assert agent.run("true").code == 0
        assert agent.run("no-such-command-agentd-test").code == -1
        assert agent.run("true", cwd="/nonexistent-agentd-dir").code == -1
    assert read_status(pid, "VmSize") - before < 2048, (before, read_status(pid, "VmSize"))


def test_round_trip_true(agent, figures):
    times = []
    for _ in range(200 if not SANITIZED else 20):
        t0 = time.monotonic()
        res = agent.run("true")
        times.append(time.monotonic() - t0)
        assert res.code == 0
    if not SANITIZED:
        figures.record("median round trip of `true` (request to exited, 200 runs)",
                       statistics.median(times) * 1000, "ms")


def test_pty_leader_closing_its_fds_is_not_hung_up(agent):
    # The slave is closed (master reads EIO) before the leader exits: the
    # agent must not hang up the terminal (SIGHUP) under the leader's feet.
    res = agent.run("sh", "-c", "echo bye; exec 0<&- 1>&- 2>&-; sleep 0.3; exit 7", tty=True)
    assert res.stdout == b"bye\r\n"
    assert res.code == 7 and res.signal is None


IGNORING_WRAPPER = r'''#!/usr/bin/python3
# Start agentd with every signal it may inherit ignored, libc-internal ones
# (32-34) included, through the raw rt_sigaction syscall.
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
act = (ctypes.c_ulong * 4)(1, 0, 0, 0)  # SIG_IGN, flags, restorer, mask
for sig in list(range(1, 65)):
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        libc.syscall(13, sig, ctypes.byref(act), None, 8)  # rt_sigaction
os.execv(sys.argv[1], sys.argv[1:])
'''


@pytest.mark.parametrize("tty", [False, True])
def test_inherited_ignored_signals_reset(spawn_agent, tmp_path, monkeypatch, tty):
    wrapper = tmp_path / "ignore-all"
    wrapper.write_text(IGNORING_WRAPPER)
    wrapper.chmod(0o755)
    monkeypatch.setenv("AGENTD_WRAPPER", str(wrapper))
    a = spawn_agent()
    res = a.run("grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status", tty=tty)
    assert res.stdout.decode().split() == ["SigBlk:", "0000000000000000",
                                           "SigIgn:", "0000000000000000"], res
    # an inherited SIG_IGN for SIGCHLD would make children vanish unreaped
    assert a.run("sh", "-c", "exit 5").code == 5


# ---- hardening (issue 11) ------------------------------------------------------

STOPPER = r'''
import os, signal, sys, time
agent, comm = sys.argv[1], sys.argv[2]
def status(pid):
    with open("/proc/%s/status" % pid) as f:
        return dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
seen, children = set(), set()
print("ready", flush=True)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    for d in os.listdir("/proc"):
        if d.isdigit() and d not in seen:
            seen.add(d)
            try:
                if status(d)["PPid"].strip() == agent:
                    children.add(d)
            except (OSError, KeyError):
                pass
    for d in list(children):
        try:
            st = status(d)
            if st["Uid"].split()[0] == "65534" and st["Name"].strip() == comm:
                os.kill(int(d), signal.SIGSTOP)
                print(d, flush=True)
                sys.exit(0)
        except (OSError, KeyError):
            children.discard(d)
print("0", flush=True)
'''


@ROOT_ONLY
def test_child_stopped_before_exec_does_not_freeze_agent(agent, tmp_path):
    """Issue 11 item 1: a process of the exec user SIGSTOPs the child after
    setuid and before execve (a long PATH search widens that window).  With
    vfork the agent waited on that child and answered nothing more."""
    comm = proc_status(agent.proc.pid)["Name"].strip()
    path = ":".join(["/n"] * 40000) + ":/usr/bin:/bin"
    caught = None
    for _ in range(20):
        p = subprocess.Popen([sys.executable, "-c", STOPPER, str(agent.proc.pid), comm],
                             user=65534, stdout=subprocess.PIPE)
        try:
            assert p.stdout.readline() == b"ready\n"
            i = agent.exec_start("true", env=["PATH=" + path], user="nobody")
            pid = int(p.stdout.readline())  # 0: none caught within 10 s
            st = proc_status(pid) if pid else None
            # still the agent's image (before exec) and stopped
            if st and st["Name"].strip() == comm and st["State"].split()[0] == "T":
                caught = (i, pid)
                break
            if st:
                os.kill(pid, signal.SIGCONT)  # stopped after its exec: retry
            agent.collect(i)
        finally:
            p.kill()
            p.wait()
    assert caught, "the child was never stopped before its exec"
    i, pid = caught
    try:
        assert proc_status(pid)["State"].split()[0] == "T"
        res = agent.run("echo", "alive", timeout=20)
        assert res.stdout == b"alive\n"
    finally:
        os.kill(pid, signal.SIGKILL)
    agent.collect(i)


FIFO_PASSWD_WRAPPER = """#!/bin/sh
# agentd in its own mount namespace, where /etc/passwd is the FIFO $FIFO.
exec unshare --mount --propagation private \\
    sh -c 'mount --bind "$0" /etc/passwd && exec "$@"' "$FIFO" "$@"
"""


@ROOT_ONLY
def test_fifo_at_etc_passwd_fails_that_exec_only(spawn_agent, tmp_path, monkeypatch):
    """Issue 11 items 2 and 3: a guest root replaced /etc/passwd by a FIFO.
    Opening it used to block the loop for good; the exec that names a user
    fails (the file is refused), and the agent serves on."""
    if subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("no mount namespaces here")
    fifo = tmp_path / "passwd"
    os.mkfifo(fifo)
    wrapper = tmp_path / "fifo-passwd"
    wrapper.write_text(FIFO_PASSWD_WRAPPER)
    wrapper.chmod(0o755)
    monkeypatch.setenv("AGENTD_WRAPPER", str(wrapper))
    monkeypatch.setenv("FIFO", str(fifo))
    a = spawn_agent()
    named = a.exec_start("true", user="nobody")
    nxt = a.exec_start("echo", ["next"])
    res = a.collect(named, timeout=20)
    assert res.frames == ["core.exec.exited"] and res.code == -1
    assert a.collect(nxt, timeout=20).stdout == b"next\n"
    # a numeric user needs no entry
    res = a.run("grep", "^Uid", "/proc/self/status", user="4321", timeout=20)
    assert res.stdout.split()[1:] == [b"4321"] * 4, res


def test_env_with_many_entries_refused_and_next_request_served(spawn_agent, tmp_path):
    """Issue 11 item 4: 200k distinct env entries used to stall the loop
    for minutes (a scan of all earlier entries per entry); they are refused
    at once with a clear error, and the request behind them is answered."""
    log = tmp_path / "log"
    with open(log, "wb") as err:
        agent = spawn_agent(stderr=err)
    big = agent.exec_start("true", env=["E%d=x" % n for n in range(200000)])
    nxt = agent.exec_start("echo", ["next"])
    res = agent.collect(big, timeout=60)
    assert res.frames == ["core.exec.exited"] and res.code == -1
    assert agent.collect(nxt, timeout=60).stdout == b"next\n"
    assert "env has more than 65536 entries" in log.read_text()
    # too many bytes in a few entries
    res = agent.run("true", env=["A%d=" % n + "a" * 100000 for n in range(25)])
    assert res.frames == ["core.exec.exited"] and res.code == -1
    assert "env larger than 2 MiB" in log.read_text()


def test_env_many_entries_merged_in_place(agent):
    env = ["E%d=%d" % (n, n) for n in range(50000)] + ["E7=late", "HOME=/h", "E7=later"]
    res = agent.run("sh", "-c", 'echo "$E0 $E7 $E49999 $HOME"; env | grep -c "^E"', env=env)
    assert res.code == 0, res
    assert res.stdout == b"0 later 49999 /h\n50000\n"


def test_signal_after_direct_child_reaped_reaches_group(agent):
    """Issue 11 item 6: `sh -c "sleep 300 &"` - sh is reaped at once, the
    sleep keeps the session open through stdout; a signal must still reach
    the group and the session end."""
    i = agent.exec_start("sh", ["-c", "sleep 300 & echo $!"])
    assert agent.recv(msg_id=i).t == "core.exec.started"
    out = read_until(agent, i, b"\n")
    bg = int(out)
    try:
        # wait until the agent reaped sh: its session leader is gone
        pgid = os.getpgid(bg)
        wait_for(lambda: gone(pgid), "sh reaped")
        agent.signal(i, 15)
        res = agent.collect(i, timeout=20)
        assert res.code == 0 and res.signal is None  # sh's own status
        wait_for(lambda: gone(bg), "background sleep ended")
    finally:
        if not gone(bg):
            os.kill(bg, signal.SIGKILL)


def test_child_oom_score_adj_reset(agent):
    """Issue 11 item 7: PID 1 runs at -1000; its children must start at 0.
    Here the agent gets 500 (lowering it would need CAP_SYS_RESOURCE)."""
    with open("/proc/%d/oom_score_adj" % agent.proc.pid, "w") as f:
        f.write("500")
    res = agent.run("cat", "/proc/self/oom_score_adj")
    assert res.stdout == b"0\n", res
    res = agent.run("cat", "/proc/self/oom_score_adj", tty=True)
    assert res.stdout == b"0\r\n", res
    if os.geteuid() == 0:
        res = agent.run("cat", "/proc/self/oom_score_adj", user="nobody")
        assert res.stdout == b"0\n", res


# ---- issue 16: tests that catch what they are named for ----------------------

def test_output_left_in_pipe_at_reap_is_delivered(agent, tmp_path):
    """The child writes its whole output into the pipe and exits while the
    agent cannot read it (no output room: the host reads nothing and another
    session filled the queue).  The reap must not end the session before
    that pipe was read to EOF."""
    data = os.urandom(60000)  # fits in a pipe: the writer never blocks
    src = tmp_path / "tail"
    src.write_bytes(data)
    pidfile = tmp_path / "pid"
    flood = agent.exec_start("cat", ["/dev/zero"])
    f = agent.recv(msg_id=flood)
    assert f.t == "core.exec.started"
    flood_pid = f.p["pid"]
    try:
        wait_blocked_writing(flood_pid)
        i = agent.exec_start("sh", ["-c", 'echo $$ > %s.tmp; mv %s.tmp %s; exec cat %s'
                                    % (pidfile, pidfile, pidfile, src)])
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), "pid file"))
        wait_for(lambda: gone(pid), "the child reaped")
        agent.signal(flood, 9)
        res = agent.collect(i, timeout=60)
        assert res.code == 0
        assert len(res.stdout) == len(data) and res.stdout == data
        assert agent.collect(flood, timeout=60, sink=lambda b: None).signal == 9
    finally:
        if flood_pid and not gone(flood_pid):
            os.kill(flood_pid, signal.SIGKILL)


INHERIT_WRAPPER = """#!/bin/sh
# agentd with fds 7 and 8 open and not close-on-exec, as a careless parent
# would leave them.
exec 7</dev/null 8>/dev/null
exec "$@"
"""


@pytest.mark.parametrize("tty", [False, True])
def test_inherited_fds_not_passed_to_children(spawn_agent, tmp_path, monkeypatch, tty):
    """Every fd agentd opens is close-on-exec, so only the child's
    close_range stops fds agentd itself inherited from reaching children."""
    wrapper = tmp_path / "inherit"
    wrapper.write_text(INHERIT_WRAPPER)
    wrapper.chmod(0o755)
    monkeypatch.setenv("AGENTD_WRAPPER", str(wrapper))
    a = spawn_agent()
    assert {"7", "8"} <= set(os.listdir("/proc/%d/fd" % a.proc.pid))
    res = a.run("ls", "/proc/self/fd", tty=tty)
    assert res.code == 0
    assert sorted(int(x) for x in res.stdout.split()) == [0, 1, 2, 3], res.stdout


# ---- streamed stdin frames (issue 13: memory that stays small) -----------------

HERE = os.path.dirname(os.path.abspath(__file__))


def agent_constants():
    """The agent's bounds as its headers define them (agent.h, protocol.h),
    so a bound asserted here follows the design rather than a round number."""
    vals = {}
    for h in ("protocol.h", "agent.h"):
        with open(os.path.join(HERE, os.pardir, h)) as f:
            for m in re.finditer(r"^#define\s+(\w+)\s+([^/\n]+)", f.read(), re.M):
                expr = re.sub(r"\b(\d+)u(ll)?\b", r"\1", m.group(2).strip())
                try:
                    vals[m.group(1)] = int(eval(expr, {"__builtins__": {}}, dict(vals)))
                except Exception:
                    pass
    return vals


def cbor_head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")


def stdin_frame(msg_id, data, extra=b""):
    """A core.exec.stdin frame built by hand: canonical {"data": ...}, or with
    extra map entries after the data (not streamed: buffered whole)."""
    payload = (bytes([0xa1 if not extra else 0xa2]) + b"\x64data" +
               cbor_head(2, len(data)) + data + extra)
    t = b"core.exec.stdin"
    env = (b"\xa3\x61v\x01\x61t" + cbor_head(3, len(t)) + t + b"\x61p" +
           cbor_head(2, len(payload)) + payload)
    return (len(env) + 5).to_bytes(4, "big") + msg_id.to_bytes(4, "big") + b"\0" + env


def wait_port_drained(agent):
    """Until the agent has read everything we sent (SIOCOUTQ of a Unix socket
    counts bytes its peer has not consumed yet)."""
    import fcntl
    import struct
    import termios

    def drained():
        return struct.unpack("i", fcntl.ioctl(agent.sock, termios.TIOCOUTQ, b"\0" * 4))[0] == 0
    wait_for(drained, "the agent to read the port")


def test_stdin_streamed_frames_split_anywhere_lose_nothing(agent):
    """Large stdin frames go to the child as they arrive; each frame reaches
    the agent in pieces cut inside the frame header, the envelope, the
    payload heads and the data, so every parse state meets a read boundary.
    A frame with its data not last is buffered whole instead.  The child's
    checksum shows no byte lost, duplicated or reordered."""
    k = agent_constants()
    most = k["FRAME_WIRE_MAX"] - len(stdin_frame_head(0, MiB))  # largest data
    assert len(stdin_frame(1, b"x" * most)) == k["FRAME_WIRE_MAX"]
    rnd = __import__("random").Random(13)
    sizes = [3 * MiB, k["IN_STREAM_MIN"], k["IN_STREAM_MIN"] - 1, 70000, 1,
             200003, most, k["FRAME_READ_CHUNK"] * 2 + 7]
    i = agent.exec_start("sh", ["-c", "cat | sha256sum"])
    assert agent.recv(msg_id=i).t == "core.exec.started"
    sent = hashlib.sha256()
    for n, size in enumerate(sizes):
        data = rnd.randbytes(size)
        extra = b"\x62zz\x00" if n == 3 else b""
        frame = stdin_frame(i, data, extra)
        head = len(frame) - len(data) - len(extra)
        # the first frame byte by byte through its heads, the others sparser
        near = range(1, head + 2) if n == 0 else (1, 4, 5, 9, 12, 20, head - 1, head)
        cuts = sorted({c for c in (*near, head + 1, head + 65537, len(frame) - 1)
                       if 0 < c < len(frame)})
        prev = 0
        for c in cuts + [len(frame)]:
            agent.send_raw(frame[prev:c])
            prev = c
            if c < len(frame):
                wait_port_drained(agent)
        sent.update(data)
    agent.stdin(i, b"")
    res = agent.collect(i, timeout=120)
    assert res.code == 0
    assert res.stdout.split()[0].decode() == sent.hexdigest()


def send_stdin_frames(agent, i, total, chunk):
    """total bytes in chunk-sized stdin frames, the data sent from one
    block without copying it into a frame first."""
    block = memoryview(b"\xa5" * chunk)
    left = total
    while left:
        n = min(left, chunk)
        agent.sock.sendall(stdin_frame_head(i, n))
        agent.sock.sendall(block[:n])
        left -= n


def stdin_frame_head(msg_id, n):
    """The bytes of stdin_frame(msg_id, data) before the data, for len(data) n."""
    t = b"core.exec.stdin"
    payload_head = b"\xa1\x64data" + cbor_head(2, n)
    env = (b"\xa3\x61v\x01\x61t" + cbor_head(3, len(t)) + t + b"\x61p" +
           cbor_head(2, len(payload_head) + n) + payload_head)
    return (len(env) + n + 5).to_bytes(4, "big") + msg_id.to_bytes(4, "big") + b"\0" + env


@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory resident")
def test_stdin_upload_memory_bounded_and_given_back(agent, figures):
    """64 MiB in 3 MiB stdin frames to a child reading as fast as it can:
    the agent holds the frame reader (heads plus a read) and the child's
    stdin queue (its stream bound plus reads), never a whole frame; and a
    second after the transfer it is back at its idle size."""
    k = agent_constants()
    pid = agent.proc.pid
    assert agent.run("true").code == 0  # one spawn's memory is in the baseline
    before_hwm, before_rss = read_status(pid, "VmHWM"), read_status(pid, "VmRSS")
    i = agent.exec_start("sh", ["-c", "cat > /dev/null"])
    send_stdin_frames(agent, i, 64 * MiB, 3 * MiB)
    agent.stdin(i, b"")
    assert agent.collect(i, timeout=300).code == 0
    peak = read_status(pid, "VmHWM")
    reader = 2 * k["FRAME_READ_CHUNK"]
    queue = k["STDIN_STREAM_MAX"] + 2 * k["FRAME_READ_CHUNK"]
    slack = 64 * 1024  # page rounding, the arena, the frames of the exec
    assert peak - before_hwm <= (reader + queue + slack) // 1024, (before_hwm, peak)
    # buffers go back after IDLE_TRIM_MS without events (polled, not timed)
    wait_for(lambda: read_status(pid, "VmRSS") <= before_rss + 32, "VmRSS back to idle")
    figures.record("agent VmHWM, 64 MiB stdin in 3 MiB frames", peak, "kB")


def test_concurrent_bulk_stdout_stderr_in_order(agent, tmp_path):
    """Two children writing megabytes to stdout and stderr at once: the
    output of each pipe goes out by splice or by copy, frames of the four
    pipes interleave on the port, and every stream arrives whole and in
    order."""
    want = {}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        for name, size in (("o", 24 * MiB + 1), ("e", 6 * MiB + 7)):
            want[d, name] = os.urandom(size)
            (tmp_path / d / name).write_bytes(want[d, name])
    ids = {d: agent.exec_start("sh", ["-c", "cd %s && { cat o & cat e >&2; wait; }"
                                      % (tmp_path / d)]) for d in ("a", "b")}
    for d, i in ids.items():
        res = agent.collect(i, timeout=300)
        assert res.code == 0
        assert res.stdout == want[d, "o"]
        assert res.stderr == want[d, "e"]
