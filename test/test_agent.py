"""The agent as a whole: ready, bad input, heartbeat, shutdown, options."""
import glob
import json
import os
import random
import re
import struct
import subprocess
import time

import cbor2
import pytest

from agentd_client.lowlevel import AGENTD, Agent, encode_frame
from conftest import SANITIZED
from testlib import (DESIGN, agent_constant, children, read_syscalls, sleeping_in_epoll,
                     unread_by_peer, vm_hwm_kib, wait_for, zombies)

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")


def vector(name):
    with open(os.path.join(VECTORS, name + ".json")) as f:
        return json.load(f)


def still_serving(agent):
    res = agent.run("echo", "still-here", timeout=20)
    assert res.code == 0 and res.stdout == b"still-here\n"


def wait_consumed(agent):
    """Until the agent has read every byte sent so far."""
    wait_for(lambda: unread_by_peer(agent.sock) == 0, timeout=30,
             what="the agent to read what was sent")


def serving_after_discard(agent):
    """A request that shared the agent's read with a too-large prefix is
    discarded with it (SPEC 1.4); a later one must be served."""
    tried = []
    for _ in range(10):
        i = agent.exec_start("echo", ["resync"])
        tried.append(i)
        try:
            f = agent.recv(msg_id=i, timeout=2)
            break
        except TimeoutError:
            continue
    else:
        raise AssertionError("agent stopped serving after a discard")
    assert f.t == "core.exec.started"
    assert agent.collect(i).stdout == b"resync\n"
    # a slow answer to an attempt we gave up on is not an error
    agent.pending = [p for p in agent.pending if p.id not in tried]


# ---- ready -------------------------------------------------------------------

def test_ready_first_with_boot_times(agent):
    r = agent.ready
    assert (r.id, r.flags, r.v) == (0, 0, 1)
    assert list(r.p) == ["boot_time_ns", "init_time_ns", "ready_time_ns"]
    assert r.p["init_time_ns"] == 0  # not PID 1: no init duties
    assert 0 < r.p["boot_time_ns"] <= r.p["ready_time_ns"]
    with open("/proc/uptime") as f:
        uptime_ns = float(f.read().split()[0]) * 1e9
    # CLOCK_BOOTTIME: seconds since boot, not since the process started
    assert r.p["ready_time_ns"] > uptime_ns / 2


# ---- bad input -----------------------------------------------------------------

INVALID = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(VECTORS, "invalid-*.json")))


@pytest.mark.parametrize("name", INVALID)
def test_invalid_vector_keeps_serving(agent, name):
    v = vector(name)
    agent.send_raw(bytes.fromhex(v["frame_hex"]))
    if v["expect"] == "frame_too_large":
        # The agent drops all it buffered; let it see the bad prefix alone.
        wait_consumed(agent)
        serving_after_discard(agent)
    elif v["expect"] == "payload_error" and v["type"] == "core.exec.request":
        f = agent.recv(msg_id=v["id"], timeout=10)
        assert f.t == "core.exec.exited" and f.p == {"code": -1}
    elif v["expect"] == "payload_error" and v["type"] == "core.fs.request":
        f = agent.recv(msg_id=v["id"], timeout=10)
        assert f.t == "core.fs.response" and f.p["ok"] is False
        assert f.p["error"].startswith("invalid request: ")
    still_serving(agent)
    assert agent.pending == []  # nothing else was answered


def test_framed_garbage_between_valid_frames(agent):
    rng = random.Random(1234)
    for n in range(200):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        agent.send_raw(struct.pack(">IIB", len(body) + 5, rng.randrange(1 << 32),
                                   rng.randrange(256)) + body)
        if n % 20 == 0:
            still_serving(agent)
    still_serving(agent)


def test_unframed_garbage_then_resync(agent):
    rng = random.Random(99)
    for _ in range(30):
        junk = bytes([rng.randrange(1, 256)]) + os.urandom(rng.randrange(8, 4000))
        agent.send_raw(junk)  # a length prefix > 4 MiB: input discarded
        wait_consumed(agent)
        serving_after_discard(agent)


