"""The library's codec against the golden vectors in test/vectors (the
way docs/PROTOCOL.md suggests testing any host): canonical vectors encode
to their exact bytes, valid ones decode, broken frames are rejected."""
import glob
import json
import os

import cbor2
import pytest

from agentd_client import codec
from agentd_client.errors import ProtocolError
from conftest import ROOT

VECTORS = [json.load(open(p)) for p in
           sorted(glob.glob(os.path.join(ROOT, "test", "vectors", "*.json")))
           if not p.endswith("INDEX.json")]
CANONICAL = [v for v in VECTORS if v["valid"] and v["canonical"] and v.get("frame_hex")]
VALID = [v for v in VECTORS if v["valid"] and v.get("frame_hex")]
BAD_FRAMES = [v for v in VECTORS if v["expect"] in ("frame_too_short", "frame_too_large",
                                                    "envelope_error")
              and v["name"] != "invalid-envelope-unknown-type"]


def names(vs):
    return [v["name"] for v in vs]


@pytest.mark.parametrize("v", CANONICAL, ids=names(CANONICAL))
def test_encoder_writes_the_canonical_bytes(v):
    payload = cbor2.loads(bytes.fromhex(v["payload_hex"])) if v["payload_hex"] else None
    raw = bytes.fromhex(v["payload_hex"]) if v["type"].endswith("shutdown") else None
    frame = codec.encode_frame(v["id"], v["type"], payload, v=v["generation"],
                               flags=v["flags"], raw_payload=raw)
    assert frame.hex() == v["frame_hex"]
    if v["generation"] == 1:  # the flags table is the seed generation's
        assert codec.FLAGS[v["type"]] == v["flags"]


@pytest.mark.parametrize("v", VALID, ids=names(VALID))
def test_decoder_reads_every_valid_frame(v):
    d = codec.FrameDecoder()
    wire = bytes.fromhex(v["frame_hex"])
    for i in range(0, len(wire), 7):  # any split of the stream
        d.feed(wire[i:i + 7])
    f = d.next()
    assert (f.id, f.flags, f.t) == (v["id"], v["flags"], v["type"])
    assert f.p_raw == bytes.fromhex(v["payload_hex"])
    assert d.next() is None


@pytest.mark.parametrize("v", BAD_FRAMES, ids=names(BAD_FRAMES))
def test_decoder_rejects_broken_frames(v):
    d = codec.FrameDecoder()
    d.feed(bytes.fromhex(v["frame_hex"]))
    with pytest.raises(ProtocolError):
        d.next()


def test_elided_maximal_chunk_fits_one_frame():
    v = next(x for x in VECTORS if x["name"] == "seed-fs-data-max-chunk")
    frame = codec.encode_frame(v["id"], v["type"], {"data": b"\0" * codec.FS_CHUNK_MAX})
    assert len(frame) - 4 <= codec.FRAME_LEN_MAX
    codec.check_frame(frame)
    with pytest.raises(ValueError):
        codec.check_frame(b"\0" * (codec.FRAME_LEN_MAX + 5))
