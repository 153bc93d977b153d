#!/usr/bin/python3
"""bench.py - measure agentd, side by side with microsandbox's own agent.

    make bench            our agent only (host mode, VM mode, raw port)
    make bench PEER=1     also fetch and measure the peer (bench/fetch-peer)

One run, one machine.  Prints one table (metric, ours, peer, ours/peer,
fraction of the raw port), writes bench/results/latest.json and the bar
chart bench/results/ratios.svg.  See bench/README.md for what each figure
means.  Nothing here asserts a timing; it only measures.
"""
import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "test", "vm"))
sys.path.insert(0, HERE)

from agentd_client import lowlevel as agentclient  # noqa: E402
import g7host  # noqa: E402
import svgchart  # noqa: E402
import vmlib  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
STDIN_CHUNK = 64 * 1024     # one pipe buffer per core.exec.stdin frame
FS_CHUNK = 1 * MiB          # core.fs.data chunk of the host-mode write
DD_BS = 64 * 1024           # dd block size: producers, consumers, raw port

# Modules our agent loads by default (init.c); the helper /init of the
# peer and of the raw-port baseline loads the same set so every VM has the
# same devices.
def agent_default_modules():
	"""init.c's default module list, so the images follow the agent."""
	try:
		with open(os.path.join(ROOT, "init.c")) as f:
			m = re.search(r'default_modules\[\]\s*=\s*"([^"]*)"', f.read())
		if m:
			return [x for x in m.group(1).split(",") if x]
	except OSError:
		pass
	return ["virtio_mmio", "virtio_pci", "virtio_console", "virtio_blk",
		"virtio_net", "virtio_rng", "fuse", "virtiofs"]


MODULES = agent_default_modules()