def test_unknown_type_and_wrong_direction_skipped(agent):
    agent.send(5, "core.no.such.type", {"x": 1})
    agent.send(6, "core.exec.stdout", {"data": b"to the guest?"})
    agent.send(7, "core.exec.stdin", {"data": b"no such session"})
    agent.send(8, "core.exec.signal", {"signal": 9})
    agent.send(9, "core.exec.resize", {"rows": 1, "cols": 1})
    still_serving(agent)
    assert agent.pending == []


NONCANON = sorted(os.path.basename(p)[:-5]
                  for p in glob.glob(os.path.join(VECTORS, "seed-noncanon-*.json"))
                  if vector(os.path.basename(p)[:-5])["direction"] == "host->guest")


@pytest.mark.parametrize("name", NONCANON)
def test_noncanonical_request_accepted(agent, name):
    """Each non-canonical encoding a host may send (SPEC 3) takes effect
    exactly as its canonical form would; a rejected frame is dropped or
    answered with an error, and the assertion on its effect fails."""
    v = vector(name)
    assert v["valid"] and not v["canonical"] and v["expect"] == "ok"
    frame = bytes.fromhex(v["frame_hex"])
    i = v["id"]
    if v["type"] == "core.exec.stdin":
        want = cbor2.loads(bytes.fromhex(v.get("canonical_payload_hex", v["payload_hex"])))["data"]
        agent.exec_start("cat", msg_id=i)
        assert agent.recv(msg_id=i).t == "core.exec.started"
        agent.send_raw(frame)
        agent.stdin(i, b"")
        res = agent.collect(i, timeout=30)
        assert (res.code, res.stdout) == (0, want), res
    elif v["type"] == "core.exec.signal":
        sig = 15
        agent.exec_start("sleep", ["100"], msg_id=i)
        assert agent.recv(msg_id=i).t == "core.exec.started"
        agent.send_raw(frame)
        res = agent.collect(i, timeout=30)
        assert res.signal == sig, res
    elif v["type"] == "core.exec.request":
        agent.send_raw(frame)
        res = agent.collect(i, timeout=30)
        assert res.frames[0] == "core.exec.started" and res.code == 0, res
    else:
        raise AssertionError("no check for a host->guest %s vector" % v["type"])
    still_serving(agent)
    assert agent.pending == []


def test_chunked_envelope_strings_accepted(agent):
    """SPEC 3.2: "t" and "p" may be indefinite-length strings (chunks)."""
    p = cbor2.dumps({"cmd": "echo", "args": ["chunked"]})
    body = (b"\xa3\x61v\x01\x61t\x7f" + cbor2.dumps("core.exec")
            + cbor2.dumps(".request") + b"\xff\x61p\x5f" + cbor2.dumps(p[:5])
            + cbor2.dumps(p[5:]) + b"\xff")
    agent.send_raw(struct.pack(">IIB", len(body) + 5, 77, 2) + body)
    r = agent.collect(77)
    assert (r.code, r.stdout) == (0, b"chunked\n")


def test_live_id_reuse_rejected_without_touching_session(agent):
    i = agent.exec_start("sh", ["-c", "read x; echo got $x"])
    assert agent.recv(msg_id=i).t == "core.exec.started"
    agent.exec_start("echo", ["intruder"], msg_id=i)
    f = agent.recv(msg_id=i)
    assert f.t == "core.exec.exited" and f.p == {"code": -1}
    agent.stdin(i, b"line\n")
    res = agent.collect(i)
    assert res.stdout == b"got line\n" and res.code == 0
    # the id is free again once the exchange ended
    assert agent.run("echo", "reuse", msg_id=i).stdout == b"reuse\n"


def test_exec_payload_error_answers_exited(agent):
    agent.send(41, "core.exec.request", {"cmd": 42})
    f = agent.recv(msg_id=41)
    assert f.t == "core.exec.exited" and f.flags == 1 and f.p == {"code": -1}


