"""Exceptions of the agentd client library.

    AgentError                    everything below
    +-- TransportError            the connection: cannot connect, closed, timed out
    |   +-- ConnectionClosed      (also an EOFError) the agent closed the port
    |   +-- AgentTimeout          (also a TimeoutError) nothing arrived in time
    |   +-- SpawnAgentError       a local agentd process could not be started
    +-- ProtocolError             the agent sent something the protocol forbids
    +-- ExecError                 a command could not be started in the guest
    +-- FsError                   the guest refused a filesystem operation
"""


class AgentError(Exception):
    """Base class of every error this library raises."""


class TransportError(AgentError, OSError):
    """The connection to the agent failed."""


class ConnectionClosed(TransportError, EOFError):
    """The agent (or the VMM in front of it) closed the connection."""


class AgentTimeout(TransportError, TimeoutError):
    """Nothing the caller waited for arrived in time."""


class SpawnAgentError(TransportError):
    """A local agentd process (Client.spawn) could not be started or
    exited before it was ready."""


class ProtocolError(AgentError):
    """The peer broke the protocol (bad frame, unexpected message)."""


class ExecError(AgentError):
    """The command could not be started in the guest.

    The seed protocol reports a failed start as core.exec.exited code -1
    without core.exec.started and carries no reason on the wire (agentd logs
    the reason on the guest console).  The client asks the guest, as
    agentctl does, whether the program path and cwd exist, and says so:

        cmd        the program asked for
        kind       "not_found" (no such program, or a bad user), "bad_cwd"
                   (cwd is not a directory), or "other" (exists but could
                   not be run: not executable, rlimit, user switch ...)
        not_found  kind == "not_found"
        message    the text, e.g. "cannot run 'nope' in the guest: not found"
    """

    def __init__(self, cmd, kind, message):
        super().__init__(message)
        self.cmd, self.kind, self.message = cmd, kind, message

    @property
    def not_found(self):
        return self.kind == "not_found"


class FsError(AgentError):
    """The guest refused a filesystem operation.

        op      the operation ("Stat", "Write", ...)
        path    the path (for Copy and Rename: src)
        error   the guest's error text, e.g.
                "stat: No such file or directory (os error 2)"
        errno   the number in "(os error N)" when the text has one, else None
    """

    def __init__(self, op, path, error):
        super().__init__("%s %s: %s" % (op, path, error))
        self.op, self.path, self.error = op, path, error
        self.errno = None
        tail = "(os error "
        if error and error.endswith(")") and tail in error:
            num = error[error.rindex(tail) + len(tail):-1]
            if num.isdigit():
                self.errno = int(num)
