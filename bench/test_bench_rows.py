"""Tests of bench.py's boot step, spawn baseline and size rows, and of the
guest spawn helper (bench/spawnbench.c) built and run on the host.

Run with: /usr/bin/python3 -m pytest -q bench/test_bench_rows.py
No VM needed.
"""
import os
import subprocess
import types

import pytest

import bench

CONSOLE = """[    0.912] virtio-mmio: probe
agentd: boot step mounts: 1500 us, at 1500 us
agentd: boot module virtio_console: 20000 us
agentd: boot step modules: 25000 us, at 26500 us
agentd: init failed: nothing
agentd: boot step ready: 300 us, at 40000 us
"""


def test_parse_boot_trace_keeps_steps_and_modules_in_order():
	got = bench.parse_boot_trace(CONSOLE)
	assert list(got) == ["step mounts", "module virtio_console", "step modules", "step ready"]
	assert got["step mounts"] == pytest.approx(0.0015)
	assert got["module virtio_console"] == pytest.approx(0.020)


def collect_rows():
	rows = []

	def row(label, unit, ours, *args, scale=1.0, **kw):
		rows.append((label, unit, None if ours is None else ours * scale))
	return rows, row


def test_trace_rows_take_the_median_per_step():
	runs = [{"steps": {"step mounts": 0.001, "step ready": 0.002}, "start_to_ready_s": 0.05},
		{"steps": {"step mounts": 0.003}, "start_to_ready_s": 0.07},
		{"steps": {"step mounts": 0.002, "step ready": 0.004}, "start_to_ready_s": 0.06}]
	rows, row = collect_rows()
	bench.trace_rows(row, runs)
	got = {label: v for label, _, v in rows}
	assert got["VM boot step mounts (agentd.trace=1)"] == pytest.approx(2.0)
	assert got["VM boot step ready (agentd.trace=1)"] == pytest.approx(3.0)
	assert got["VM start to ready with agentd.trace=1"] == pytest.approx(60.0)


def test_spawn_rows_show_the_agents_share_of_the_round_trip():
	ours = [{"exec_rtt_median_s": 0.005, "guest_fork_s": 0.002, "guest_vfork_s": 0.0012,
		 "guest_posix_spawn_s": 0.0015}]
	rows, row = collect_rows()
	bench.spawn_rows(row, ours)
	got = {label: v for label, _, v in rows}
	assert got["VM guest vfork+exec+wait `true`, no agent (median)"] == pytest.approx(1.2)
	assert got["VM exec RTT `true` minus the guest's fastest spawn"] == pytest.approx(3.8)


def test_spawn_rows_absent_without_the_helper():
	rows, row = collect_rows()
	bench.spawn_rows(row, [{"exec_rtt_median_s": 0.005}])
	assert rows == []


def test_arch_sizes_tolerates_a_missing_build(tmp_path):
	agentd = tmp_path / "agentd"
	agentd.write_bytes(b"x" * 10)
	o = types.SimpleNamespace(agentd_arch=[])
	assert bench.arch_sizes(str(agentd), o) == {}
	(tmp_path / "agentd-aarch64").write_bytes(b"y" * 7)
	assert bench.arch_sizes(str(agentd), o) == {"aarch64": 7}
	o.agentd_arch = ["riscv64=%s" % (tmp_path / "nope")]
	assert bench.arch_sizes(str(agentd), o) == {}


@pytest.fixture(scope="module")
def spawnbench(tmp_path_factory):
	out = bench.build_spawnbench(str(tmp_path_factory.mktemp("spawnbench")))
	if out is None:
		pytest.skip("musl-gcc not available")
	return out


def test_spawnbench_times_each_method(spawnbench):
	r = subprocess.run([spawnbench, "5", "true"], capture_output=True, text=True, timeout=120)
	assert r.returncode == 0, r.stderr
	a = types.SimpleNamespace(run=lambda *args, **kw: types.SimpleNamespace(
		code=0, stdout=r.stdout.encode(), stderr=b""))
	got = bench.guest_spawn(a, 5)
	assert sorted(got) == ["guest_fork_s", "guest_posix_spawn_s", "guest_vfork_s"]
	assert all(v > 0 for v in got.values())


def test_spawnbench_fails_when_the_command_fails(spawnbench):
	r = subprocess.run([spawnbench, "3", "false"], capture_output=True, text=True, timeout=60)
	assert r.returncode == 1 and "fork of false failed" in r.stderr
	r = subprocess.run([spawnbench, "2", "/nonexistent/cmd"], capture_output=True, text=True,
			   timeout=60)
	assert r.returncode == 1


def test_spawnbench_usage(spawnbench):
	r = subprocess.run([spawnbench], capture_output=True, text=True, timeout=10)
	assert r.returncode == 2 and "usage" in r.stderr