def test_fs_payload_error_answers_invalid_request(agent):
    agent.send(42, "core.fs.request", {"op": {"NoSuchOp": {}}})
    f = agent.recv(msg_id=42)
    assert f.t == "core.fs.response" and f.flags == 1
    assert f.p["ok"] is False and f.p["error"].startswith("invalid request: ")


def test_maximal_frame_then_next_in_same_write(agent):
    # A legal maximal stdin frame followed at once by another frame (SPEC 1.5).
    i = agent.exec_start("sh", ["-c", "wc -c"])
    assert agent.recv(msg_id=i).t == "core.exec.started"
    overhead = len(encode_frame(i, "core.exec.stdin", {"data": b""}))
    n = 4194308 - overhead
    big = encode_frame(i, "core.exec.stdin", {"data": b"a" * n})
    n -= len(big) - 4194308  # longer CBOR heads for the big strings
    big = encode_frame(i, "core.exec.stdin", {"data": b"a" * n})
    assert len(big) == 4194308
    agent.send_raw(big + encode_frame(i, "core.exec.stdin", {"data": b""}))
    res = agent.collect(i)
    assert res.stdout.strip() == str(n).encode()


# ---- port end ------------------------------------------------------------------

def test_host_mode_eof_terminates_sessions_and_exits_0(spawn_agent):
    a = spawn_agent()
    i = a.exec_start("sh", ["-c", "echo $$; exec sleep 100"])
    pid = int(a.recv(msg_id=i).p["pid"])
    a.sock.close()
    assert a.proc.wait(timeout=10) == 0

    def gone():
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().split()[2] == "Z"
        except OSError:
            return True
    wait_for(gone, what="the session's process to end")


def test_unix_socket_port(tmp_path):
    path = str(tmp_path / "port.sock")
    import socket
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    proc = subprocess.Popen([AGENTD, "--port", path, "--runtime-dir", str(tmp_path / "none")])
    try:
        srv.settimeout(10)
        conn, _ = srv.accept()
        a = Agent(conn, proc)
        assert a.recv(timeout=10).t == "core.ready"
        assert a.run("echo", "sock").stdout == b"sock\n"
        assert a.close() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.close()


# ---- shutdown ------------------------------------------------------------------

def test_shutdown_ends_sessions_within_grace(spawn_agent):
    a = spawn_agent()
    polite = a.exec_start("sleep", ["100"])
    stubborn = a.exec_start("sh", ["-c", "trap '' TERM; echo ready; sleep 100"])
    assert a.recv(msg_id=polite).t == "core.exec.started"
    assert a.recv(msg_id=stubborn).t == "core.exec.started"
    assert a.recv(msg_id=stubborn).p["data"] == b"ready\n"
    a.shutdown()
    # the grace is 500 ms, then SIGKILL; the timeouts only guard a hang
    assert a.collect(polite, timeout=30).signal == 15
    assert a.collect(stubborn, timeout=30).signal == 9
    assert a.proc.wait(timeout=30) == 0


def test_shutdown_skips_frames_after_it(spawn_agent):
    a = spawn_agent()
    a.send_raw(encode_frame(0, "core.shutdown", None, raw_payload=b"\xf6") +
               encode_frame(5, "core.exec.request", {"cmd": "echo"}))
    assert a.proc.wait(timeout=5) == 0
    with pytest.raises(EOFError):
        while True:
            f = a.recv(timeout=5)
            assert f.id != 5


def test_sigterm_to_agent_shuts_down(spawn_agent):
    a = spawn_agent()
    i = a.exec_start("sleep", ["100"])
    assert a.recv(msg_id=i).t == "core.exec.started"
    a.proc.terminate()
    assert a.collect(i, timeout=5).signal == 15
    assert a.proc.wait(timeout=5) == 0


# ---- heartbeat -----------------------------------------------------------------

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z"
TEMPLATE = '{\n  "timestamp": "%s",\n  "active_sessions": %d,\n  "last_activity": "%s"\n}'


def check_timestamp(ts):
    assert re.fullmatch(TS, ts), ts
    frac = ts[20:-1]
    # the shortest of 0/3/6/9 digits that is exact (SPEC 8)
    assert not frac.endswith("000"), ts


