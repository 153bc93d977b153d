"""Fixtures for the library's tests: the real agentd in host mode.

- `spawn`: factory for Client.spawn with a private runtime dir; every client
  is closed at teardown and its agentd must exit 0;
- `client`: one such client;
- `relay`: after the boot, an agent port exposed on a Unix socket the way QEMU's
  `-chardev socket,server=on` exposes the guest's port (and so what
  `./microvm --keep` prints): agentd stays connected to the relay, clients
  connect to the socket one at a time, and the guest's output is dropped
  while nobody is connected.
"""
import os
import select
import socket
import subprocess
import sys
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from agentd_client import Client  # noqa: E402
from agentd_client import transport  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
AGENTD = transport.default_agentd()


@pytest.fixture
def runtime_dir(tmp_path):
    d = tmp_path / "runtime"
    (d / "scripts").mkdir(parents=True)
    return str(d)


@pytest.fixture
def spawn(runtime_dir):
    clients = []

    def make(*args, **kw):
        kw.setdefault("runtime_dir", runtime_dir)
        c = Client.spawn(*args, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        assert c.close(timeout=15) == 0


@pytest.fixture
def client(spawn):
    return spawn()


class Relay:
    """Listens on path; relays one client at a time to agentd."""

    def __init__(self, path, runtime_dir):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.guest, self.proc = transport.spawn_agentd(
            AGENTD, (), runtime_dir, None, None, subprocess.DEVNULL)
        self.stop_r, self.stop_w = os.pipe()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        conn = None
        while True:
            fds = [self.stop_r, self.guest] + ([conn] if conn else [self.listener])
            r, _, _ = select.select(fds, [], [])
            if self.stop_r in r:
                break
            if self.listener in r:
                conn, _ = self.listener.accept()
                continue
            if self.guest in r:
                try:
                    data = self.guest.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:  # agentd is gone: so is the VM
                    break
                if conn:  # nobody connected: the VMM drops it
                    try:
                        conn.sendall(data)
                    except OSError:
                        conn.close()
                        conn = None
            if conn and conn in r:
                try:
                    data = conn.recv(1 << 16)
                except OSError:
                    data = b""
                if data:
                    self.guest.sendall(data)
                else:
                    conn.close()
                    conn = None
        if conn:
            conn.close()

    def boot(self):
        """What ./microvm does before it prints the socket: wait, as the
        first client, until the agent serves (core.ready is used up)."""
        Client.connect(self.path, timeout=20).close()
        return self

    def close(self):
        os.write(self.stop_w, b"x")
        self.thread.join(10)
        self.guest.close()
        self.listener.close()
        status = self.proc.wait(timeout=15)
        os.close(self.stop_r)
        os.close(self.stop_w)
        return status


@pytest.fixture
def relay(tmp_path, runtime_dir):
    r = Relay(str(tmp_path / "agent.sock"), runtime_dir)
    yield r.boot()
    assert r.close() == 0
