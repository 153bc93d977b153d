"""VM scenarios: PID 1 against a hostile root image and a bad MSB_HOSTNAME
(issue 17, PID 1 side).  Run with
    /usr/bin/python3 -m pytest -q -p no:cacheprovider test/vm/vm_hostile_init.py
(test/vm/run-vm-tests runs it too once it is listed there; the vm_ name keeps
`pytest test/` from collecting it).

Each boot uses MSB_BLOCK_ROOT on a small ext4 image, so what PID 1 did to the
root can be read back from the image after the VM powered off:

  hostname   MSB_HOSTNAME="bad#name": refused before any file is written
             (the image's /etc/hosts is unchanged)
  hosts      /etc/hosts -> /dev/vda: the write is refused, the disk untouched
  msb        /.msb -> /etc: the runtime share is not bound through it
  profile    /etc/profile is a FIFO: PID 1 refuses it instead of blocking
  ca         the CA bundle is a symlink (as on Fedora): replaced by a regular
             file with its content plus the CA, its target left alone
"""
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from vmlib import VM, build_initrd, find_kernel, have_qemu  # noqa: E402

if not (have_qemu() and find_kernel()):
    pytest.skip("no qemu-system-x86_64 or kernel image", allow_module_level=True)

MKE2FS = shutil.which("mke2fs") or "/usr/sbin/mke2fs"
DEBUGFS = shutil.which("debugfs") or "/usr/sbin/debugfs"
HOSTS = "192.0.2.1 original-hosts\n"
BLOCK_ENV = {"MSB_BLOCK_ROOT": "/dev/vda,fstype=ext4",
             "MSB_MODULES": "virtio_mmio,virtio_console,virtio_blk,crc32c_generic"}


@pytest.fixture(scope="module")
def initrd(tmp_path_factory):
    return build_initrd(str(tmp_path_factory.mktemp("initrd") / "initrd.cpio.gz"))


def make_image(d, hostile):
    """A tiny ext4 root; hostile(root) plants the trap."""
    if not (os.access(MKE2FS, os.X_OK) and os.access(DEBUGFS, os.X_OK)):
        pytest.skip("no mke2fs/debugfs (e2fsprogs)")
    root = d / "root"
    for sub in ("bin", "etc", "dev", "proc", "sys", "tmp", ".msb"):
        (root / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "etc" / "hosts").write_text(HOSTS)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    hostile(root)
    img = d / "root.img"
    subprocess.run([MKE2FS, "-q", "-F", "-t", "ext4", "-d", str(root), str(img), "32M"],
                   check=True)
    return img


def image_file(img, path):
    r = subprocess.run([DEBUGFS, "-R", "cat " + path, str(img)], capture_output=True)
    return r.stdout.decode(errors="replace")


def boot_expecting_power_off(initrd, img, env, message):
    with VM(initrd, env=dict(BLOCK_ENV, **env), disks=[str(img)]) as vm:
        status = vm.wait_exit(120)
        con = vm.console()
    assert status == 0, con[-2000:]
    assert message in con and "powering off" in con, con[-2000:]
    assert "Kernel panic" not in con, con[-2000:]
    return con


def test_bad_hostname_refused_before_any_file(initrd, tmp_path):
    img = make_image(tmp_path, lambda root: None)
    boot_expecting_power_off(initrd, img, {"MSB_HOSTNAME": "bad#name"},
                             "MSB_HOSTNAME: not an RFC 1123 host name")
    assert image_file(img, "/etc/hosts") == HOSTS


def test_hosts_symlink_to_the_disk_is_refused(initrd, tmp_path):
    def trap(root):
        (root / "etc" / "hosts").unlink()
        (root / "etc" / "hosts").symlink_to("/dev/vda")
    img = make_image(tmp_path, trap)
    # A write through the link lands at offset 0, before the superblock
    # (which mounting updates anyway).
    with open(img, "rb") as f:
        before = f.read(1024)
    boot_expecting_power_off(initrd, img, {"MSB_HOSTNAME": "box"}, "write /etc/hosts")
    with open(img, "rb") as f:
        assert f.read(1024) == before, "PID 1 wrote /etc/hosts through a symlink to the disk"


def test_msb_symlink_is_not_bound_through(initrd, tmp_path):
    def trap(root):
        (root / ".msb").rmdir()
        (root / ".msb").symlink_to("etc")
    img = make_image(tmp_path, trap)
    boot_expecting_power_off(initrd, img, {}, "bind /.msb on /newroot/.msb")


def test_profile_fifo_does_not_block_pid1(initrd, tmp_path):
    img = make_image(tmp_path, lambda root: os.mkfifo(root / "etc" / "profile"))
    boot_expecting_power_off(initrd, img, {}, "read /etc/profile")


PEM = ("-----BEGIN CERTIFICATE-----\nMIIBdGVzdC1jYS1mb3ItYWdlbnRk\n"
       "-----END CERTIFICATE-----\n")


def test_ca_bundle_symlink_is_replaced_not_written_through(initrd, tmp_path):
    """A bundle that is a symlink (as on Fedora) is replaced by a regular
    file with its content plus the CA; the link's target is not written."""
    def layout(root):
        (root / "etc" / "ssl").mkdir()
        (root / "etc" / "system-bundle.pem").write_text("SYSTEM CA\n")
        (root / "etc" / "ssl" / "cert.pem").symlink_to("/etc/system-bundle.pem")
    img = make_image(tmp_path, layout)
    rt = tmp_path / "runtime"
    (rt / "tls").mkdir(parents=True)
    (rt / "tls" / "ca.pem").write_text(PEM)
    env = dict(BLOCK_ENV, MSB_MODULES=BLOCK_ENV["MSB_MODULES"] + ",fuse,virtiofs")
    with VM(initrd, env=env, disks=[str(img)], runtime_dir=str(rt)) as vm:
        a = vm.connect(timeout=120)
        r = a.run("/bin/sh", "-c", "busybox cat /etc/system-bundle.pem; echo ---; "
                  "busybox stat -c %F /etc/ssl/cert.pem; busybox cat /etc/ssl/cert.pem; "
                  'echo "---$SSL_CERT_FILE"')
        a.shutdown()
        assert vm.wait_exit(10) == 0
    assert r.code == 0, r
    target, rest = r.stdout.decode().split("---\n", 1)
    assert target == "SYSTEM CA\n", "PID 1 wrote through the bundle's symlink"
    assert rest == "regular file\nSYSTEM CA\n" + PEM + "---/etc/ssl/cert.pem\n", rest