def read_heartbeat(path, timeout=10):
    def text():
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return None
    return wait_for(text, timeout=timeout, what="a heartbeat at %s" % path)


def next_heartbeat(path, after, timeout=10):
    """The first heartbeat document written after the one `after`."""
    def newer():
        doc = json.loads(read_heartbeat(path))
        return doc if doc["timestamp"] != after["timestamp"] else None
    return wait_for(newer, timeout=timeout, what="the next heartbeat at %s" % path)


def test_heartbeat_template_matches_vector():
    with open(os.path.join(VECTORS, "heartbeat", "seed-heartbeat.json")) as f:
        want = f.read()
    doc = json.loads(want)
    assert TEMPLATE % (doc["timestamp"], doc["active_sessions"], doc["last_activity"]) == want


def test_heartbeat_content(spawn_agent, runtime_dir):
    a = spawn_agent(heartbeat_interval=1)
    hb = str(runtime_dir / "heartbeat.json")
    first = read_heartbeat(hb)  # written right after ready
    doc = json.loads(first)
    assert list(doc) == ["timestamp", "active_sessions", "last_activity"]
    assert first == TEMPLATE % (doc["timestamp"], doc["active_sessions"], doc["last_activity"])
    check_timestamp(doc["timestamp"])
    check_timestamp(doc["last_activity"])
    assert doc["active_sessions"] == 0
    i = a.exec_start("sleep", ["100"])
    assert a.recv(msg_id=i).t == "core.exec.started"
    # one heartbeat may have been formatted before the request was read
    doc2 = next_heartbeat(hb, next_heartbeat(hb, doc))
    assert doc2["active_sessions"] == 1
    assert doc2["timestamp"] > doc["timestamp"]
    assert doc2["last_activity"] > doc["last_activity"]  # the request was read
    assert not os.path.exists(str(runtime_dir / "heartbeat.tmp"))
    a.signal(i, 9)
    a.collect(i)


def test_heartbeat_symlink_safety(spawn_agent, runtime_dir, tmp_path):
    victim_tmp = tmp_path / "victim-tmp"
    victim_json = tmp_path / "victim-json"
    victim_link = runtime_dir / "victim-hardlink"
    for v in (victim_tmp, victim_json, victim_link):
        v.write_text("precious")
    os.symlink(str(victim_tmp), str(runtime_dir / "heartbeat.tmp"))
    os.symlink(str(victim_json), str(runtime_dir / "heartbeat.json"))
    a = spawn_agent(heartbeat_interval=1)
    hb = runtime_dir / "heartbeat.json"
    # the first heartbeat (right after ready) replaces the planted symlink
    wait_for(lambda: not hb.is_symlink(), what="heartbeat.json to replace the symlink")
    json.loads(hb.read_text())

    # now a hard link to a file on the share planted as the temp file
    def plant():
        try:
            os.link(str(victim_link), str(runtime_dir / "heartbeat.tmp"))
            return True
        except FileExistsError:  # the agent's own, for a moment
            return False
    wait_for(plant, what="a chance to plant heartbeat.tmp")
    # two heartbeats after the plant: the first met the planted link
    doc = json.loads(hb.read_text())
    doc = next_heartbeat(str(hb), next_heartbeat(str(hb), doc))
    for v in (victim_tmp, victim_json, victim_link):
        assert v.read_text() == "precious"
    assert os.stat(str(victim_link)).st_nlink == 1
    assert json.loads(hb.read_text())["timestamp"] >= doc["timestamp"]
    assert a.run("true").code == 0


def test_no_heartbeat_without_runtime_dir(spawn_agent, tmp_path):
    missing = tmp_path / "no-such-dir"
    a = spawn_agent(runtime_dir=str(missing), heartbeat_interval=1)
    # idle, the agent reads only its timer: two more reads, two ticks
    ticks = read_syscalls(a.proc.pid) + 2
    wait_for(lambda: read_syscalls(a.proc.pid) >= ticks, what="two heartbeat ticks")
    assert not missing.exists()
    assert a.run("true").code == 0


# ---- options, size -------------------------------------------------------------

