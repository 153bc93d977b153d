"""guestarch - what an aarch64 guest needs, fetched from Debian's arm64 archive.

Shared by ./microvm --arch aarch64 and the aarch64 VM tests (vm_arch.py).

    aarch64_guest(log=None) -> Guest(kernel, kver, modules_dir, busybox)
        Debian's stock arm64 kernel (the package linux-image-arm64:arm64
        depends on) and busybox-static:arm64, fetched with `apt-get download`
        and unpacked with `dpkg-deb -x` (nothing is installed on the host)
        into $XDG_CACHE_HOME/agentd/aarch64/ (default ~/.cache/...) once;
        `depmod -b` writes the modules.dep the package lacks.  Its vmlinuz
        is a plain arm64 Image that QEMU's -kernel accepts.  Raises
        Unavailable (with the reason) when the arm64 archive is not set up
        (tools/install-deps adds it) or the download fails.
    missing_aarch64_tools() -> None, or why aarch64 VMs cannot run here
"""
import os
import shutil
import subprocess
import tempfile
from collections import namedtuple

import accel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
QEMU_AARCH64 = os.environ.get("QEMU_AARCH64", "qemu-system-aarch64")
Guest = namedtuple("Guest", "kernel kver modules_dir busybox")


class Unavailable(RuntimeError):
    pass


def which(tool):
    """shutil.which, also in the sbin directories a user's PATH may lack."""
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def missing_aarch64_tools():
    for tool, pkg in ((QEMU_AARCH64, "qemu-system-arm"), ("apt-get", "apt"),
                      ("dpkg-deb", "dpkg"), ("depmod", "kmod")):
        if not which(tool):
            return "%s not installed (apt-get install %s)" % (tool, pkg)
    return None


def _run(cmd, **kw):
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise Unavailable("%s failed: %s" % (" ".join(cmd), (r.stderr or r.stdout).strip()[-500:]))
    return r.stdout


def kernel_package():
    """The versioned arm64 kernel package, e.g. linux-image-6.1.0-57-arm64."""
    out = _run(["apt-cache", "depends", "linux-image-arm64:arm64"])
    for line in out.splitlines():
        w = line.split()
        if len(w) == 2 and w[0] == "Depends:" and w[1].startswith("linux-image-"):
            return w[1].split(":")[0]
    raise Unavailable("apt-cache depends linux-image-arm64:arm64 names no kernel "
                      "(is the arm64 architecture added? tools/install-deps does it)")


def _guest_in(d, kver):
    return Guest(os.path.join(d, "boot", "vmlinuz-" + kver), kver,
                 os.path.join(d, "lib", "modules"), os.path.join(d, "bin", "busybox"))


def aarch64_guest(log=None):
    why = missing_aarch64_tools()
    if why:
        raise Unavailable(why)
    pkg = kernel_package()
    kver = pkg[len("linux-image-"):]
    base = os.path.join(accel.cache_dir(), "aarch64")
    d = os.path.join(base, pkg)
    g = _guest_in(d, kver)
    if all(os.path.exists(p) for p in (g.kernel, g.busybox,
                                       os.path.join(g.modules_dir, kver, "modules.dep"))):
        return g
    if log:
        log("fetching %s and busybox-static for arm64 into %s" % (pkg, base))
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".fetch-", dir=base)
    try:
        _run(["apt-get", "download", pkg + ":arm64", "busybox-static:arm64"], cwd=tmp)
        root = os.path.join(tmp, "root")
        for deb in sorted(f for f in os.listdir(tmp) if f.endswith(".deb")):
            _run(["dpkg-deb", "-x", os.path.join(tmp, deb), root])
        _run([which("depmod"), "-b", root, kver])
        shutil.rmtree(d, ignore_errors=True)
        os.rename(root, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.exists(g.kernel) or not os.path.exists(g.busybox):
        raise Unavailable("the arm64 packages held no %s or %s" % (g.kernel, g.busybox))
    return g