def log(msg):
	print("bench: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Workloads: each takes a connected agentclient.Agent (ours or the peer).

def cbor_head(major, n):
	"""The head of a CBOR item: major type and length, shortest form."""
	if n < 24:
		return bytes([major << 5 | n])
	for ai, fmt_ in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
		if n < 1 << (8 * struct.calcsize(fmt_)):
			return bytes([major << 5 | ai]) + struct.pack(fmt_, n)


def send_data(a, msg_id, t, data):
	"""Send {"data": data} as message t without copying data in Python:
	the frame head, envelope and payload heads are built by hand (the
	same canonical bytes cbor2 would produce) and data goes out as the
	second buffer of one sendmsg.  Keeps the client from being the limit."""
	v = g7host.G7 if isinstance(a, g7host.G7Agent) else 1
	tt = t.encode()
	payload_head = b"\xa1\x64data" + cbor_head(2, len(data))
	plen = len(payload_head) + len(data)
	env_head = (b"\xa3\x61v" + bytes([v]) + b"\x61t" + cbor_head(3, len(tt)) + tt +
		    b"\x61p" + cbor_head(2, plen))
	body_len = len(env_head) + plen
	head = struct.pack(">IIB", body_len + 5, msg_id, agentclient.FLAGS.get(t, 0))
	bufs = [head + env_head + payload_head, data]
	while bufs:
		n = a.sock.sendmsg(bufs)
		while bufs and n >= len(bufs[0]):
			n -= len(bufs[0])
			bufs.pop(0)
		if bufs and n:
			bufs[0] = memoryview(bufs[0])[n:]


def send_stream(a, msg_id, t, nbytes, chunk, fill=b"\0"):
	"""nbytes of fill in chunk-sized data frames of type t (the last one
	shorter), without the empty end frame."""
	block = memoryview(fill * chunk)
	left = nbytes
	while left > 0:
		n = min(left, chunk)
		send_data(a, msg_id, t, block[:n])
		left -= n


def exec_rtt(a, n):
	"""Seconds per round trip of `true` (request -> started -> exited)."""
	out = []
	for _ in range(n):
		t = time.perf_counter()
		r = a.run("true")
		out.append(time.perf_counter() - t)
		if r.code != 0:
			raise RuntimeError("true exited %r" % r.code)
	return out


def guest_spawn(a, n):
	"""The guest kernel's own cost of starting and reaping `true`, with no
	agent in between: bench/spawnbench run inside the guest (seconds per
	start + wait, median of n, for fork, vfork and posix_spawn)."""
	r = a.run("/bin/spawnbench", str(n), "true", timeout=600)
	if r.code != 0:
		raise RuntimeError("spawnbench exited %r: %r" % (r.code, r.stderr))
	out = {}
	for m in re.finditer(r"spawnbench (\w+) n=\d+ median_us=([0-9.]+)", r.stdout.decode()):
		out["guest_%s_s" % m.group(1)] = float(m.group(2)) / 1e6
	return out


def stdout_throughput(a, nbytes):
	"""Bytes/s of `dd if=/dev/zero bs=64k` through core.exec.stdout.  dd
	writes whole 64 KiB blocks (busybox `head -c` writes 4 KiB at a time,
	which would measure head's wakeups rather than the agent)."""
	got = [0]

	def sink(data):
		got[0] += len(data)
	t = time.perf_counter()
	mid = a.exec_start("dd", ["if=/dev/zero", "bs=%d" % DD_BS,
				  "count=%d" % (nbytes // DD_BS)])
	r = a.collect(mid, timeout=600, sink=sink)
	dt = time.perf_counter() - t
	if r.code != 0 or got[0] != nbytes:
		raise RuntimeError("stdout: code %r, %d of %d bytes" % (r.code, got[0], nbytes))
	return nbytes / dt


def stdin_throughput(a, nbytes):
	"""Bytes/s of nbytes fed in STDIN_CHUNK frames to `dd of=/dev/null
	bs=64k iflag=fullblock`, until it exits; dd's record count checks
	that every byte arrived."""
	t = time.perf_counter()
	mid = a.exec_start("dd", ["of=/dev/null", "bs=%d" % DD_BS, "iflag=fullblock"])
	send_stream(a, mid, "core.exec.stdin", nbytes, STDIN_CHUNK)
	a.stdin(mid, b"")
	r = a.collect(mid, timeout=600)
	dt = time.perf_counter() - t
	want = b"%d+0 records in" % (nbytes // DD_BS)
	if r.code != 0 or not r.stderr.startswith(want):
		raise RuntimeError("stdin: code %r, dd says %r" % (r.code, r.stderr))
	return nbytes / dt


def upload_memory(a, status, nbytes=64 * MiB, chunk=3 * MiB):
	"""The agent's memory around a large upload: nbytes of stdin in chunk
	sized frames (each up to 3 MiB, so the whole frame would not fit one
	read) to `cat > /dev/null`; status() gives the agent's VmHWM right
	after it (the peak of the upload) and its VmRSS one second later (what
	it gave back once idle)."""
	mid = a.exec_start("sh", ["-c", "cat > /dev/null"])
	send_stream(a, mid, "core.exec.stdin", nbytes, chunk)
	a.stdin(mid, b"")
	r = a.collect(mid, timeout=600)
	if r.code != 0:
		raise RuntimeError("upload: code %r" % r.code)
	hwm = status()["VmHWM"]
	time.sleep(1.0)
	return {"upload_hwm_kb": hwm, "idle_rss_kb": status()["VmRSS"]}


def fs_upload_memory(a, status, nbytes=64 * MiB, chunk=3 * MiB):
	"""The agent's peak memory after nbytes of a file Write in chunk-sized
	core.fs.data frames into /dev/null (written in place, so no guest
	memory fills up)."""
	fs_write(a, "/dev/null", nbytes, chunk)
	return {"fs_upload_hwm_kb": status()["VmHWM"]}


# Generation 7 opens a handle first (SPEC 12.5); the options a plain
# write-from-scratch and a plain read need.
G7_OPEN = {
	"write": {"read": False, "write": True, "append": False, "create": True,
		  "truncate": True, "create_new": False, "mode": None},
	"read": {"read": True, "write": False, "append": False, "create": False,
		 "truncate": False, "create_new": False, "mode": None},
}


def is_g7(a):
	return isinstance(a, g7host.G7Agent)


def fs_call(a, op, **fields):
	"""One fs request answered by one response; its data."""
	mid = a.new_id()
	a.send(mid, "core.fs.request", {"op": {op: fields}})
	f = a.recv(timeout=60, msg_id=mid)
	if f.t != "core.fs.response" or not f.p.get("ok"):
		raise RuntimeError("fs %s: %r" % (op, f))
	return f.p.get("data")


def fs_stream_op(a, path, how):
	"""(request op, handle or None) of a Write or Read of path: the seed's
	path-based one (SPEC 6.3, 6.4) or generation 7's on an opened handle."""
	if not is_g7(a):
		return ({"Write": {"path": path, "mode": None}} if how == "write"
			else {"Read": {"path": path}}), None
	h = fs_call(a, "OpenFile", path=path, options=G7_OPEN[how])["Handle"]
	name = "Write" if how == "write" else "Read"
	return {name: {"handle": h, "offset": 0, "len": None}}, h


def fs_write(a, path, nbytes, chunk=FS_CHUNK):
	"""Bytes/s of a Write stream of nbytes in chunk-sized core.fs.data
	frames, from the request (or the open) to the response (or the close)."""
	t = time.perf_counter()
	op, handle = fs_stream_op(a, path, "write")
	mid = a.new_id()
	a.send(mid, "core.fs.request", {"op": op})
	send_stream(a, mid, "core.fs.data", nbytes, chunk, b"\xa5")
	a.send(mid, "core.fs.data", {"data": b""})
	f = a.recv(timeout=600, msg_id=mid)
	if f.t != "core.fs.response" or not f.p.get("ok"):
		raise RuntimeError("fs write: %r" % f)
	if handle is not None:
		fs_call(a, "CloseHandle", handle=handle)
	return nbytes / (time.perf_counter() - t)


def fs_read(a, path, nbytes, budget_s=60):
	"""Bytes/s of a seed-protocol Read stream (SPEC 6.3).  A stream that
	has not finished within budget_s is cut short and measured as far as
	it got (flagged "partial"), so one stalling agent cannot eat the
	whole benchmark."""
	t = time.perf_counter()
	op, handle = fs_stream_op(a, path, "read")
	mid = a.new_id()
	a.send(mid, "core.fs.request", {"op": op})
	got = 0
	while True:
		left = budget_s - (time.perf_counter() - t)
		try:
			f = a.recv(timeout=max(left, 0.001), msg_id=mid)
		except TimeoutError:
			dt = time.perf_counter() - t
			raise PartialRead(got / dt, "fs read stopped after %.0f s: %d of %d "
					  "bytes arrived" % (dt, got, nbytes))
		if f.t != "core.fs.data":
			break
		got += len(f.p["data"])
	if f.t != "core.fs.response" or not f.p.get("ok") or got != nbytes:
		raise RuntimeError("fs read: %d of %d bytes, %r" % (got, nbytes, f))
	if handle is not None:
		fs_call(a, "CloseHandle", handle=handle)
	return nbytes / (time.perf_counter() - t)


class PartialRead(Exception):
	def __init__(self, bps, note):
		super().__init__(note)
		self.bps, self.note = bps, note


def fs_read_or_partial(a, path, nbytes, res):
	try:
		return fs_read(a, path, nbytes)
	except PartialRead as e:
		res["fs_read_note"] = e.note
		log(e.note)
		return e.bps


def fs_ok(f, what):
	if f.t != "core.fs.response" or not f.p.get("ok"):
		raise RuntimeError("%s: %r" % (what, f))


def fs_stat_rtt(a, warm, n):
	"""Seconds per core.fs.request Stat of "/" to its response, after warm
	untimed ones."""
	out = []
	for i in range(warm + n):
		t = time.perf_counter()
		mid = a.new_id()
		a.send(mid, "core.fs.request", {"op": {"Stat": {"path": "/"}}})
		f = a.recv(timeout=60, msg_id=mid)
		dt = time.perf_counter() - t
		fs_ok(f, "fs Stat")
		if i >= warm:
			out.append(dt)
	return out


SMALL = b"x" * 100


def fs_small_write_rtt(a, path, n):
	"""Seconds per Write of 100 bytes: request, one core.fs.data of 100 B,
	the empty data frame, until the ok response."""
	out = []
	for _ in range(n):
		t = time.perf_counter()
		mid = a.new_id()
		a.send(mid, "core.fs.request", {"op": {"Write": {"path": path, "mode": None}}})
		a.send(mid, "core.fs.data", {"data": SMALL})
		a.send(mid, "core.fs.data", {"data": b""})
		f = a.recv(timeout=60, msg_id=mid)
		out.append(time.perf_counter() - t)
		fs_ok(f, "fs small Write")
	return out


def fs_small_read_rtt(a, path, n):
	"""Seconds per Read of that 100-byte file, request to response."""
	out = []
	for _ in range(n):
		t = time.perf_counter()
		mid = a.new_id()
		a.send(mid, "core.fs.request", {"op": {"Read": {"path": path}}})
		got = b""
		while True:
			f = a.recv(timeout=60, msg_id=mid)
			if f.t != "core.fs.data":
				break
			got += f.p["data"]
		out.append(time.perf_counter() - t)
		fs_ok(f, "fs small Read")
		if got != SMALL:
			raise RuntimeError("fs small Read: %d bytes back" % len(got))
	return out


def concurrent_sessions(a, n):
	"""Wall seconds for n `cat` sessions that are all alive at once: start
	them all, wait until every one has started, then feed each its own
	line and collect every echo."""
	t = time.perf_counter()
	ids = [a.exec_start("cat") for _ in range(n)]
	for mid in ids:
		f = a.recv(timeout=120, msg_id=mid)
		if f.t != "core.exec.started":
			raise RuntimeError("session %d: %r" % (mid, f))
	for mid in ids:
		a.stdin(mid, b"session %d\n" % mid)
		a.stdin(mid, b"")
	for mid in ids:
		r = a.collect(mid, timeout=120)
		if r.code != 0 or r.stdout != b"session %d\n" % mid:
			raise RuntimeError("session %d: %r" % (mid, r))
	return time.perf_counter() - t


def guest_status(a):
	"""VmRSS and VmHWM (kB) of the guest's PID 1, via an exec of cat."""
	r = a.run("cat", "/proc/1/status")
	return parse_status(r.stdout.decode())


def parse_status(text):
	out = {}
	for line in text.splitlines():
		k, _, v = line.partition(":")
		if k in ("VmRSS", "VmHWM"):
			out[k] = int(v.split()[0])
	return out


def host_status(pid):
	with open("/proc/%d/status" % pid) as f:
		return parse_status(f.read())


# ---------------------------------------------------------------------------
# Host mode: our agent as a process over a socketpair.

def median_of(n, fn):
	samples = [fn() for _ in range(n)]
	return statistics.median(samples), samples


def host_scratch():
	return tempfile.mkdtemp(prefix="agentd-bench-",
				dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


def fresh(agentd, scratch, name, fn):
	"""Run fn on a fresh agent (so VmHWM is this workload's own peak):
	(fn's value, the agent's VmHWM, the client's CPU seconds)."""
	log("host: %s" % name)
	agentclient.AGENTD = agentd
	a = agentclient.Agent.spawn("--runtime-dir", scratch, stderr=subprocess.DEVNULL)
	try:
		cpu0 = time.process_time()
		v = fn(a)
		cpu = time.process_time() - cpu0
		st = host_status(a.proc.pid)
		a.shutdown()
	finally:
		a.close()
	return v, st["VmHWM"], cpu


def throughput(res, run, key, name, reps, fn):
	"""Median of reps transfers on one fresh agent (run = fresh bound to
	an agent binary and scratch dir)."""
	(bps, samples), hwm, cpu = run(name, lambda a: median_of(reps, lambda: fn(a)))
	res[key + "_Bps"], res[key + "_samples_Bps"] = bps, samples
	res[key + "_hwm_kb"], res[key + "_client_cpu_s"] = hwm, cpu


def host_fs(agentd, o, scratch, res, tag=""):
	"""The filesystem figures of one agent binary (issue 14): Stat, small
	Write and small Read round trips on one fresh agent, then the large
	write and read, each on a fresh agent.  tag: added to the log lines."""
	def run(name, fn):
		return fresh(agentd, scratch, name + tag, fn)
	small = os.path.join(scratch, "fssmall.bin")
	path = os.path.join(scratch, "fsbench.bin")

	def round_trips():
		def rtts(a):
			return (fs_stat_rtt(a, o.fs_stat_warm, o.fs_stat_n),
				fs_small_write_rtt(a, small, o.fs_small_n),
				fs_small_read_rtt(a, small, o.fs_small_n))
		(stat, wr, rd), _, _ = run("fs Stat / small Write / small Read round trips", rtts)
		res["fs_stat_rtt_median_s"] = statistics.median(stat)
		res["fs_stat_rtt_p99_s"] = percentile(stat, 99)
		res["fs_small_write_rtt_median_s"] = statistics.median(wr)
		res["fs_small_read_rtt_median_s"] = statistics.median(rd)
		res["fs_rtt_n"] = {"stat": len(stat), "small": len(wr)}

	def transfers():
		throughput(res, run, "fs_write", "fs write %d MiB" % (o.host_fs // MiB),
			   o.host_reps, lambda a: fs_write(a, path, o.host_fs))
		throughput(res, run, "fs_read", "fs read %d MiB" % (o.host_fs // MiB),
			   o.host_reps, lambda a: fs_read_or_partial(a, path, o.host_fs, res))
		res["fs_bytes"] = o.host_fs

	attempt(res, "fs_rtt_note", "fs round trips", round_trips, small)
	attempt(res, "fs_note", "fs", transfers, path)
	return res


def attempt(res, note, what, fn, scratch_file):
	"""fn(); a failure is noted in res[note] and logged instead of ending
	the run, and scratch_file goes in any case."""
	try:
		fn()
	except (RuntimeError, AssertionError, EOFError, TimeoutError) as e:
		res[note] = "%s skipped: %s" % (what, e)
		log(res[note])
	finally:
		if os.path.exists(scratch_file):
			os.unlink(scratch_file)


def host_mode(agentd, o):
	res = {}
	scratch = host_scratch()
	try:
		def run(name, fn):
			return fresh(agentd, scratch, name, fn)

		rtt, hwm, _ = run("exec rtt", lambda a: exec_rtt(a, o.host_execs))
		res["exec_rtt_median_s"] = statistics.median(rtt)
		res["exec_rtt_p99_s"] = percentile(rtt, 99)
		res["exec_rtt_n"] = len(rtt)
		res["exec_rtt_hwm_kb"] = hwm
		throughput(res, run, "stdout", "stdout %d MiB" % (o.host_stdout // MiB),
			   o.host_reps, lambda a: stdout_throughput(a, o.host_stdout))
		throughput(res, run, "stdin", "stdin %d MiB" % (o.host_stdin // MiB),
			   o.host_reps, lambda a: stdin_throughput(a, o.host_stdin))
		res["stdout_bytes"], res["stdin_bytes"] = o.host_stdout, o.host_stdin
		up, _, _ = run("64 MiB upload in 3 MiB stdin frames", lambda a: upload_memory(
			a, lambda: host_status(a.proc.pid)))
		res.update(up)
		up, _, _ = run("64 MiB fs Write in 3 MiB frames", lambda a: fs_upload_memory(
			a, lambda: host_status(a.proc.pid)))
		res.update(up)
		host_fs(agentd, o, scratch, res)
		wall, hwm, _ = run("%d concurrent sessions" % o.sessions,
				   lambda a: concurrent_sessions(a, o.sessions))
		res["sessions"], res["sessions_wall_s"] = o.sessions, wall
		res["sessions_hwm_kb"] = hwm
	finally:
		shutil.rmtree(scratch, ignore_errors=True)
	return res


def baseline_host_fs(agentd, o):
	"""host_fs() of the --baseline agent, in a scratch dir of its own."""
	scratch = host_scratch()
	try:
		return host_fs(agentd, o, scratch, {}, " (baseline %s)" % agentd)
	finally:
		shutil.rmtree(scratch, ignore_errors=True)


def resolve_baseline(spec):
	"""(binary path, name) of --baseline: a path to an agentd binary, or a
	git revision built once into ~/.cache/agentd-bench/agentd-HASH
	(git archive of the revision, make agentd in a temporary tree)."""
	if os.path.isfile(spec):
		return os.path.abspath(spec), os.path.basename(spec)
	r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", spec + "^{commit}"],
			   capture_output=True, text=True)
	if r.returncode != 0:
		sys.exit("bench: --baseline %s is neither a file nor a git revision" % spec)
	full = r.stdout.strip()
	cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or
			     os.path.expanduser("~/.cache"), "agentd-bench")
	out = os.path.join(cache, "agentd-" + full)
	if not os.path.exists(out):
		log("building agentd at %s" % full[:12])
		os.makedirs(cache, exist_ok=True)
		tmp = tempfile.mkdtemp(prefix="agentd-bench-base-")
		try:
			subprocess.run("git -C %s archive %s | tar -x -C %s" % (
				shlex.quote(ROOT), full, shlex.quote(tmp)), shell=True, check=True)
			# Not the variables of a `make bench RUNS=3 ...` this may run under.
			env = {k: v for k, v in os.environ.items()
			       if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
			r = subprocess.run(["make", "-C", tmp, "agentd"], capture_output=True,
					   text=True, env=env)
			if r.returncode != 0:
				sys.exit("bench: building agentd at %s failed:\n%s" % (full, r.stderr[-2000:]))
			shutil.copy(os.path.join(tmp, "agentd"), out + ".tmp")
			os.replace(out + ".tmp", out)
		finally:
			shutil.rmtree(tmp, ignore_errors=True)
	return out, full[:7]


# ---------------------------------------------------------------------------
# VM mode: the same kernel and initramfs contents, only /init differs.

def module_load_order(kver, names):
	"""Relative .ko paths of names and their dependencies, deps first."""
	kdir = "/lib/modules/%s" % kver
	deps = {}
	with open(os.path.join(kdir, "modules.dep")) as f:
		for line in f:
			if ":" in line:
				path, rest = line.split(":", 1)
				deps[path] = rest.split()
	by_name = {os.path.basename(p).split(".ko")[0].replace("-", "_"): p for p in deps}
	order = []

	def visit(p):
		for d in deps.get(p, []):
			visit(d)
		if p not in order:
			order.append(p)
	for n in names:
		if n in by_name:
			visit(by_name[n])
	return order


def kernel_version():
	return sorted(os.listdir("/lib/modules"))[-1]


HELPER_HEAD = """#!/bin/busybox sh
# Generated by bench/bench.py.  The peer (and the raw-port baseline) do
# not load kernel modules: load the ones our agent loads, in dependency
# order, and wait for the port named "agent" to appear.
PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t sysfs sysfs /sys
mount -t proc proc /proc
M=/lib/modules/$(uname -r)
read T0 X </proc/uptime
for m in %(modules)s; do
	insmod $M/$m || echo "helper: insmod $m failed"
done
read T1 X </proc/uptime
echo "bench-helper: modules loaded from $T0 to $T1"
PORT=
i=0
while [ -z "$PORT" ] && [ $i -lt 500 ]; do
	for d in /sys/class/virtio-ports/*; do
		[ "$(cat $d/name 2>/dev/null)" = agent ] && PORT=${d##*/}
	done
	[ -z "$PORT" ] && usleep 10000
	i=$((i+1))
done
"""

EXEC_TAIL = """umount /proc
umount /sys
exec %(agent)s
"""

# The raw-port baseline.  The guest opens the port and, with the host
# timing each transfer between one-byte markers:
#   S  host -> guest IN bytes, read by dd straight from the port      R
#      guest -> host OUT bytes, written by dd straight to the port    (host: D)
#   P  host -> guest IN bytes, port -> dd -> pipe -> dd               Q
#      guest -> host OUT bytes, dd -> pipe -> dd -> port              (host: E)
# then powers off.  The pipe variants are the limit for any agent that
# relays a child's pipe: one extra process hop and copy, no framing.
RAW_TAIL = """mount -t devtmpfs devtmpfs /dev
exec 3<>/dev/$PORT
printf S >&3
dd of=/dev/null bs=%(bs)d count=%(incount)d iflag=fullblock 2>/dev/null <&3
printf R >&3
dd if=/dev/zero bs=%(bs)d count=%(count)d 2>/dev/null >&3
head -c 1 <&3 >/dev/null
printf P >&3
dd bs=%(bs)d count=%(incount)d iflag=fullblock 2>/dev/null <&3 | dd of=/dev/null bs=%(bs)d 2>/dev/null
printf Q >&3
dd if=/dev/zero bs=%(bs)d count=%(count)d 2>/dev/null | dd bs=%(bs)d 2>/dev/null >&3
head -c 1 <&3 >/dev/null
poweroff -f
"""


def write_script(path, text):
	with open(path, "w") as f:
		f.write(text)
	os.chmod(path, 0o755)
	return path


def build_spawnbench(work):
	"""bench/spawnbench.c as a static binary for the guest, or None."""
	out = os.path.join(work, "spawnbench")
	cc = os.environ.get("MUSL_CC", "musl-gcc")
	r = subprocess.run([cc, "-std=gnu11", "-Os", "-static", "-o", out,
			    os.path.join(HERE, "spawnbench.c")], capture_output=True, text=True)
	if r.returncode != 0:
		log("spawnbench not built (%s): no guest spawn baseline" % r.stderr.strip()[-200:])
		return None
	return out


class Images:
	"""The initramfs images: identical contents except /init."""

	def __init__(self, o, agentd, peer, work):
		kver = kernel_version()
		self.spawnbench = build_spawnbench(work)
		mods = " ".join(module_load_order(kver, MODULES))
		head = HELPER_HEAD % {"modules": mods}
		self.work = work
		s_peer = write_script(os.path.join(work, "peer-init"),
				      head + EXEC_TAIL % {"agent": "/bin/peer-agentd"})
		s_ours = write_script(os.path.join(work, "ours-init"),
				      head + EXEC_TAIL % {"agent": "/sbin/agentd"})
		s_raw = write_script(os.path.join(work, "raw-init"), head + RAW_TAIL % {
			"incount": o.vm_stdin // DD_BS, "bs": DD_BS, "count": o.vm_stdout // DD_BS})
		common = ["%s=/sbin/agentd" % agentd, "%s=/bin/peer-init" % s_peer,
			  "%s=/bin/ours-init" % s_ours, "%s=/bin/raw-init" % s_raw]
		if peer:
			common.append("%s=/bin/peer-agentd" % peer)
		if self.spawnbench:
			common.append("%s=/bin/spawnbench" % self.spawnbench)
		self.paths = {}
		for kind, init in (("ours", agentd), ("peer", s_peer),
				   ("ours-helper", s_ours), ("raw", s_raw)):
			if kind in ("peer", "ours-helper") and not peer:
				continue
			out = os.path.join(work, "%s.cpio.gz" % kind)
			vmlib.build_initrd(out, init=init, add=common, modules=MODULES)
			self.paths[kind] = out


def accept(vm, timeout):
	"""QEMU's connection to the agent socket (the host listens first)."""
	vm.listener.settimeout(timeout)
	conn, _ = vm.listener.accept()
	conn.settimeout(None)
	return conn


def boot(kind, images, timeout=180, cmdline=""):
	"""Start a VM of the given kind; return (vm, agent) once ready."""
	rt = tempfile.mkdtemp(prefix="agentd-bench-rt-")
	# Behind the helper, the modules are already loaded: MSB_MODULES names
	# none, so our agent does exactly the work the peer does.
	env = {"MSB_MODULES": "none"} if kind == "ours-helper" else None
	vm = vmlib.VM(images.paths[kind], runtime_dir=rt, env=env, cmdline=cmdline)
	vm.bench_rt = rt
	vm.start()
	try:
		if kind == "peer":
			a = g7host.G7Agent(accept(vm, timeout))
			vm.agent = a
			a.send_bootstrap()
			a.boot(timeout=timeout, sent=True)
			vm.ready_wall_s = time.monotonic() - vm.t_start
			vm.ready = a.ready
		else:
			a = vm.connect(timeout=timeout)
	except BaseException:
		log("boot of %s failed; console:\n%s" % (kind, vm.console()[-3000:]))
		stop(vm)
		raise
	return vm, a


def stop(vm, agent=None):
	if agent is not None:
		try:
			agent.shutdown()
		except OSError:
			pass
		vm.wait_exit(10)
	vm.kill()
	shutil.rmtree(vm.bench_rt, ignore_errors=True)
	if vm.own_workdir:
		shutil.rmtree(vm.workdir, ignore_errors=True)


def helper_modules_s(console):
	"""Seconds the helper /init spent in insmod (/proc/uptime, 10 ms)."""
	m = re.search(r"bench-helper: modules loaded from ([0-9.]+) to ([0-9.]+)", console)
	return float(m.group(2)) - float(m.group(1)) if m else None


def ready_times(vm):
	p = vm.ready.p
	r = {"boot_time_ns": p["boot_time_ns"], "init_time_ns": p["init_time_ns"],
	     "ready_time_ns": p["ready_time_ns"],
	     "start_to_ready_s": (p["ready_time_ns"] - p["boot_time_ns"]) / 1e9,
	     "wall_to_ready_s": vm.ready_wall_s}
	mods = helper_modules_s(vm.console())
	if mods is not None:
		r["helper_modules_s"] = mods
		r["start_to_ready_with_modules_s"] = r["start_to_ready_s"] + mods
	return r


def vm_agent_run(kind, images, o):
	"""One boot: ready timings, exec RTT, stdout and stdin throughput, RSS."""
	vm, a = boot(kind, images)
	try:
		r = ready_times(vm)
		r["exec_rtt_median_s"] = statistics.median(exec_rtt(a, o.vm_execs))
		if kind == "ours" and images.spawnbench:
			r.update(guest_spawn(a, o.vm_execs))
		r["stdout_Bps"] = stdout_throughput(a, o.vm_stdout)
		r["stdin_Bps"] = stdin_throughput(a, o.vm_stdin)
		try:
			for size in o.vm_fs:
				path = "/fsbench-%d" % size
				r["fs_write_%d_Bps" % size] = fs_write(a, path, size)
				r["fs_read_%d_Bps" % size] = fs_read(a, path, size)
				fs_call(a, "Remove", path=path)
			r.update(fs_upload_memory(a, lambda: guest_status(a)))
		except (RuntimeError, TimeoutError, EOFError) as e:
			log("%s: fs transfers skipped: %s" % (kind, e))
		try:
			up = upload_memory(a, lambda: guest_status(a))
			r["upload_hwm_kb"], r["idle_rss_kb"] = up["upload_hwm_kb"], up["idle_rss_kb"]
		except (RuntimeError, TimeoutError, EOFError) as e:
			log("%s: upload memory skipped: %s" % (kind, e))
		r.update(guest_status(a))
	except BaseException:
		log("%s run failed; console:\n%s" % (kind, vm.console()[-3000:]))
		stop(vm)
		raise
	stop(vm, a)
	return r


BOOT_STEP_RE = re.compile(r"agentd: boot (step|module) ([\w.-]+): (\d+) us")


def parse_boot_trace(console):
	"""The agentd.trace=1 lines of a console: {"step NAME": s, "module NAME": s},
	in the order the boot printed them (dicts keep insertion order)."""
	out = {}
	for m in BOOT_STEP_RE.finditer(console):
		out["%s %s" % (m.group(1), m.group(2))] = int(m.group(3)) / 1e6
	return out


def vm_trace_boot(images):
	"""One boot of ours with agentd.trace=1: the duration of each boot step.
	A boot of its own: printing the steps on the serial console would slow
	the boots whose start to ready is measured."""
	vm, a = boot("ours", images, cmdline="agentd.trace=1")
	try:
		deadline = time.monotonic() + 10
		while "boot step ready" not in vm.console() and time.monotonic() < deadline:
			time.sleep(0.05)
		r = {"steps": parse_boot_trace(vm.console())}
		r.update(ready_times(vm))
	finally:
		stop(vm, a)
	return r


def vm_ready_only(kind, images):
	vm, a = boot(kind, images)
	r = ready_times(vm)
	stop(vm, a)
	return r


def expect_marker(s, m):
	got = s.recv(1)
	if got != m:
		raise RuntimeError("raw port: expected marker %r, got %r" % (m, got))


def time_h2g(s, nbytes, start, done):
	expect_marker(s, start)
	t = time.perf_counter()
	s.sendall(b"\0" * nbytes)
	expect_marker(s, done)
	return nbytes / (time.perf_counter() - t)


def time_g2h(s, nbytes, ack):
	t = time.perf_counter()
	got = 0
	while got < nbytes:
		chunk = s.recv(min(1 << 20, nbytes - got))
		if not chunk:
			raise RuntimeError("raw port: EOF after %d bytes" % got)
		got += len(chunk)
	bps = nbytes / (time.perf_counter() - t)
	s.sendall(ack)
	return bps


def vm_raw_port(images, o, timeout=180):
	"""Bytes/s the bare port carries, host->guest and guest->host, with a
	guest program on the port and with one pipe hop in between."""
	rt = tempfile.mkdtemp(prefix="agentd-bench-rt-")
	vm = vmlib.VM(images.paths["raw"], runtime_dir=rt)
	vm.bench_rt = rt
	vm.start()
	try:
		s = accept(vm, timeout)
		s.settimeout(timeout)
		out = (o.vm_stdout // DD_BS) * DD_BS
		r = {"h2g_Bps": time_h2g(s, o.vm_stdin, b"S", b"R"),
		     "g2h_Bps": time_g2h(s, out, b"D"),
		     "h2g_pipe_Bps": time_h2g(s, o.vm_stdin, b"P", b"Q"),
		     "g2h_pipe_Bps": time_g2h(s, out, b"E")}
		vm.wait_exit(10)
		s.close()
		return r
	except BaseException:
		log("raw port run failed; console:\n%s" % vm.console()[-3000:])
		raise
	finally:
		stop(vm)


def vm_mode(agentd, peer, o):
	work = tempfile.mkdtemp(prefix="agentd-bench-img-")
	try:
		images = Images(o, agentd, peer, work)
		runs = {"ours": [], "peer": [], "raw": [], "ours-helper": [], "trace": []}
		for i in range(o.boots):
			# A B A B ...: ours then the peer, then the bare port.
			log("vm round %d/%d: ours" % (i + 1, o.boots))
			runs["ours"].append(vm_agent_run("ours", images, o))
			if peer:
				log("vm round %d/%d: peer" % (i + 1, o.boots))
				runs["peer"].append(vm_agent_run("peer", images, o))
			log("vm round %d/%d: raw port" % (i + 1, o.boots))
			runs["raw"].append(vm_raw_port(images, o))
			if peer and o.helper_boots > i:
				log("vm round %d/%d: ours behind the peer's helper /init"
				    % (i + 1, o.boots))
				runs["ours-helper"].append(vm_ready_only("ours-helper", images))
		for i in range(o.trace_boots):
			log("vm trace boot %d/%d: ours with agentd.trace=1" % (i + 1, o.trace_boots))
			runs["trace"].append(vm_trace_boot(images))
		return runs
	finally:
		shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------
# Report

def percentile(xs, p):
	s = sorted(xs)
	k = (len(s) - 1) * p / 100.0
	lo = int(k)
	hi = min(lo + 1, len(s) - 1)
	return s[lo] + (s[hi] - s[lo]) * (k - lo)


def med(runs, key):
	vals = [r[key] for r in runs if key in r]
	return statistics.median(vals) if vals else None


# Targets (issue 13).  A target is a tuple (kind, op, value):
#   ("ratio", op, v)  ours/peer op v
#   ("abs", op, v)    ours (in the row's unit) op v
#   ("pipe", op, v)   ours as a fraction of the raw port through one pipe
#                     hop (ours_of_raw_pipe) op v
def RATIO(op, v):
	return ("ratio", op, v)


def ABS(op, v):
	return ("abs", op, v)


def OF_PIPE(op, v):
	return ("pipe", op, v)


OPS = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
       ">=": lambda a, b: a >= b, ">": lambda a, b: a > b}

SIZE_TARGET = ABS("<=", 80000)
UPLOAD_HWM_TARGET = ABS("<=", 1024)
IDLE_RSS_TARGET = ABS("<", 400)

# (key, label, unit, scale, better, target, raw-port key)
# better: "low" = smaller is better, "high" = larger is better.
VM_ROWS = [
	("start_to_ready_s", "VM agent start to ready", "ms", 1e3, "low", None, None),
	("wall_to_ready_s", "VM host wall time to ready", "s", 1, "low", None, None),
	("exec_rtt_median_s", "VM exec RTT `true` (median of 100)", "ms", 1e3, "low",
	 RATIO("<=", 0.5), None),
	("stdout_Bps", "VM stdout throughput", "MB/s", 1e-6, "high", OF_PIPE(">=", 0.8), "g2h"),
	("stdin_Bps", "VM stdin throughput", "MB/s", 1e-6, "high", OF_PIPE(">=", 0.8), "h2g"),
	("fs_upload_hwm_kb", "VM agent VmHWM after 64 MiB fs Write in 3 MiB frames", "kB", 1,
	 "low", UPLOAD_HWM_TARGET, None),
	("upload_hwm_kb", "VM agent VmHWM after 64 MiB stdin in 3 MiB frames", "kB", 1,
	 "low", UPLOAD_HWM_TARGET, None),
	("idle_rss_kb", "VM agent VmRSS 1 s after transfers end", "kB", 1, "low",
	 IDLE_RSS_TARGET, None),
	("VmRSS", "VM agent VmRSS after run", "kB", 1, "low", RATIO("<=", 0.25), None),
	("VmHWM", "VM agent VmHWM after run", "kB", 1, "low", RATIO("<=", 0.25), None),
]


def target_value(r):
	"""The figure a row's target is about, or None when it is missing."""
	spec = r.get("target_spec")
	if not spec:
		return None
	return {"ratio": r.get("ratio"), "abs": r.get("ours"),
		"pipe": r.get("ours_of_raw_pipe")}[spec[0]]


def set_meets_target(r):
	"""meets_target from whichever target the row has (absent when the
	row has no target or the figure it needs is missing)."""
	r.pop("meets_target", None)
	v = target_value(r)
	if v is not None:
		spec = r["target_spec"]
		r["meets_target"] = OPS[spec[1]](v, spec[2])
	return r


def target_text(spec, unit):
	kind, op, v = spec
	if kind == "ratio":
		return "ours/peer %s %g" % (op, v)
	if kind == "abs":
		return "ours %s %s" % (op, fmt(v, unit))
	return "ours %s %.0f%% of port+pipe" % (op, 100 * v)


def make_row(label, unit, ours, peer=None, better=None, target=None, raw=None,
	     scale=1.0, raw_pipe=None):
	"""One table row.  "target" stays the bare ratio (the chart's tick) for
	ratio targets; target_spec and target_text describe any target."""
	r = {"metric": label, "unit": unit,
	     "ours": None if ours is None else ours * scale,
	     "peer": None if peer is None else peer * scale,
	     "better": better,
	     "target": target[2] if target and target[0] == "ratio" else None}
	if target:
		r["target_spec"] = list(target)
		r["target_text"] = target_text(target, unit)
	if ours is not None and peer:
		r["ratio"] = ours / peer
	if raw and ours is not None:
		r["raw_port"] = raw * scale
		r["ours_of_raw"] = ours / raw
		if peer:
			r["peer_of_raw"] = peer / raw
	if raw_pipe and ours is not None:
		r["raw_port_pipe"] = raw_pipe * scale
		r["ours_of_raw_pipe"] = ours / raw_pipe
		if peer:
			r["peer_of_raw_pipe"] = peer / raw_pipe
	return set_meets_target(r)


def build_table(host, vm, sizes, o=None, base=None, base_name=None):
	"""One run's rows.  base: host_fs() figures of the --baseline agent."""
	rows = []

	def row(*args, **kw):
		rows.append(make_row(*args, **kw))

	row("binary size", "bytes", sizes["ours"], sizes.get("peer"), "low", SIZE_TARGET)
	for arch, size in sorted(sizes.get("ours_arch", {}).items()):
		row("binary size, %s" % arch, "bytes", size)
	if vm:
		ours, peer, raw = vm["ours"], vm["peer"], vm["raw"]
		for key, label, unit, scale, better, target, rawkey in VM_ROWS:
			row(label, unit, med(ours, key), med(peer, key), better, target,
			    med(raw, rawkey + "_Bps") if rawkey else None, scale,
			    med(raw, rawkey + "_pipe_Bps") if rawkey else None)
		for size in vm_fs_sizes(ours):
			for how in ("write", "read"):
				key = "fs_%s_%d_Bps" % (how, size)
				row("VM fs %s %d MiB" % (how, size // MiB), "MB/s", med(ours, key),
				    med(peer, key), "high", None, None, 1e-6)
		if peer:
			row("VM start to ready, module loading included", "ms",
			    med(ours, "start_to_ready_s"),
			    med(peer, "start_to_ready_with_modules_s"), "low", RATIO("<=", 0.4),
			    None, 1e3)
		if vm.get("ours-helper"):
			row("VM start to ready, both behind helper /init", "ms",
			    med(vm["ours-helper"], "start_to_ready_s"),
			    med(peer, "start_to_ready_s"), "low", RATIO("<=", 0.35), None, 1e3)
			row("VM wall to ready, both behind helper /init", "s",
			    med(vm["ours-helper"], "wall_to_ready_s"),
			    med(peer, "wall_to_ready_s"), "low", None, None, 1)
		spawn_rows(row, ours)
		trace_rows(row, vm.get("trace", []))
		row("VM raw port guest->host", "MB/s", med(raw, "g2h_Bps"), scale=1e-6)
		row("VM raw port host->guest", "MB/s", med(raw, "h2g_Bps"), scale=1e-6)
		row("VM raw port guest->host, one pipe hop", "MB/s",
		    med(raw, "g2h_pipe_Bps"), scale=1e-6)
		row("VM raw port host->guest, one pipe hop", "MB/s",
		    med(raw, "h2g_pipe_Bps"), scale=1e-6)
	if host:
		row("host exec RTT `true` median (n=%d)" % host["exec_rtt_n"], "ms",
		    host["exec_rtt_median_s"], scale=1e3)
		row("host exec RTT `true` p99", "ms", host["exec_rtt_p99_s"], scale=1e3)
		row("host stdout %d MiB" % (host["stdout_bytes"] // MiB), "MB/s",
		    host["stdout_Bps"], scale=1e-6)
		row("host stdin %d MiB" % (host["stdin_bytes"] // MiB), "MB/s",
		    host["stdin_Bps"], scale=1e-6)
		fs_rows(row, host, base, base_name)
		if "fs_upload_hwm_kb" in host:
			row("host agent VmHWM, 64 MiB fs Write in 3 MiB frames", "kB",
			    host["fs_upload_hwm_kb"], better="low", target=UPLOAD_HWM_TARGET)
		if "upload_hwm_kb" in host:
			row("host agent VmHWM, 64 MiB stdin in 3 MiB frames", "kB",
			    host["upload_hwm_kb"], better="low", target=UPLOAD_HWM_TARGET)
			row("host agent VmRSS 1 s after transfers end", "kB",
			    host["idle_rss_kb"], better="low", target=IDLE_RSS_TARGET)
		row("host %d concurrent sessions, wall" % host["sessions"], "s",
		    host["sessions_wall_s"])
		for key, name in (("exec_rtt", "exec RTT"), ("stdout", "stdout"),
				  ("stdin", "stdin"), ("fs_write", "fs write"),
				  ("fs_read", "fs read"), ("sessions", "sessions")):
			if key + "_hwm_kb" in host:
				row("host agent VmHWM, %s" % name, "kB", host[key + "_hwm_kb"])
	return rows


def vm_fs_sizes(runs):
	"""The sizes of the VM fs transfers measured in runs, ascending."""
	keys = {k for r in runs for k in r}
	return sorted(int(k.split("_")[2]) for k in keys
		      if re.fullmatch(r"fs_write_\d+_Bps", k))


def fs_rows(row, host, base=None, base_name=None):
	"""The host-mode filesystem rows (issue 14): round trips of small
	requests and the large transfers; with a baseline agent each row is
	followed by the same figure of that agent, labelled with its name."""
	def both(label, unit, key, scale, better):
		for res, suffix in ((host, ""), (base, ", agentd at %s" % base_name)):
			if res and key in res:
				cut = " (cut short)" if key == "fs_read_Bps" and "fs_read_note" in res else ""
				row(label + cut + suffix, unit, res[key], better=better, scale=scale)
	n = host.get("fs_rtt_n") or (base or {}).get("fs_rtt_n")
	if n:
		both("host fs Stat \"/\" RTT median (n=%d)" % n["stat"], "us",
		     "fs_stat_rtt_median_s", 1e6, "low")
		both("host fs Stat \"/\" RTT p99", "us", "fs_stat_rtt_p99_s", 1e6, "low")
		both("host fs Write 100 B RTT median (n=%d)" % n["small"], "us",
		     "fs_small_write_rtt_median_s", 1e6, "low")
		both("host fs Read 100 B RTT median (n=%d)" % n["small"], "us",
		     "fs_small_read_rtt_median_s", 1e6, "low")
	nbytes = host.get("fs_bytes") or (base or {}).get("fs_bytes")
	if nbytes:
		both("host fs write %d MiB" % (nbytes // MiB), "MB/s", "fs_write_Bps", 1e-6, "high")
		both("host fs read %d MiB" % (nbytes // MiB), "MB/s", "fs_read_Bps", 1e-6, "high")


def spawn_rows(row, ours):
	"""The guest's own spawn + reap of `true` beside the agent's exec round
	trip, and what is left of the round trip for the agent and the port."""
	rtt = med(ours, "exec_rtt_median_s")
	fastest = None
	for m in ("fork", "vfork", "posix_spawn"):
		v = med(ours, "guest_%s_s" % m)
		if v is not None:
			row("VM guest %s+exec+wait `true`, no agent (median)" % m, "ms", v, scale=1e3)
			fastest = v if fastest is None else min(fastest, v)
	if rtt is not None and fastest is not None:
		row("VM exec RTT `true` minus the guest's fastest spawn", "ms",
		    rtt - fastest, scale=1e3)


def trace_rows(row, runs):
	"""One row per boot step (and per module) of the agentd.trace=1 boots."""
	names = []
	for r in runs:
		names += [k for k in r["steps"] if k not in names]
	for k in names:
		vals = [r["steps"][k] for r in runs if k in r["steps"]]
		row("VM boot %s (agentd.trace=1)" % k, "ms", statistics.median(vals), scale=1e3)
	if runs:
		row("VM start to ready with agentd.trace=1", "ms",
		    med(runs, "start_to_ready_s"), scale=1e3)


def fmt(v, unit):
	if v is None:
		return "-"
	if unit == "bytes" or unit == "kB":
		return "{:,}".format(int(round(v)))
	if abs(v) >= 100:
		return "%.0f" % v
	if abs(v) >= 10:
		return "%.1f" % v
	return "%.2f" % v


def print_table(rows, out=sys.stdout):
	lines = table_lines(rows)
	w = [max(len(x[i]) for x in lines) for i in range(len(lines[0]))]
	sep = "  "
	print(sep.join(h.ljust(w[i]) for i, h in enumerate(lines[0])), file=out)
	print(sep.join("-" * w[i] for i in range(len(w))), file=out)
	for x in lines[1:]:
		print(sep.join(c.ljust(w[i]) if i < 2 else c.rjust(w[i])
			       for i, c in enumerate(x)), file=out)


def table_lines(rows):
	"""The table as rows of strings: header first.  With several runs the
	ratio is followed by the range of the per-run ratios."""
	hdr = ("metric", "unit", "ours", "peer", "ours/peer", "target",
	       "of raw port (of port+pipe)")
	lines = [hdr]
	for r in rows:
		ratio = "%.3f" % r["ratio"] if "ratio" in r else "-"
		spread = r.get("ratio_runs") or []
		lo, hi = "%.2f" % min(spread or [0]), "%.2f" % max(spread or [0])
		if "ratio" in r and len(spread) > 1 and lo != hi:
			ratio += " (%s-%s)" % (lo, hi)
		target = r.get("target_text") or "-"
		if "meets_target" in r:
			target += " ok" if r["meets_target"] else " MISS"
		raw = "-"
		if "ours_of_raw" in r:
			raw = "ours %.0f%%" % (100 * r["ours_of_raw"])
			if "ours_of_raw_pipe" in r:
				raw += " (%.0f%%)" % (100 * r["ours_of_raw_pipe"])
			if "peer_of_raw" in r:
				raw += ", peer %.0f%%" % (100 * r["peer_of_raw"])
			if "peer_of_raw_pipe" in r:
				raw += " (%.0f%%)" % (100 * r["peer_of_raw_pipe"])
		lines.append((r["metric"], r["unit"], fmt(r["ours"], r["unit"]),
			      fmt(r["peer"], r["unit"]), ratio, target, raw))
	return lines


MEDIAN_FIELDS = ("ours", "peer", "ratio", "raw_port", "ours_of_raw", "peer_of_raw",
		 "raw_port_pipe", "ours_of_raw_pipe", "peer_of_raw_pipe")


def median_table(tables):
	"""One table from the tables of several runs: per row (matched by
	metric, in first-seen order) the median over the runs of each figure;
	the ratio is the median of the per-run ratios (not the ratio of the
	medians), kept with them in ratio_runs; meets_target is recomputed on
	the medians."""
	order, by_metric = [], {}
	for rows in tables:
		for r in rows:
			if r["metric"] not in by_metric:
				order.append(r["metric"])
				by_metric[r["metric"]] = []
			by_metric[r["metric"]].append(r)
	out = []
	for metric in order:
		rs = by_metric[metric]
		m = {k: v for k, v in rs[0].items() if k not in MEDIAN_FIELDS}
		for k in MEDIAN_FIELDS:
			vals = [r[k] for r in rs if r.get(k) is not None]
			if vals:
				m[k] = statistics.median(vals)
			elif k in ("ours", "peer"):
				m[k] = None
		ratios = [r["ratio"] for r in rs if r.get("ratio") is not None]
		if ratios:
			m["ratio_runs"] = ratios
		m["runs"] = len(rs)
		out.append(set_meets_target(m))
	return out


def markdown_table(rows):
	lines = table_lines(rows)
	out = ["| " + " | ".join(lines[0]) + " |",
	       "|" + "|".join(["---", "---"] + ["--:"] * (len(lines[0]) - 2)) + "|"]
	for x in lines[1:]:
		out.append("| " + " | ".join(c.replace("|", "\\|") for c in x) + " |")
	return "\n".join(out) + "\n"


README_BEGIN = "<!-- bench results: written by bench.py -->"
README_END = "<!-- end of bench results -->"


def update_readme(result):
	"""Put the latest table into bench/README.md between the markers."""
	path = os.path.join(HERE, "README.md")
	with open(path) as f:
		text = f.read()
	a, b = text.find(README_BEGIN), text.find(README_END)
	if a < 0 or b < a:
		return
	m = result["machine"]
	n = len(result.get("runs") or [None])
	how = ("median of %d runs (ours/peer: the median of the per-run ratios, their "
	       "range in brackets)" % n if n > 1 else "one run")
	block = "%s\n\nRun of %s at commit %s on %s (%d CPUs), %s, guest kernel %s, %s, %.0f s; %s.\n\n%s" % (
		README_BEGIN, result["date"], result["git"], m["cpu"], m["cpus"], m["qemu"],
		os.path.basename(m["guest_kernel"] or "?"), m["accel"].upper(),
		result["duration_s"], how, markdown_table(result["table"]))
	if result["notes"]:
		block += "\n" + "".join("Note: %s\n" % n for n in result["notes"])
	with open(path + ".tmp", "w") as f:
		f.write(text[:a] + block + "\n" + text[b:])
	os.replace(path + ".tmp", path)


def machine_info():
	cpu = ""
	with open("/proc/cpuinfo") as f:
		for line in f:
			if line.startswith("model name"):
				cpu = line.split(":", 1)[1].strip()
				break
	qemu = subprocess.run([vmlib.QEMU, "--version"], capture_output=True,
			      text=True).stdout.splitlines()
	return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
		"guest_kernel": vmlib.find_kernel(), "qemu": qemu[0] if qemu else None,
		"accel": os.environ.get("VM_ACCEL", "tcg")}


def git_rev():
	r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
			   capture_output=True, text=True)
	return r.stdout.strip() or None


def parse_args():
	ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
	ap.add_argument("--peer", action="store_true",
			help="fetch (bench/fetch-peer) and measure microsandbox's agent")
	ap.add_argument("--peer-binary", help="use this peer binary instead of fetching")
	ap.add_argument("--agentd", default=os.path.join(ROOT, "agentd"))
	ap.add_argument("--boots", type=int, default=5, help="VM boots per agent")
	ap.add_argument("--helper-boots", type=int, default=5,
			help="boots of our agent behind the peer's helper /init")
	ap.add_argument("--trace-boots", type=int, default=1,
			help="boots of ours with agentd.trace=1 for the boot step rows")
	ap.add_argument("--agentd-arch", action="append", default=[], metavar="ARCH=PATH",
			help="another architecture's agentd for a size row (default: "
			     "agentd-ARCH next to agentd, when there)")
	ap.add_argument("--no-host", action="store_true")
	ap.add_argument("--no-vm", action="store_true")
	ap.add_argument("--quick", action="store_true",
			help="small sizes, one boot: a smoke test of the driver")
	ap.add_argument("--runs", type=int, default=1,
			help="complete measurements; the table gives the median of each "
			     "row over them (default 1)")
	ap.add_argument("--baseline", metavar="REV|PATH",
			help="also measure the host-mode fs figures of agentd built at "
			     "git revision REV (cached in ~/.cache/agentd-bench), or of "
			     "the agentd binary at PATH")
	ap.add_argument("--out", default=os.path.join(HERE, "results"))
	o = ap.parse_args()
	if o.runs < 1:
		ap.error("--runs must be at least 1")
	o.fs_stat_warm, o.fs_stat_n, o.fs_small_n = 200, 2000, 500
	o.host_execs, o.host_stdout, o.host_stdin, o.host_fs = 1000, GiB, 256 * MiB, GiB
	o.host_reps = 3
	o.sessions, o.vm_execs, o.vm_stdout, o.vm_stdin = 200, 100, 64 * MiB, 16 * MiB
	o.vm_fs = (5 * MiB, 64 * MiB)
	if o.quick:
		o.host_execs, o.host_stdout, o.host_stdin, o.host_fs = 50, 16 * MiB, 16 * MiB, 16 * MiB
		o.sessions, o.vm_execs, o.vm_stdout, o.vm_stdin = 20, 10, 4 * MiB, 1 * MiB
		o.vm_fs = (1 * MiB, 4 * MiB)
		o.boots, o.helper_boots, o.host_reps = 1, 1, 1
		o.fs_stat_warm, o.fs_stat_n, o.fs_small_n = 20, 200, 50
	return o


def arch_sizes(agentd, o):
	"""Sizes of other architectures' builds: --agentd-arch ARCH=PATH, or
	agentd-aarch64 next to agentd (make ARCH=aarch64) when it exists."""
	paths = dict(x.split("=", 1) for x in o.agentd_arch)
	if not paths:
		guess = agentd + "-aarch64"
		if os.path.exists(guess):
			paths["aarch64"] = guess
	return {arch: os.path.getsize(p) for arch, p in paths.items() if os.path.exists(p)}


def fetch_peer():
	r = subprocess.run([sys.executable, os.path.join(HERE, "fetch-peer")],
			   capture_output=True, text=True)
	if r.returncode != 0:
		sys.exit("bench: fetch-peer failed:\n" + r.stderr)
	return r.stdout.strip()


def measure_run(agentd, peer, base, base_name, sizes, o):
	"""One complete measurement: host mode (and the baseline's fs figures),
	then VM mode; its raw figures, its table and its notes."""
	host = None if o.no_host else host_mode(agentd, o)
	base_host = baseline_host_fs(base, o) if base and host is not None else None
	vm = None
	if not o.no_vm:
		if not (vmlib.have_qemu() and vmlib.find_kernel() and vmlib.have_virtiofsd()):
			log("VM mode skipped: needs qemu-system-x86_64, /boot/vmlinuz-* "
			    "and /usr/lib/qemu/virtiofsd")
		else:
			vm = vm_mode(agentd, peer, o)
	notes = [host[k] for k in ("fs_note", "fs_read_note", "fs_rtt_note")
		 if host and k in host]
	notes += ["%s: %s" % (base_name, base_host[k])
		  for k in ("fs_note", "fs_read_note", "fs_rtt_note")
		  if base_host and k in base_host]
	return {"host": host, "vm": vm, "baseline_host": base_host, "notes": notes,
		"table": build_table(host, vm, sizes, o, base_host, base_name)}


def main():
	o = parse_args()
	t_start = time.monotonic()
	agentd = os.path.abspath(o.agentd)
	peer = o.peer_binary or (fetch_peer() if o.peer else None)
	sizes = {"ours": os.path.getsize(agentd), "ours_arch": arch_sizes(agentd, o)}
	if peer:
		sizes["peer"] = os.path.getsize(peer)

	base, base_name = resolve_baseline(o.baseline) if o.baseline else (None, None)
	if base:
		sizes["baseline"] = os.path.getsize(base)
	runs = []
	for i in range(o.runs):
		if o.runs > 1:
			log("run %d/%d" % (i + 1, o.runs))
		runs.append(measure_run(agentd, peer, base, base_name, sizes, o))
		if o.runs > 1:
			print("run %d of %d:" % (i + 1, o.runs))
			print_table(runs[-1]["table"])
			print()
	rows = median_table([r["table"] for r in runs])
	if o.runs > 1:
		print("median of %d runs (ours/peer: median of the per-run ratios, "
		      "their range in brackets):" % o.runs)
	print_table(rows)
	notes = [("run %d: " % (i + 1) if o.runs > 1 else "") + n
		 for i, r in enumerate(runs) for n in r["notes"]]
	for n in notes:
		print("note: " + n)
	result = {
		"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
		"git": git_rev(), "machine": machine_info(),
		"config": {k: getattr(o, k) for k in (
			"boots", "host_reps", "host_execs", "host_stdout", "host_stdin", "host_fs",
			"sessions", "vm_execs", "vm_stdout", "vm_stdin", "quick", "trace_boots",
			"runs", "fs_stat_warm", "fs_stat_n", "fs_small_n")},
		"baseline": {"spec": o.baseline, "name": base_name, "binary": base} if base else None,
		"peer": {"package": "@superradcompany/microsandbox-linux-x64-gnu",
			 "version": "0.6.18"} if peer else None,
		"sizes": sizes, "notes": notes, "runs": runs, "table": rows,
		"duration_s": time.monotonic() - t_start,
	}
	os.makedirs(o.out, exist_ok=True)
	# Only a full run with the peer is "latest" (and goes into the README);
	# a run without it must not overwrite the comparison.
	name = "quick" if o.quick else "latest" if peer else "ours-only"
	with open(os.path.join(o.out, name + ".json"), "w") as f:
		json.dump(result, f, indent=1)
		f.write("\n")
	svg = svgchart.ratios_svg(rows, "agentd / microsandbox agent (%s, %s%s)"
				  % (result["date"][:10], result["machine"]["accel"].upper(),
				     ", median of %d runs" % o.runs if o.runs > 1 else ""))
	if svg:
		with open(os.path.join(o.out, ("quick-" if o.quick else "") + "ratios.svg"),
			  "w") as f:
			f.write(svg)
	if name == "latest" and os.path.abspath(o.out) == os.path.join(HERE, "results"):
		update_readme(result)
	log("done in %.0f s; results in %s" % (result["duration_s"], o.out))


if __name__ == "__main__":
	main()
