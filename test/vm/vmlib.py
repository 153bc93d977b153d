"""vmlib - boot a QEMU microVM with agentd as /init and talk to it.

Used by the VM scenarios (test/vm/vm_scenarios.py), ./microvm and bench/.
Run with Debian's /usr/bin/python3 (needs python3-cbor2 for agentd_client).

API
---
    from vmlib import VM, build_initrd, find_kernel, have_qemu

    find_kernel() -> str | None        newest /boot/vmlinuz-*, or $VM_KERNEL
    have_qemu() -> bool                qemu-system-x86_64 on PATH
    build_initrd(out, init=None, add=(), modules=None, guest=None) -> out
                                       runs test/vm/mkinitramfs (agentd as
                                       /init by default; add = ["SRC=DEST"];
                                       guest: guestarch.Guest for aarch64)

    VM(initrd, kernel=None, cmdline="", env=None, runtime_dir=None,
       mounts=None, mem=256, net=False, accel="auto", smp=1,
       workdir=None, qemu_args=(), disks=())
        initrd       initramfs path (see build_initrd)
        kernel       kernel image (default find_kernel())
        cmdline      extra kernel command line words
        env          dict of KEY=VALUE put on the kernel command line; the
                     kernel hands them to /init's environment (MSB_* config)
        runtime_dir  host dir shared as virtiofs tag "msb_runtime" (mounted at
                     /.msb by agentd); None: no share and the VM boots with
                     agentd.runtime=none
        mounts       {tag: host_dir}: more virtiofs shares (for MSB_MOUNTS)
        net          True: -netdev user + virtio-net-device (guest 10.0.2.15,
                     gateway 10.0.2.2, dns 10.0.2.3); MAC is VM.MAC
        disks        raw image paths: virtio-blk-device each (/dev/vda, vdb, ...)
        accel        "auto": $VM_ACCEL, else KVM when it really runs a guest
                     here, else TCG (test/vm/accel.py, shared with ./microvm);
                     "kvm", "tcg"; start() resolves it (.accel_why says why)
        arch         "x86_64" or "aarch64" (qemu-system-aarch64 -M virt -cpu
                     cortex-a57, always TCG on an x86-64 host)
        pci          True: the PCI transport (virtio-*-pci; machine q35 on
                     x86-64), else virtio-mmio (virtio-*-device)
        machine      QEMU machine (default microvm, q35 with pci, virt on arm)
        keep         True: QEMU may outlive this process (./microvm --keep);
                     otherwise it is SIGKILLed when this process dies

      .start()            listen on the agent socket, start virtiofsd(s), then
                          QEMU (-M microvm, console on the serial port captured
                          to .console_path); returns self
      .connect(timeout=60) -> agentd_client.lowlevel.Agent, after core.ready arrived
                          (vm.ready: the ready Frame, vm.ready_wall_s: seconds
                          from QEMU start to ready)
      .wait_exit(timeout) -> QEMU's exit status, or None if still running
      .console() -> str   everything the guest printed on the console so far
      .kill()             stop QEMU and the virtiofsd daemons (idempotent)
      with VM(...) as vm: start() on enter, kill() and workdir removal on exit

Facts baked in (see issue 5): tsc_early_khz=<host MHz*1000> so the guest's
timer calibrates under TCG; virtiofs needs a shared memfd memory backend and
non-legacy virtio-mmio; the host listens on the agent socket before QEMU
starts so the port is connected when the guest opens it.  aarch64 (issue
12): -cpu cortex-a57 (-cpu max is 5-10x slower under TCG), -nic none (a
default NIC shifts the virtio-mmio slots); Debian's arm64 kernel has
VIRTIO_MMIO, VIRTIO_PCI and VIRTIO_CONSOLE as modules, which agentd loads.
"""
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))

from agentd_client.lowlevel import Agent  # noqa: E402
import accel as accelmod  # noqa: E402

QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
QEMU_AARCH64 = os.environ.get("QEMU_AARCH64", "qemu-system-aarch64")
VIRTIOFSD = os.environ.get("VIRTIOFSD", "/usr/lib/qemu/virtiofsd")