def test_help_and_bad_options():
    out = subprocess.run([AGENTD, "--help"], capture_output=True, timeout=10)
    assert out.returncode == 0 and b"--port-fd" in out.stdout
    for bad in (["--bogus"], ["--port-fd"], ["--port-fd", "x"],
                ["--heartbeat-interval", "0"], ["--heartbeat-interval", "-1"]):
        out = subprocess.run([AGENTD] + bad, capture_output=True, timeout=10)
        assert out.returncode == 2, bad


def test_binary_size(figures):
    if SANITIZED:
        pytest.skip("size of the sanitizer build is meaningless")
    size = os.path.getsize(AGENTD)
    figures.record("agentd static binary size", size, "bytes")
    assert subprocess.run(["file", AGENTD], capture_output=True).stdout.find(b"statically linked") >= 0


def test_char_device_port_survives_hangup(tmp_path):
    """--port on a character device behaves like the virtio port under PID 1:
    a hang-up does not end the agent (it re-polls); SIGTERM still does."""
    import pty
    import select
    import tty
    master, slave = pty.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    proc = subprocess.Popen([AGENTD, "--port", path, "--runtime-dir", str(tmp_path / "none")],
                            stderr=subprocess.PIPE)
    try:
        a = Agent(_FdSock(master), proc)
        assert a.recv(timeout=10).t == "core.ready"
        os.close(slave)  # only the agent has it open now
        slave = -1
        assert a.run("echo", "tty-port").stdout == b"tty-port\n"
        os.close(master)  # hang-up
        master = -1
        err = b""

        def told():
            nonlocal err
            if select.select([proc.stderr], [], [], 0)[0]:
                err += os.read(proc.stderr.fileno(), 4096)
            return b"waiting for the host" in err
        wait_for(told, what="agentd to notice the hang-up")
        assert proc.poll() is None
        # Re-polling on a timer is no busy loop: the hung-up port, always
        # ready, is out of the epoll set between polls, so the agent
        # sleeps in epoll_wait.  (A busy loop never blocks there.)
        wait_for(lambda: sleeping_in_epoll(proc.pid), what="agentd to sleep in epoll_wait")
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        err = (err + proc.stderr.read()).decode()
        assert err.count("waiting for the host") == 1, err
    finally:
        for fd in (slave, master):
            if fd >= 0:
                os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _FdSock:
    """The bits of a socket Agent uses, over a plain fd (a PTY master)."""

    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd

    def recv(self, n):
        try:
            return os.read(self.fd, n)
        except OSError:
            return b""

    def sendall(self, data):
        while data:
            data = data[os.write(self.fd, data):]

    def close(self):
        pass


