"""accel - pick QEMU's accelerator: KVM when it really runs a guest, else TCG.

Shared by ./microvm and vmlib (so by the VM tests and bench/): one decision.

/dev/kvm can open, and QEMU can start under KVM without an error, while the
guest never runs: with nested virtualisation on many cloud VMs and CI
runners the boot stops after the kernel's real-mode setup code ("Probing
EDD ... ok") and QEMU burns system time forever.  So "auto" first boots the
guest kernel alone under KVM and waits a few seconds for a sign of life from
the kernel proper (its first printk line, "Linux version", which
earlyprintk puts on the serial port at once); without one it kills that QEMU
and picks TCG.  The verdict is cached per host kernel, QEMU version and guest
kernel, so only the first run on a machine pays for the probe.

    choose(kernel, qemu, accel="auto") -> Verdict
        accel "auto": $VM_ACCEL when set, TCG when /dev/kvm does not open
        (no probe, nothing cached), else the cached or probed verdict.
        accel "kvm": probes (ignoring a cached verdict) and raises KVMBroken
        when KVM does not run the guest.  accel "tcg": TCG.
    Verdict(accel, why, console): why says where the choice came from;
        console holds the probe's last console lines when KVM was given up.

Environment:
    VM_ACCEL=kvm|tcg      force one for "auto" (no probe)
    VM_KVM_PROBE_S=N      seconds to wait for the sign of life (default 6)
    VM_KVM_DEVICE=PATH    TEST HOOK: the device checked instead of /dev/kvm
                          (test/vm/test-kvm-fallback, on machines without one)
    XDG_CACHE_HOME        the verdicts live in $XDG_CACHE_HOME/agentd/
                          (default ~/.cache/agentd/accel-*.json)
"""
import ctypes
import hashlib
import json
import os
import select
import signal
import subprocess
import time
from collections import namedtuple

LIFE = b"Linux version"
PROBE_S = 6.0
Verdict = namedtuple("Verdict", "accel why console")


class KVMBroken(RuntimeError):
    pass


def die_with_parent():
    """preexec_fn: SIGKILL the child when the Python process that started
    it dies, so no QEMU outlives a killed microvm or test."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kvm_device():
    return os.environ.get("VM_KVM_DEVICE", "/dev/kvm")


def kvm_opens():
    """None when the KVM device opens read-write, else why not."""
    dev = kvm_device()
    try:
        os.close(os.open(dev, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return "%s: %s" % (dev, e.strerror)
    return None


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "agentd")


def cache_key(kernel, qemu):
    try:
        v = subprocess.run([qemu, "--version"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30).stdout
        qver = v.decode(errors="replace").split("\n")[0]
    except (OSError, subprocess.TimeoutExpired):
        qver = "?"
    st = os.stat(kernel)
    return "host %s | %s | guest %s mtime %d size %d" % (
        os.uname().release, qver, os.path.realpath(kernel), int(st.st_mtime), st.st_size)


def cache_path(key):
    return os.path.join(cache_dir(), "accel-%s.json" % hashlib.sha256(key.encode()).hexdigest()[:16])


def cache_read(key):
    try:
        with open(cache_path(key)) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    if d.get("key") != key or d.get("accel") not in ("kvm", "tcg"):
        return None
    return d


def cache_write(key, accel, reason):
    path = cache_path(key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "w") as f:
            json.dump({"key": key, "accel": accel, "reason": reason,
                       "date": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
            f.write("\n")
        os.rename(tmp, path)
    except OSError:
        pass    # no cache: the next run probes again
    return path


def last_lines(data, n=8):
    lines = [ln.rstrip() for ln in data.decode(errors="replace").replace("\r", "").split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        return "(the console is empty: nothing at all came from the guest)"
    return "\n".join(lines[-n:])


def probe_command(kernel, qemu):
    return [qemu, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128M",
            "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio", "-kernel", kernel,
            "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1 reboot=t"]


def probe(kernel, qemu, deadline_s=None):
    """Boot the kernel alone under KVM: (True, why, "") when its first printk
    line arrives within deadline_s, else (False, why, last console lines).
    The probe's QEMU is always killed before this returns."""
    if deadline_s is None:
        deadline_s = float(os.environ.get("VM_KVM_PROBE_S", PROBE_S))
    t0 = time.monotonic()
    p = subprocess.Popen(probe_command(kernel, qemu), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         preexec_fn=die_with_parent)
    out = b""
    try:
        fd = p.stdout.fileno()
        while LIFE not in out:
            left = t0 + deadline_s - time.monotonic()
            if left <= 0:
                return (False, "no sign of life from the guest kernel under KVM within "
                        "%.0f s (QEMU ran, the kernel printed no line)" % deadline_s,
                        last_lines(out))
            if select.select([fd], [], [], left)[0]:
                data = os.read(fd, 65536)
                if not data:
                    p.wait()
                    return (False, "QEMU exited with status %s under KVM before the "
                            "guest kernel printed a line" % p.returncode, last_lines(out))
                out = out[-65536:] + data
        return True, "KVM ran the guest kernel (first line after %.1f s)" % (
            time.monotonic() - t0), ""
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()


def choose(kernel, qemu, accel="auto"):
    if accel == "tcg":
        return Verdict("tcg", "asked for", "")
    if accel == "auto":
        forced = os.environ.get("VM_ACCEL")
        if forced in ("kvm", "tcg"):
            return Verdict(forced, "forced by VM_ACCEL", "")
        why_not = kvm_opens()
        if why_not:
            return Verdict("tcg", why_not, "")
    elif accel != "kvm":
        raise ValueError("accel %r: want auto, kvm or tcg" % accel)
    else:
        why_not = kvm_opens()
        if why_not:
            raise KVMBroken("KVM asked for, but %s" % why_not)
    key = cache_key(kernel, qemu)
    if accel == "auto":
        d = cache_read(key)
        if d:
            return Verdict(d["accel"], "cached verdict (%s; %s, %s)"
                           % (d.get("reason", "?"), cache_path(key), d.get("date", "?")), "")
    ok, why, console = probe(kernel, qemu)
    path = cache_write(key, "kvm" if ok else "tcg", why)
    if ok:
        return Verdict("kvm", "probed: " + why, "")
    if accel == "kvm":
        raise KVMBroken("KVM asked for, but it does not run a guest here: %s; "
                        "the probe's console said:\n%s" % (why, console))
    return Verdict("tcg", "probed: %s; fell back to TCG (verdict cached in %s)"
                   % (why, path), console)
