"""Host side of the generation-7 boot handshake (SPEC 12.3-12.5).

A generation-7 agent (microsandbox's own, the "peer" of the benchmark)
reads a core.bootstrap frame before anything else, reports
core.init.resolved, waits for core.init.ack and only then sends
core.ready.  This module lets the benchmark drive it with the same test
client (agentd_client.lowlevel) that drives our seed-generation agent:

    a = G7Agent(sock)           # connected port, nothing read yet
    a.boot()                    # bootstrap -> resolved -> ack -> ready
    a.run("true")               # then the exchange is as in the seed

The bootstrap sent is the minimal valid one (every omittable field left
out, security_profile "default"; vectors/g7-bootstrap-default.json).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

from agentd_client import lowlevel as agentclient  # noqa: E402

G7 = 7
MINIMAL_BOOTSTRAP = {"security_profile": "default"}

# Flags of the generation-7 types the benchmark sends or receives
# (SPEC 12.2); the rest are the seed's.
G7_FLAGS = {
	"core.bootstrap": 0, "core.init.resolved": 0, "core.init.ack": 0,
	"core.exec.failed": 1, "core.exec.stdin.error": 0, "core.error": 1,
	"core.clock.sync": 0, "core.ping": 0, "core.pong": 1,
}
agentclient.FLAGS.update(G7_FLAGS)


class BootError(Exception):
	pass


class G7Agent(agentclient.Agent):
	"""An Agent that writes v = 7 on every frame and boots with the
	generation-7 handshake instead of waiting for a bare core.ready."""

	def send(self, msg_id, t, payload=None, **kw):
		kw.setdefault("v", G7)
		super().send(msg_id, t, payload, **kw)

	def send_bootstrap(self, bootstrap=None):
		"""Queue the bootstrap; the agent reads it as its first frame, so
		it may be sent before the guest has even opened the port."""
		self.send(0, "core.bootstrap",
			  MINIMAL_BOOTSTRAP if bootstrap is None else bootstrap)

	def boot(self, timeout=180, bootstrap=None, sent=False):
		"""Run the handshake; return the ready frame.  Frames before
		ready must decode (they do, or recv raises); anything other than
		init.resolved or ready before ready is a boot failure."""
		if not sent:
			self.send_bootstrap(bootstrap)
		self.resolved = None
		while True:
			f = self.recv(timeout=timeout)
			if f.t == "core.init.resolved":
				if self.resolved is not None:
					raise BootError("second core.init.resolved: %r" % f)
				self.resolved = f
				self.send(0, "core.init.ack", {})
			elif f.t == "core.ready":
				if self.resolved is None:
					raise BootError("core.ready before core.init.resolved")
				self.ready = f
				return f
			else:
				raise BootError("unexpected frame before ready: %r" % f)
