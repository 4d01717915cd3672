"""Transports move files to a device and run commands there. Local and SSH share one interface and one result."""

from .base import CommandResult, Transport, TransportError
from .local import LocalTransport

TRANSPORTS = {"local": LocalTransport}


def make_transport(name: str, **options) -> Transport:
    """The transport registered as ``name``."""
    from ..errors import HarnessError

    if name not in TRANSPORTS:
        raise HarnessError(f"unknown transport {name!r}; known: {', '.join(TRANSPORTS)}")
    return TRANSPORTS[name](**options)


__all__ = ["CommandResult", "Transport", "TransportError", "LocalTransport", "make_transport"]
