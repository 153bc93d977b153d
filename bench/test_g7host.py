"""Tests of the benchmark's generation-7 host side (bench/g7host.py).

Run with: /usr/bin/python3 -m pytest -q bench/
No VM and no peer needed: a fake guest on a socketpair plays the agent.
"""
import json
import os
import socket
import struct
import threading

import cbor2
import pytest

import g7host

VECTORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
		       "test", "vectors")


def vector_frame(name):
	with open(os.path.join(VECTORS, name + ".json")) as f:
		return bytes.fromhex(json.load(f)["frame_hex"])


def read_frame(sock):
	hdr = b""
	while len(hdr) < 4:
		hdr += sock.recv(4 - len(hdr))
	n = struct.unpack(">I", hdr)[0]
	body = b""
	while len(body) < n:
		body += sock.recv(n - len(body))
	return hdr + body


class FakeGuest(threading.Thread):
	"""Reads the bootstrap, sends init.resolved, reads the ack, sends
	ready, the order SPEC 12.3 gives; records what it received."""

	def __init__(self, sock, skip_resolved=False):
		super().__init__(daemon=True)
		self.sock, self.skip_resolved = sock, skip_resolved
		self.got = []

	def run(self):
		self.got.append(read_frame(self.sock))
		if not self.skip_resolved:
			self.sock.sendall(vector_frame("g7-init-resolved"))
			self.got.append(read_frame(self.sock))
		self.sock.sendall(vector_frame("g7-ready"))


def pair():
	return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def test_boot_sends_the_default_bootstrap_and_acks_resolved():
	host, guest = pair()
	g = FakeGuest(guest)
	g.start()
	a = g7host.G7Agent(host)
	ready = a.boot(timeout=10)
	g.join(5)
	assert g.got[0] == vector_frame("g7-bootstrap-default")
	assert g.got[1] == vector_frame("g7-init-ack")
	assert ready.t == "core.ready" and ready.v == 7
	assert ready.p["agent_version"] == "0.6.14"
	assert a.resolved.p == {"default_user": {"uid": 1000, "gid": 1000}}


def test_ready_without_resolved_is_a_boot_failure():
	host, guest = pair()
	g = FakeGuest(guest, skip_resolved=True)
	g.start()
	with pytest.raises(g7host.BootError):
		g7host.G7Agent(host).boot(timeout=10)
	g.join(5)


def test_later_frames_carry_generation_7():
	host, guest = pair()
	a = g7host.G7Agent(host)
	mid = a.exec_start("true")
	f = read_frame(guest)
	env = cbor2.loads(f[9:])
	assert struct.unpack(">IB", f[4:9]) == (mid, 2)
	assert env["v"] == 7 and env["t"] == "core.exec.request"
