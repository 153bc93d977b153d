"""Frames and envelopes of the agentd protocol (docs/PROTOCOL.md).

Pure functions and one incremental decoder; no I/O.  Every other module of
the library (the protocol state machine, the blocking and asyncio clients,
the low-level test connection) encodes and decodes through here.
"""
import struct

import cbor2

from .errors import ProtocolError

SEED = 1                      # the generation agentd speaks
FRAME_LEN_MAX = 4194304       # largest value of the len field
FRAME_HEADER = 9              # len (4) + id (4) + flags (1)
FS_CHUNK_MAX = 3145728        # largest file chunk in one core.fs.data
ID_MAX = 0xFFFFFFFF

TERMINAL = 0x01
SESSION_START = 0x02
SHUTDOWN = 0x04

# Flags byte of each seed-generation type.  A dict (not a function) so a
# host speaking another generation can add its types (bench/g7host.py).
FLAGS = {
    "core.ready": 0, "core.shutdown": SHUTDOWN,
    "core.exec.request": SESSION_START, "core.exec.started": 0,
    "core.exec.stdin": 0, "core.exec.stdout": 0, "core.exec.stderr": 0,
    "core.exec.exited": TERMINAL, "core.exec.resize": 0,
    "core.exec.signal": 0, "core.fs.request": SESSION_START,
    "core.fs.response": TERMINAL, "core.fs.data": 0,
}


def encode_frame(msg_id, t, payload, v=SEED, flags=None, raw_payload=None):
    """One frame: header, then the envelope {v, t, p} with p the CBOR of
    payload (or raw_payload as is).  cbor2 writes dicts in insertion order
    with shortest heads and definite lengths: the canonical form.  No size
    check here (tests send oversized frames on purpose); see check_frame."""
    p = raw_payload if raw_payload is not None else cbor2.dumps(payload)
    body = cbor2.dumps({"v": v, "t": t, "p": p})
    if flags is None:
        flags = FLAGS.get(t, 0)
    return struct.pack(">IIB", len(body) + 5, msg_id, flags) + body


def check_frame(frame):
    """frame, or ValueError when it exceeds the protocol's frame limit."""
    if len(frame) - 4 > FRAME_LEN_MAX:
        raise ValueError("frame of %d bytes exceeds the %d-byte limit"
                         % (len(frame), FRAME_LEN_MAX + 4))
    return frame


class Frame:
    """A decoded frame: id, flags, v, t, the payload bytes p_raw and the
    decoded payload p (None for an empty payload)."""

    __slots__ = ("id", "flags", "v", "t", "p_raw", "p")

    def __init__(self, msg_id, flags, v, t, p_raw):
        self.id, self.flags, self.v, self.t, self.p_raw = msg_id, flags, v, t, p_raw
        self.p = cbor2.loads(p_raw) if p_raw else None

    def __repr__(self):
        p = self.p
        if isinstance(p, dict) and isinstance(p.get("data"), bytes) and len(p["data"]) > 64:
            p = dict(p, data=b"<%d bytes>" % len(p["data"]))
        return "Frame(id=%d, t=%s, flags=%d, p=%r)" % (self.id, self.t, self.flags, p)


def decode_body(msg_id, flags, body):
    """The Frame of one frame body; ProtocolError when the envelope or the
    payload does not decode."""
    try:
        env = cbor2.loads(body)
    except Exception as e:  # cbor2 raises several types
        raise ProtocolError("undecodable envelope on id %d: %s" % (msg_id, e))
    if not isinstance(env, dict) or not {"v", "t", "p"} <= set(env):
        raise ProtocolError("bad envelope on id %d: %r" % (msg_id, env))
    v, t, p = env["v"], env["t"], env["p"]
    if not (isinstance(v, int) and 0 <= v <= 255 and isinstance(t, str)
            and isinstance(p, bytes)):
        raise ProtocolError("bad envelope on id %d: %r" % (msg_id, env))
    try:
        return Frame(msg_id, flags, v, t, p)
    except Exception as e:
        raise ProtocolError("undecodable %s payload on id %d: %s" % (t, msg_id, e))


class FrameDecoder:
    """Incremental frame splitter.  feed() bytes as they arrive, then
    take frames with next() until it returns None.  It holds at most one
    partial frame (bounded by the frame limit) plus what was fed."""

    def __init__(self):
        self.buf = bytearray()
        self.pos = 0

    def feed(self, data):
        if self.pos and self.pos == len(self.buf):
            self.buf.clear()
            self.pos = 0
        elif self.pos > 1 << 20:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    def buffered(self):
        return len(self.buf) - self.pos

    def next(self):
        """The next complete Frame, or None.  ProtocolError on a length
        outside 5..FRAME_LEN_MAX (the stream cannot be resynchronised) or an
        undecodable envelope (that frame is consumed)."""
        b, i = self.buf, self.pos
        if len(b) - i < 4:
            return None
        n = struct.unpack_from(">I", b, i)[0]
        if n > FRAME_LEN_MAX or n < 5:
            raise ProtocolError("the agent sent a frame length of %d" % n)
        if len(b) - i < 4 + n:
            return None
        msg_id, flags = struct.unpack_from(">IB", b, i + 4)
        body = bytes(b[i + FRAME_HEADER:i + 4 + n])
        self.pos = i + 4 + n
        return decode_body(msg_id, flags, body)
