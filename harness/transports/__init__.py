"""Transports move files to a device and run commands there. Local and SSH share one interface and one result."""

from .base import CommandResult, Transport, TransportError
from .local import LocalTransport
from .rpc import RpcTransport  # TVM's rpc client is imported only when a session is requested
from .ssh import SSHTransport  # paramiko itself is imported only when a connection opens

TRANSPORTS = {"local": LocalTransport, "ssh": SSHTransport}


def make_transport(name: str, **options) -> Transport:
    """The transport registered as ``name``, or the one a device names: ``ssh://[user@]host[:port]`` or a Host
    alias from ``~/.ssh/config`` (both built as :class:`SSHTransport` with ``host`` set), or
    ``rpc://TRACKER_HOST:PORT/KEY`` (:class:`RpcTransport`: a board of TVM's RPC tracker). Connects nothing."""
    from ..errors import HarnessError

    if "://" in name:
        scheme = name.partition("://")[0]
        if scheme == "rpc":
            return RpcTransport(name, **options)
        if scheme != "ssh":
            raise HarnessError(f"unknown device scheme {scheme!r} in {name!r}; known: ssh://[USER@]HOST[:PORT], "
                               "rpc://TRACKER_HOST:PORT/KEY")
        return SSHTransport(name, **options)
    if name not in TRANSPORTS:
        if name and name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            return SSHTransport(name, require_alias=True, **options)  # refused with the known forms if no alias
        hint = f"; did you mean ssh://{name}?" if "@" in name or ":" in name else ""
        raise HarnessError(f"unknown transport {name!r}; known: {', '.join(TRANSPORTS)}{hint}")
    if name == "ssh" and "host" not in options:
        raise HarnessError("the ssh transport needs a device: --device ssh://USER@HOST[:PORT] or a Host alias")
    return TRANSPORTS[name](**options)


__all__ = ["CommandResult", "Transport", "TransportError", "LocalTransport", "RpcTransport", "SSHTransport",
           "make_transport"]