def test_random_traffic_keeps_serving(spawn_agent, figures):
    """Random requests, stdin, signals, resizes, fs requests, undecodable
    payloads and corrupted frames (frame headers left intact): every request
    gets exactly one terminal frame (exited or fs.response), every child is
    reaped (no zombie left), and the agent still serves afterwards.  A
    signal on the id of an fs request not yet answered would give it up
    silently (docs/PROTOCOL.md 9.5, tested on its own in test_fs.py), so
    signals go only to ids whose fs requests are all answered."""
    import select
    rng = random.Random(7)
    a = spawn_agent()
    need = {}   # id -> requests sent intact: each must be answered once
    extra = {}  # id -> corrupted requests: answered once or not at all
    got = {}    # id -> terminal frames received
    fs_sent, fs_got = {}, {}  # id -> intact fs requests sent, answered

    def take(f):
        assert 1 <= f.id < 30, f
        if f.flags & 1:
            got[f.id] = got.get(f.id, 0) + 1
            if f.t == "core.fs.response":
                fs_got[f.id] = fs_got.get(f.id, 0) + 1

    def drain():
        """Every frame already here, without waiting for more."""
        while True:
            try:
                take(a.recv(timeout=0))  # complete frames already read
                continue
            except TimeoutError:
                pass
            if not select.select([a.sock], [], [], 0)[0]:
                return
            try:
                take(a.recv(timeout=0.01))
            except TimeoutError:
                pass
    cmds = [["true"], ["cat"], ["sh", "-c", "echo hi; sleep 0.05"], ["sleep", "1"],
            ["head", "-c", "100000", "/dev/zero"], ["no-such-cmd"], ["yes"],
            ["sh", "-c", "exec 0<&-; echo x"]]

    def payload(t):
        if t == "core.exec.request":
            c = rng.choice(cmds)
            p = {"cmd": c[0], "args": c[1:], "tty": rng.random() < 0.3}
            if rng.random() < 0.2:
                p["rlimits"] = [{"resource": "nofile", "soft": 64, "hard": 64}]
            return p if rng.random() > 0.1 else {"cmd": rng.choice([1, None, [], b"x"])}
        if t == "core.exec.stdin":
            return {"data": os.urandom(rng.choice([0, 1, 100, 70000]))}
        if t == "core.exec.signal":
            return {"signal": rng.choice([1, 2, 9, 15, 0, 40, -3, 19, 18])}
        if t == "core.exec.resize":
            return {"rows": rng.randrange(70000), "cols": rng.randrange(300)}
        if t == "core.fs.request":
            return {"op": {rng.choice(["Stat", "List", "Bogus"]): {"path": rng.choice(["/", "/nonexistent", "/proc/self/status"])}}}
        return {"data": [rng.randrange(300)]}

    def fs_open(i):
        """fs frames on i that may still be answered (a corrupted one may
        never be, so it counts until the id is quiet)."""
        return fs_sent.get(i, 0) > fs_got.get(i, 0)

    types = ["core.exec.request", "core.exec.stdin", "core.exec.signal",
             "core.exec.resize", "core.fs.request", "core.fs.data", "core.bogus"]
    for _ in range(4000):
        t = rng.choice(types)
        i = rng.randrange(1, 30)
        if t == "core.exec.signal" and fs_open(i):
            t = "core.exec.resize"
        p = payload(t)
        frame = bytearray(encode_frame(i, t, p))
        corrupt = rng.random() < 0.05
        if corrupt:  # the body only: a request keeps its id and type length
            for _ in range(3):
                frame[rng.randrange(9, len(frame))] = rng.randrange(256)
        # answered: requests, and fs.data (no upload is open: "unknown
        # write session") unless its payload is invalid (byte 256+)
        if t in ("core.exec.request", "core.fs.request") or (
                t == "core.fs.data" and p["data"][0] < 256):
            tally = extra if corrupt else need
            tally[i] = tally.get(i, 0) + 1
            if t != "core.exec.request":
                fs_sent[i] = fs_sent.get(i, 0) + (0 if corrupt else 1)
        a.send_raw(bytes(frame))
        drain()
    wait_for(lambda: (drain(), not any(fs_open(i) for i in range(1, 30)))[1],
             timeout=60, what="every fs request answered")
    for i in range(1, 30):
        a.signal(i, 9)

    def all_answered():
        drain()
        return all(got.get(i, 0) >= n for i, n in need.items())
    wait_for(all_answered, timeout=60, what=lambda: "a terminal frame for every request "
             "(id: (sent, answered)): %r" % {i: (n, got.get(i, 0)) for i, n in need.items()
                                              if got.get(i, 0) < n})
    pid = a.proc.pid
    agentd_exe = os.path.realpath(AGENTD)

    def exec_children():
        """Children other than agentd's own idle fs workers (zombies too)."""
        left = []
        for c, state in children(pid):
            try:
                if state != "Z" and os.readlink("/proc/%d/exe" % c) == agentd_exe:
                    continue
            except OSError:
                pass
            left.append(c)
        return left
    wait_for(lambda: not exec_children(), timeout=20,
             what=lambda: "agentd to reap every child (zombies: %s)" % zombies(pid))
    res = a.run("echo", "alive", msg_id=1000, timeout=30)
    assert res.stdout == b"alive\n" and res.code == 0
    for f in a.pending:
        take(f)
    drain()
    for i in set(need) | set(got):
        assert need.get(i, 0) <= got.get(i, 0) <= need.get(i, 0) + extra.get(i, 0), (
            i, need, extra, got)
    assert zombies(pid) == []
    figures.record("random traffic: requests answered", sum(got.values()), "frames")


