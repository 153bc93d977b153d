"""VM scenarios on other machines and transports (issue 12).

Run by test/vm/run-vm-tests.  One boot per case, the scenarios that matter
most on each: ready, the agent port on the expected transport, exec in pipe
and PTY mode, a file round trip by checksum, signals, the runtime share
(virtiofs), shutdown.

  aarch64-virtio-serial-device  qemu-system-aarch64 -M virt -cpu cortex-a57,
                                virtio-mmio, Debian's stock arm64 kernel
                                (test/vm/guestarch.py fetches it), TCG
  aarch64-virtio-serial-pci     the same with the PCI transport
  x86_64-q35-virtio-serial-pci  a PC machine type (q35), PCI transport

The aarch64 cases skip, saying why, without qemu-system-arm, the cross
toolchain (make ARCH=aarch64) or the arm64 archive; the q35 case without
qemu-system-x86_64 or a kernel image.
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import guestarch  # noqa: E402
from vmlib import (VM, build_initrd, check_exec_pipe_and_pty, find_kernel,  # noqa: E402
                   fs_read_digest, fs_write_blob, have_qemu, have_virtiofsd, sh)

CASES = {
    "aarch64-virtio-serial-device": ("aarch64", False),
    "aarch64-virtio-serial-pci": ("aarch64", True),
    "x86_64-q35-virtio-serial-pci": ("x86_64", True),
}
BLOB = 4 << 20
_images = {}


def image(arch, tmpdir):
    """(kernel, initrd) for arch, built once per session; pytest.skip with
    the reason when this machine cannot boot it."""
    if arch in _images:
        if isinstance(_images[arch], str):
            pytest.skip(_images[arch])
        return _images[arch]
    try:
        _images[arch] = _build_image(arch, tmpdir)
    except guestarch.Unavailable as e:
        _images[arch] = "%s VM: %s" % (arch, e)
        pytest.skip(_images[arch])
    return _images[arch]


def _build_image(arch, tmpdir):
    out = os.path.join(tmpdir, "initrd-%s.cpio.gz" % arch)
    if arch == "x86_64":
        if not (have_qemu() and find_kernel()):
            raise guestarch.Unavailable("no qemu-system-x86_64 or kernel image")
        return find_kernel(), build_initrd(out)
    if not (shutil.which("aarch64-linux-gnu-gcc")
            and os.path.exists("/usr/lib/aarch64-linux-musl/musl-gcc.specs")):
        raise guestarch.Unavailable("no cross toolchain (gcc-aarch64-linux-gnu, "
                                    "musl-dev:arm64; tools/install-deps)")
    g = guestarch.aarch64_guest(log=print)
    # With the toolchain there, a failing build is a failure, not a skip.
    r = subprocess.run(["make", "-s", "-C", ROOT, "ARCH=aarch64"], capture_output=True,
                       text=True)
    assert r.returncode == 0, "make ARCH=aarch64 failed:\n" + r.stderr[-2000:]
    agentd = os.path.join(ROOT, "build", "aarch64", "agentd")
    return g.kernel, build_initrd(out, init=agentd, guest=g)


@pytest.fixture(scope="module", params=sorted(CASES))
def vm(request, tmp_path_factory):
    arch, pci = CASES[request.param]
    if arch == "aarch64":
        why = guestarch.missing_aarch64_tools()
        if why:
            pytest.skip("aarch64 VM: " + why)
    kernel, initrd = image(arch, tempfile.mkdtemp(dir=str(tmp_path_factory.getbasetemp())))
    rt = None
    if have_virtiofsd():
        rt = tmp_path_factory.mktemp("rt")
        (rt / "from-host").write_text("runtime share on %s\n" % request.param)
    v = VM(initrd, kernel=kernel, arch=arch, pci=pci, runtime_dir=str(rt) if rt else None)
    v.case = request.param
    v.start()
    try:
        v.connect(timeout=240)
        yield v
    finally:
        print("\n--- %s console (tail) ---\n%s" % (request.param, v.console()[-2000:]))
        v.kill()
        shutil.rmtree(v.workdir, ignore_errors=True)


def test_ready_on_the_expected_transport(vm, figures):
    arch, pci = CASES[vm.case]
    figures.record("vm %s: QEMU start to ready (%s)" % (vm.case, vm.accel.upper()),
                   vm.ready_wall_s, "s")
    a = vm.agent
    assert vm.ready.t == "core.ready" and vm.ready.p["boot_time_ns"] > 0
    assert sh(a, "uname -m").strip() == arch
    # The virtio console (device id 3) carries the agent port: its sysfs
    # path says which transport it hangs off.
    paths = sh(a, 'for d in /sys/bus/virtio/devices/*; do '
                  '[ "$(cat $d/device)" = 0x0003 ] && readlink -f $d; done; true').split()
    assert len(paths) == 1, paths
    assert ("/pci" in paths[0]) == pci, paths
    mods = {line.split()[0] for line in sh(a, "cat /proc/modules").splitlines()}
    assert "virtio_console" in mods, mods
    if pci:
        assert "virtio_pci" in mods, mods


def test_exec_pipe_and_pty(vm):
    check_exec_pipe_and_pty(vm.agent)


def test_file_round_trip_by_checksum(vm, figures):
    a = vm.agent
    blob = os.urandom(BLOB)
    digest = hashlib.sha256(blob).hexdigest()
    t0 = time.monotonic()
    fs_write_blob(a, "/root/blob", blob, 0o600)
    assert sh(a, "sha256sum /root/blob; stat -c %a /root/blob").split() == \
        [digest, "/root/blob", "600"]
    assert fs_read_digest(a, "/root/blob") == (len(blob), digest)
    figures.record("vm %s: 4 MiB fs Write+Read" % vm.case, time.monotonic() - t0, "s")


def test_signals(vm):
    a = vm.agent
    mid = a.exec_start("sleep", ["100"])
    assert a.recv(msg_id=mid, timeout=60).t == "core.exec.started"
    a.signal(mid, 15)
    r = a.collect(mid, timeout=60)
    assert (r.code, r.signal) == (-1, 15), r
    r = a.run("/bin/sh", "-c", "kill -KILL $$", timeout=60)
    assert (r.code, r.signal) == (-1, 9), r


def test_runtime_share(vm):
    if vm.runtime_dir is None:
        pytest.skip("no virtiofsd (apt-get install qemu-system-common)")
    out = sh(vm.agent, "grep ' /.msb ' /proc/mounts; cat /.msb/from-host")
    assert re.search(r"^msb_runtime /\.msb virtiofs ", out, re.M), out
    assert "runtime share on %s\n" % vm.case in out


def test_zz_shutdown(vm):
    vm.agent.shutdown()
    assert vm.wait_exit(60) == 0, vm.diagnosis()
    assert "Kernel panic" not in vm.console()
