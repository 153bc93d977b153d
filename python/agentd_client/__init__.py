"""A host-side client for agentd (docs/PROTOCOL.md), pure Python on cbor2.

    from agentd_client import Client
    with Client.connect("/path/to/agent.sock") as c:   # or Client.spawn()
        r = c.run("sh", "-c", "echo hi; exit 3")
        r.stdout, r.code                                # b"hi\\n", 3
        c.upload("local.bin", "/tmp/remote.bin", progress=print)

Modules: client (blocking Client, Process), aio (AsyncClient,
AsyncProcess), protocol (the shared sans-I/O state machine and
operations), codec (frames and envelopes), transport (opening the port),
errors, lowlevel (raw frames, for the project's own tests).
"""
from .client import Client, Process
from .codec import FLAGS, FRAME_LEN_MAX, FS_CHUNK_MAX, Frame, encode_frame
from .errors import (AgentError, AgentTimeout, ConnectionClosed, ExecError,
                     FsError, ProtocolError, SpawnAgentError, TransportError)
from .protocol import Completed, Entry, Ready

__all__ = [
    "Client", "Process", "Completed", "Entry", "Ready",
    "AgentError", "TransportError", "ConnectionClosed", "AgentTimeout",
    "SpawnAgentError", "ProtocolError", "ExecError", "FsError",
    "FLAGS", "FRAME_LEN_MAX", "FS_CHUNK_MAX", "Frame", "encode_frame",
]


def __getattr__(name):
    # asyncio is imported only by those who use it.
    if name in ("AsyncClient", "AsyncProcess"):
        from . import aio
        return getattr(aio, name)
    raise AttributeError(name)
