"""Opening the agent port: a Unix socket, a character device, an
inherited fd, or a local agentd on a socketpair.  Shared by both clients;
each returns a non-blocking fd the caller owns."""
import os
import socket
import stat
import subprocess

from .errors import ConnectionClosed, SpawnAgentError, TransportError

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO_AGENTD = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "agentd")


def default_agentd():
    """$AGENTD, else the agentd built in this repository, else "agentd"."""
    env = os.environ.get("AGENTD")
    if env:
        return env
    return _REPO_AGENTD if os.path.exists(_REPO_AGENTD) else "agentd"


def open_path(path):
    """A connected Unix socket, or an opened character device.
    Returns (fd, socket object or None)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise TransportError("agent port %s: %s" % (path, e.strerror)) from e
    try:
        if stat.S_ISSOCK(st.st_mode):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError:
                s.close()
                raise
            s.setblocking(False)
            return s.fileno(), s
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
        return fd, None
    except OSError as e:
        raise TransportError("agent port %s: %s" % (path, e.strerror)) from e


def adopt_fd(fd):
    """An inherited connected fd: made non-blocking, used as is."""
    try:
        os.set_blocking(fd, False)
    except OSError as e:
        raise TransportError("agent fd %d: %s" % (fd, e.strerror)) from e
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return fd, None
    return fd, s


def spawn_agentd(agentd=None, args=(), runtime_dir=None, heartbeat_interval=None,
                 env=None, stderr=None):
    """Start agentd in host mode on one end of a socketpair.
    Returns (socket for the host end, Popen)."""
    host, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    cmd = [agentd or default_agentd(), "--port-fd", str(guest.fileno())]
    if runtime_dir is not None:
        cmd += ["--runtime-dir", str(runtime_dir)]
    if heartbeat_interval is not None:
        cmd += ["--heartbeat-interval", str(heartbeat_interval)]
    cmd += [str(a) for a in args]
    wrapper = os.environ.get("AGENTD_WRAPPER")
    if wrapper:
        cmd = wrapper.split() + cmd
    try:
        proc = subprocess.Popen(cmd, pass_fds=(guest.fileno(),), env=env, stderr=stderr)
    except OSError as e:
        host.close()
        raise SpawnAgentError("cannot start %s: %s" % (cmd[0], e.strerror)) from e
    finally:
        guest.close()
    return host, proc


def wait_agentd(proc, timeout):
    """proc's exit status; past timeout it is killed, reaped, and the
    TimeoutExpired raised."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def read_some(fd, sock, n=1 << 20):
    """Bytes available now: b"" at EOF, None when nothing is available."""
    try:
        return sock.recv(n) if sock is not None else os.read(fd, n)
    except (BlockingIOError, InterruptedError):
        return None
    except ConnectionResetError:
        return b""
    except OSError as e:
        if e.errno == 5:  # EIO: a character device whose host side went away
            return b""
        raise TransportError("reading the agent port: %s" % e.strerror) from e


def write_some(fd, sock, data):
    """Bytes written now (0 when the port is full)."""
    try:
        return sock.send(data) if sock is not None else os.write(fd, data)
    except (BlockingIOError, InterruptedError):
        return 0
    except (BrokenPipeError, ConnectionResetError) as e:
        raise ConnectionClosed("the agent closed the connection") from e
    except OSError as e:
        raise TransportError("writing the agent port: %s" % e.strerror) from e