def test_many_requests_in_one_read_keep_memory_bounded(agent, tmp_path):
    """Hundreds of small requests, each answered with a large frame, sent
    while the host reads nothing: the agent stops taking frames at its output
    bound instead of queueing every answer, then answers them all."""
    import select
    d = tmp_path / "wide"
    d.mkdir()
    n_files, n_req = 250, 500
    for n in range(n_files):  # long names: big answers, few entries to decode
        (d / ("%06d-" % n + "x" * 192)).touch()
    batch = b"".join(encode_frame(10000 + n, "core.fs.request", {"op": {"List": {"path": str(d)}}})
                     for n in range(n_req))
    pid = agent.proc.pid
    before = vm_hwm_kib(pid)
    agent.send_raw(batch)

    def stalled():  # answering began, and the agent waits for the host
        return select.select([agent.sock], [], [], 0)[0] and sleeping_in_epoll(pid)
    wait_for(stalled, timeout=60, what="the agent to stop at its output bound")
    stalled = vm_hwm_kib(pid)
    largest = 0
    for n in range(n_req):
        f = agent.recv(msg_id=10000 + n, timeout=60)
        assert f.t == "core.fs.response" and f.p["ok"], f
        assert len(f.p["data"]["List"]) == n_files
        largest = max(largest, len(f.p_raw))
    after = vm_hwm_kib(pid)
    # The agent reads no request while its queue holds OUT_HARD_LIMIT, and
    # handles none from a read it already took (in_backlog): the queue holds
    # at most that plus one answer, in a buffer grown by doubling (up to
    # twice that, all of which may be touched), plus the requests it read,
    # one read chunk and slack.  Every answer queued at once would be n_req
    # times `largest` (~45 MB).  (ASan's quarantine keeps freed memory
    # resident: RSS says nothing there.)
    answer = largest + 64  # frame header and envelope
    assert n_req * answer > 4 * DESIGN["OUT_HARD_LIMIT"]
    bound = (2 * (DESIGN["OUT_HARD_LIMIT"] + answer) + len(batch)
             + DESIGN["OUT_READ_CHUNK"]) // 1024 + 256
    if not SANITIZED:
        assert stalled - before <= bound, (before, stalled, bound)
        assert after - before <= bound, (before, after, bound)
    still_serving(agent)