def find_kernel():
    k = os.environ.get("VM_KERNEL")
    if k:
        return k if os.path.exists(k) else None
    ks = sorted(glob.glob("/boot/vmlinuz-*"))
    ks = [k for k in ks if os.access(k, os.R_OK)]
    return ks[-1] if ks else None


def have_qemu():
    return shutil.which(QEMU) is not None


def have_virtiofsd():
    return os.access(VIRTIOFSD, os.X_OK)


def build_initrd(out, init=None, add=(), modules=None, guest=None):
    cmd = [sys.executable, os.path.join(HERE, "mkinitramfs")]
    if guest:
        cmd += ["--kernel-version", guest.kver, "--modules-dir", guest.modules_dir,
                "--busybox", guest.busybox]
    if init:
        cmd += ["--init", init]
    if modules is not None:
        cmd += ["--modules", ",".join(modules)]
    for a in add:
        cmd += ["--add", a]
    subprocess.run(cmd + [out], check=True)
    return out


def tsc_khz():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except OSError:
        pass
    return None


def _kernel_arg(k, v):
    s = "%s=%s" % (k, v)
    return '"%s"' % s if " " in s else s


class VM:
    MAC = "02:5a:7b:13:01:02"

    def __init__(self, initrd, kernel=None, cmdline="", env=None, runtime_dir=None,
                 mounts=None, mem=256, net=False, accel="auto", smp=1,
                 workdir=None, qemu_args=(), disks=(), keep=False, arch="x86_64",
                 pci=False, machine=None):
        self.initrd = initrd
        self.arch = arch
        self.pci = pci
        self.machine = machine
        self.kernel = kernel or find_kernel()
        self.cmdline = cmdline
        self.env = dict(env or {})
        self.runtime_dir = runtime_dir
        self.mounts = dict(mounts or {})
        self.mem = mem
        self.net = net
        self.accel = accel
        self.accel_why = ""
        self.accel_console = ""
        self.keep = keep
        self.own_session = False
        self.smp = smp
        self.qemu_args = list(qemu_args)
        self.disks = list(disks)
        self.own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="agentd-vm-")
        self.console_path = os.path.join(self.workdir, "console.log")
        self.sock_path = os.path.join(self.workdir, "agent.sock")
        self.qemu = None
        self.daemons = []
        self.listener = None
        self.agent = None
        self.ready = None
        self.t_start = None
        self.ready_wall_s = None

    # -- lifecycle -------------------------------------------------------
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _start_virtiofsd(self, tag, src):
        sock = os.path.join(self.workdir, "vfs-%d.sock" % len(self.daemons))
        log = open(os.path.join(self.workdir, "virtiofsd-%s.log" % tag), "wb")
        p = subprocess.Popen([VIRTIOFSD, "--socket-path=" + sock, "-o", "source=" + src,
                              "-o", "cache=none"], stdin=subprocess.DEVNULL,
                             stdout=log, stderr=log,
                             preexec_fn=None if self.keep else accelmod.die_with_parent)
        log.close()
        self.daemons.append(p)
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("virtiofsd for %s did not start" % tag)
            time.sleep(0.02)
        return sock

    def qemu_command(self, shares):
        accel = self.accel
        arm = self.arch == "aarch64"
        words = ["console=ttyAMA0" if arm else "console=ttyS0", "reboot=t", "panic=-1"]
        if not os.environ.get("VM_VERBOSE"):
            words.append("quiet")
        khz = tsc_khz()
        if khz and accel == "tcg" and not arm:
            # tsc_early_khz: the guest cannot calibrate its TSC under TCG.
            # tsc=reliable: no clocksource watchdog; on a loaded host it
            # marks the TSC unstable, and microvm has no other timer, so
            # every sleep in the guest then hangs.
            words += ["tsc_early_khz=%d" % khz, "tsc=reliable"]
        if self.runtime_dir is None:
            words.append("agentd.runtime=none")
        if self.cmdline:
            words.append(self.cmdline)
        words += [_kernel_arg(k, v) for k, v in self.env.items()]
        machine = self.machine or ("virt" if arm else "q35" if self.pci else "microvm")
        # virtio-mmio devices are "-device", the PCI ones "-pci".
        bus = "pci" if self.pci else "device"
        cmd = [QEMU_AARCH64 if arm else QEMU, "-accel", accel, "-m", "%dM" % self.mem, "-smp", str(self.smp),
               "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
               "-serial", "stdio", "-kernel", self.kernel, "-initrd", self.initrd,
               "-append", " ".join(words)]
        if accel == "kvm":
            cmd += ["-cpu", "host"]
        elif arm:
            # -cpu max is 5-10x slower under TCG (pointer authentication).
            cmd += ["-cpu", "cortex-a57"]
        if arm:
            # A default NIC would shift the virtio-mmio slots.
            cmd += ["-nic", "none"]
        if shares:
            machine += ",memory-backend=mem"
            cmd += ["-object", "memory-backend-memfd,id=mem,size=%dM,share=on" % self.mem]
            if not self.pci:
                cmd += ["-global", "virtio-mmio.force-legacy=false"]
            for i, (tag, sock) in enumerate(shares):
                cmd += ["-chardev", "socket,id=vfs%d,path=%s" % (i, sock),
                        "-device", "vhost-user-fs-%s,chardev=vfs%d,tag=%s" % (bus, i, tag)]
        cmd[1:1] = ["-M", machine]
        cmd += ["-device", "virtio-serial-" + bus,
                "-chardev", "socket,id=agent,path=%s" % self.sock_path,
                "-device", "virtserialport,chardev=agent,name=agent"]
        for i, disk in enumerate(self.disks):
            cmd += ["-drive", "file=%s,if=none,format=raw,id=d%d" % (disk, i),
                    "-device", "virtio-blk-%s,drive=d%d" % (bus, i)]
        if self.net:
            cmd += ["-netdev", "user,id=n0", "-device",
                    "virtio-net-%s,netdev=n0,mac=%s" % (bus, self.MAC)]
        return cmd + self.qemu_args

    def start(self):
        if not self.kernel:
            raise RuntimeError("no kernel image found (set VM_KERNEL)")
        self.resolve_accel()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.sock_path)
        self.listener.listen(1)
        shares = []
        try:
            if self.runtime_dir is not None:
                shares.append(("msb_runtime", self._start_virtiofsd("msb_runtime",
                                                                     self.runtime_dir)))
            for tag, src in self.mounts.items():
                shares.append((tag, self._start_virtiofsd(tag, src)))
            self.cmd = self.qemu_command(shares)
            con = open(self.console_path, "wb")
            self.t_start = time.monotonic()
            self.qemu = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=con,
                                         stderr=subprocess.STDOUT,
                                         start_new_session=self.own_session,
                                         preexec_fn=None if self.keep
                                         else accelmod.die_with_parent)
            con.close()
        except BaseException:
            self.kill()
            raise
        return self

    def resolve_accel(self):
        """auto/kvm/tcg -> kvm or tcg (accel.choose; raises accel.KVMBroken
        when kvm was asked for and does not run a guest)."""
        if self.arch != os.uname().machine:
            if self.accel == "kvm":
                raise accelmod.KVMBroken("KVM cannot run an %s guest on this %s host"
                                         % (self.arch, os.uname().machine))
            self.accel, self.accel_why = "tcg", "the guest is %s, the host %s" % (
                self.arch, os.uname().machine)
        elif self.arch != "x86_64":
            # The KVM probe boots x86-64's microvm machine; on another host
            # KVM is used only when asked for.
            if self.accel == "auto":
                self.accel = os.environ.get("VM_ACCEL") or "tcg"
                self.accel_why = "no KVM probe on %s hosts" % self.arch
        elif self.accel in ("auto", "kvm"):
            v = accelmod.choose(self.kernel, shutil.which(QEMU) or QEMU, self.accel)
            self.accel, self.accel_why, self.accel_console = v

    def connect(self, timeout=60):
        """Accept QEMU's connection and wait for core.ready."""
        deadline = time.monotonic() + timeout
        self.listener.settimeout(0.2)
        while True:
            try:
                conn, _ = self.listener.accept()
                break
            except socket.timeout:
                if self.qemu.poll() is not None:
                    raise RuntimeError("QEMU exited (%s) before connecting; %s"
                                       % (self.qemu.returncode, self.diagnosis()))
                if time.monotonic() > deadline:
                    raise TimeoutError("QEMU did not connect to the agent socket; %s"
                                       % self.diagnosis())
        conn.settimeout(None)
        a = Agent(conn)
        while True:
            try:
                a.ready = a.recv(timeout=0.5)
                break
            except EOFError:
                self.wait_exit(5)
                raise RuntimeError("QEMU closed the agent socket before core.ready "
                                   "(%s); %s" % (self.qemu.poll(), self.diagnosis()))
            except TimeoutError:
                if self.qemu.poll() is not None:
                    raise RuntimeError("VM stopped before core.ready (%s); %s"
                                       % (self.qemu.returncode, self.diagnosis()))
                if time.monotonic() > deadline:
                    raise TimeoutError("no core.ready within %ss; %s"
                                       % (timeout, self.diagnosis()))
        assert a.ready.t == "core.ready", a.ready
        self.ready_wall_s = time.monotonic() - self.t_start
        self.ready = a.ready
        self.agent = a
        return a

    def wait_exit(self, timeout):
        try:
            return self.qemu.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def console(self):
        try:
            with open(self.console_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def diagnosis(self, lines=25):
        """Which accelerator ran and why, and the console's last lines: never
        an empty console alone."""
        s = "accel %s (%s)" % (self.accel, self.accel_why or "asked for")
        if self.accel_console:
            s += "; the KVM probe's console said:\n" + self.accel_console
        con = accelmod.last_lines(self.console().encode(), lines)
        state = "running" if self.qemu and self.qemu.poll() is None else (
            "exited with status %s" % (self.qemu.returncode if self.qemu else "?"))
        return "%s\nQEMU %s; the guest console's last lines:\n%s" % (s, state, con)

    def kill(self):
        if self.agent is not None:
            try:
                self.agent.sock.close()
            except OSError:
                pass
        for p in ([self.qemu] if self.qemu else []) + self.daemons:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.daemons = []
        if self.listener is not None:
            self.listener.close()
            self.listener = None


# ---- checks shared by the VM suites (through a booted VM's agent) ----

FS_CHUNK = 1 << 20


def sh(a, script, **kw):
    """stdout of `sh -c script` in the guest (run's keywords, a 120 s
    timeout unless given), which must exit 0."""
    kw.setdefault("timeout", 120)
    r = a.run("/bin/sh", "-c", script, **kw)
    assert r.code == 0, (script, r)
    return r.stdout.decode()


def check_exec_pipe_and_pty(a, timeout=120):
    """A pipe-mode exec (stdin, stdout, stderr apart, the exit code) and a
    terminal one (its size and a /dev/pts device)."""
    r = a.run("/bin/sh", "-c", "cat; echo err >&2; exit 3", stdin=b"hello\n", timeout=timeout)
    assert (r.code, r.stdout, r.stderr) == (3, b"hello\n", b"err\n")
    mid = a.exec_start("/bin/sh", tty=True, rows=33, cols=101)
    a.stdin(mid, b"stty size; tty; exit 7\r")
    r = a.collect(mid, timeout=timeout)
    assert r.code == 7, r
    assert b"33 101" in r.stdout and b"/dev/pts/" in r.stdout, r


def fs_write_blob(a, path, blob, mode):
    """Write blob to path in FS_CHUNK chunks; the response must be ok."""
    mid = a.new_id()
    a.send(mid, "core.fs.request", {"op": {"Write": {"path": path, "mode": mode}}})
    for off in range(0, len(blob), FS_CHUNK):
        a.send(mid, "core.fs.data", {"data": blob[off:off + FS_CHUNK]})
    a.send(mid, "core.fs.data", {"data": b""})
    f = a.recv(timeout=120, msg_id=mid)
    assert f.t == "core.fs.response" and f.p["ok"], f


def fs_read_digest(a, path, frame_timeout=120):
    """(bytes, sha256 hex) of a Read of path; a stalled stream fails when
    no frame comes within frame_timeout."""
    import hashlib
    mid = a.new_id()
    a.send(mid, "core.fs.request", {"op": {"Read": {"path": path}}})
    h, n = hashlib.sha256(), 0
    while True:
        f = a.recv(timeout=frame_timeout, msg_id=mid)
        if f.t != "core.fs.data":
            break
        h.update(f.p["data"])
        n += len(f.p["data"])
    assert f.t == "core.fs.response" and f.p["ok"], f
    return n, h.hexdigest()