@pytest.mark.slow
def test_stdin_bound_over_all_sessions(agent):
    """docs/PROTOCOL.md: stdin waits in the agent up to 8 MiB per session and
    64 MiB over all sessions; at the bound the agent stops reading the port,
    and after 5 s without progress it closes those children's stdin.  Sixteen
    children that never read, 7 MiB each (under the per-session bound): 112
    MiB offered, at most 64 MiB held."""
    import threading
    n_sess, per_sess, chunk = 16, 7 * 1024 * 1024, 1024 * 1024
    ids = [agent.exec_start("sleep", ["100"]) for _ in range(n_sess)]
    for i in ids:
        assert agent.recv(msg_id=i).t == "core.exec.started"
    pid = agent.proc.pid
    before = vm_hwm_kib(pid)
    block = b"s" * chunk

    def offer():
        for _ in range(per_sess // chunk):
            for i in ids:
                agent.stdin(i, block)
    t = threading.Thread(target=offer, daemon=True)
    t.start()
    # the port stops being read at the bound; the give-up reopens it
    t.join(timeout=120)
    assert not t.is_alive(), "the agent never read the port again"
    still_serving(agent)
    peak = vm_hwm_kib(pid) - before
    for i in ids:
        agent.signal(i, 9)
        assert agent.collect(i).signal == 9
    # The queues hold at most STDIN_TOTAL_MAX; one more frame may be
    # appended past it (1 MiB here) and the input buffer holds up to one
    # maximal frame and a read chunk.  Queues grow by doubling, but only
    # the bytes written into them are touched.
    bound = (64 * 1024 * 1024 + chunk + 4 * 1024 * 1024 + 64 * 1024) // 1024 + 1024
    if not SANITIZED:  # ASan's quarantine keeps freed memory resident
        assert peak <= bound, (peak, bound, n_sess * per_sess // 1024)


def test_design_figures_match_agent_h():
    """The memory bounds of the tests (testlib.DESIGN) are the design of
    agent.h; a deliberate change of one must change the other."""
    for name, value in DESIGN.items():
        assert agent_constant(name) == value, (name, agent_constant(name), value)


HB_HARNESS = r'''
#include <stdio.h>
#include <stdlib.h>
#include "agent.h"
int main(int argc, char **argv)
{
	char buf[64];
	int i;

	for (i = 1; i + 1 < argc; i += 2) {
		struct timespec ts = { strtoll(argv[i], NULL, 10), strtol(argv[i + 1], NULL, 10) };

		heartbeat_format_time(buf, sizeof(buf), &ts);
		puts(buf);
	}
	return 0;
}
'''


def test_heartbeat_time_format_exact(tmp_path):
    """heartbeat_format_time (heartbeat.c, compiled with the host cc) against
    the SPEC 8 examples and Python's own calendar for many instants."""
    import datetime
    import shutil
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = tmp_path / "hb.c"
    src.write_text(HB_HARNESS)
    exe = str(tmp_path / "hb")
    subprocess.run([cc, "-std=gnu11", "-D_GNU_SOURCE", "-I", root, "-o", exe, str(src),
                    os.path.join(root, "heartbeat.c"), os.path.join(root, "fmt.c")], check=True)
    rng = random.Random(5)
    cases = [(1767225601, 123456789), (1767225600, 500000000), (0, 0), (951782400, 1000),
             (253402300799, 999999999), (68169600, 120000000)]
    cases += [(rng.randrange(0, 253402300800), rng.choice([0, rng.randrange(1000) * 1000000,
              rng.randrange(10 ** 6) * 1000, rng.randrange(10 ** 9)])) for _ in range(3000)]
    out = subprocess.run([exe] + [str(x) for c in cases for x in c], capture_output=True,
                         check=True).stdout.decode().split("\n")
    for (sec, ns), got in zip(cases, out):
        d = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=sec)
        if ns == 0:
            frac = ""
        elif ns % 1000000 == 0:
            frac = ".%03d" % (ns // 1000000)
        elif ns % 1000 == 0:
            frac = ".%06d" % (ns // 1000)
        else:
            frac = ".%09d" % ns
        assert got == d.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + frac + "Z", (sec, ns)
    assert out[0] == "2026-01-01T00:00:01.123456789Z"
    assert out[1] == "2026-01-01T00:00:00.500Z"


# ---- console log rate limit (issue 11) ----------------------------------------

def test_log_flood_is_rate_limited_and_counted(spawn_agent, tmp_path):
    """A host sending bad frames in a loop must not make PID 1 write a line
    to its (slow, synchronous) console for each: a bounded number of lines,
    and the dropped ones counted in a "N log lines suppressed" line."""
    log = tmp_path / "log"
    with open(log, "wb") as err:
        a = spawn_agent(stderr=err)
    flood = 5000
    a.send_raw(b"".join(encode_frame(i + 100, "core.no.such.type", {}) for i in range(flood)))
    still_serving(a)  # frames are handled in order: the flood is done
    assert len(re.findall(r"unknown type", log.read_text())) < 200
    sent = flood
    deadline = time.monotonic() + 60
    while b"suppressed" not in log.read_bytes():
        # logging resumes after a pause; the next line reports the count
        assert time.monotonic() < deadline, "no suppressed line"
        a.send(99, "core.no.such.type", {})
        sent += 1
        still_serving(a)
        time.sleep(0.05)
    text = log.read_text()
    printed = len(re.findall(r"unknown type", text))
    dropped = sum(int(n) for n in re.findall(r"(\d+) log lines suppressed", text))
    assert printed < 200, printed
    assert printed + dropped == sent, (printed, dropped, sent)
