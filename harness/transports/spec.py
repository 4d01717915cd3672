"""Which device a run uses and how to reach it: ``--device`` and the ssh options, merged with the target profile.

The profile says how a kind of board is usually reached (transport, ssh port, remote Python, remote root); the
command line names the actual device and wins. Nothing here connects: :meth:`DeviceSpec.transport` returns an
unopened transport.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..errors import HarnessError
from . import TRANSPORTS, Transport, make_transport

#: options that only mean something for an ssh device (dataclass field -> command-line spelling)
_SSH_ONLY = {"identity": "--identity", "known_hosts": "--known-hosts", "trust_new_host": "--trust-new-host",
             "keep_remote": "--keep-remote", "remote_root": "--remote-root", "ssh_config": "--ssh-config"}


@dataclass(frozen=True)
class DeviceSpec:
    """The device chosen on the command line (every field optional: None/False = the profile's choice)."""

    device: str | None = None  # "local", "ssh://[user@]host[:port]", an ssh_config Host alias or rpc://HOST:PORT/KEY
    python: str | None = None  # interpreter on the device that runs the runner
    identity: tuple[str, ...] = ()  # private key files, tried before the ssh config's and ~/.ssh/id_*
    known_hosts: str | None = None  # default ~/.ssh/known_hosts (or the config's UserKnownHostsFile)
    trust_new_host: bool = False  # accept an unknown host key and record it in known_hosts
    keep_remote: bool = False  # leave the per-run directory on the device (for debugging)
    remote_root: str | None = None  # default: the profile's (~/.cache/sparsebench)
    ssh_config: str | None = None  # default ~/.ssh/config
    connect_timeout_s: float | None = None

    def transport_name(self, profile=None) -> str:
        """``local``, ``ssh`` or ``rpc`` (what the results' ``transport`` column says)."""
        device = self.device or (profile.transport if profile is not None else "local")
        if device.startswith("rpc://"):
            return "rpc"
        return device if device in TRANSPORTS else "ssh"

    def transport(self, profile=None, *, run_name: str = "") -> Transport:
        """The unopened transport for this device; ``run_name`` names the per-run directory on the device."""
        device = self.device or (profile.transport if profile is not None else "local")
        if self.transport_name(profile) in ("local", "rpc"):
            given = [flag for key, flag in _SSH_ONLY.items() if getattr(self, key)]
            if given and device.startswith("rpc://"):
                raise HarnessError(f"{', '.join(given)} only apply to ssh devices, not to the rpc board {device}; "
                                   "drop them (the tracker hands out the board)")
            if given:
                raise HarnessError(f"{', '.join(given)} only apply to ssh devices; add --device ssh://USER@HOST[:PORT]")
            if device.startswith("rpc://"):
                # --connect-timeout bounds the tracker's request for a free board (default 60 s)
                timeout = {"request_timeout_s": self.connect_timeout_s} if self.connect_timeout_s else {}
                return make_transport(device, run_name=run_name, **timeout)
            return make_transport("local")
        if device == "ssh":
            name = profile.name if profile is not None else "this"
            raise HarnessError(f"target {name!r} is reached over ssh: name the board with --device "
                               "ssh://USER@HOST[:PORT] (or a Host alias from ~/.ssh/config)")
        from_profile = profile is not None and profile.transport == "ssh"
        options = {
            "identity": self.identity, "known_hosts": self.known_hosts, "trust_new_host": self.trust_new_host,
            "keep": self.keep_remote, "ssh_config": self.ssh_config, "run_name": run_name,
            "remote_root": self.remote_root or (profile.remote_root if profile is not None else None),
            "default_port": profile.port if from_profile else None,
            "connect_timeout_s": self.connect_timeout_s,
        }
        # the link's fault handling, from the target profile where it sets them (TargetProfile fields of these names)
        for key in ("reconnect_attempts", "reconnect_backoff_s", "stall_s", "keepalive_s"):
            options[key] = getattr(profile, key, None)
        return make_transport(device, **{k: v for k, v in options.items() if v is not None})

    def python_for(self, profile=None) -> str:
        """The device's interpreter: --python, else the profile's when the profile's transport is used, else ""
        (the transport's default: the harness's own interpreter locally, ``python3`` over ssh)."""
        if self.python:
            return self.python
        if profile is not None and profile.transport == self.transport_name(profile):
            return profile.python
        return ""


def add_device_arguments(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """The device options shared by ``demo``, ``run`` and ``doctor``."""
    group = parser.add_argument_group("device")
    if positional:
        group.add_argument("device", nargs="?", default=None, metavar="DEVICE",
                           help="local, ssh://USER@HOST[:PORT], or a Host alias from ~/.ssh/config "
                                "(default: the target profile's transport)")
    else:
        group.add_argument("--device", metavar="DEVICE",
                           help="where to run: local, ssh://USER@HOST[:PORT], a Host alias from ~/.ssh/config, or "
                                "rpc://TRACKER_HOST:PORT/KEY (a board of TVM's rpc tracker) "
                                "(default: the target profile's transport)")
    group.add_argument("--python", metavar="PATH",
                       help="Python on the device with numpy and the TVM runtime (default: the profile's; "
                            "python3 over ssh)")
    group.add_argument("--identity", "-i", metavar="KEY", action="append", default=[],
                       help="ssh private key file (repeatable); the agent and ~/.ssh/id_* are tried too")
    group.add_argument("--known-hosts", metavar="PATH", help="known_hosts file (default ~/.ssh/known_hosts)")
    group.add_argument("--trust-new-host", action="store_true",
                       help="accept a host key not in known_hosts and record it there (check its fingerprint)")
    group.add_argument("--keep-remote", action="store_true",
                       help="keep the work files on the device, under REMOTE_ROOT/RUN_ID/")
    group.add_argument("--remote-root", metavar="DIR",
                       help="directory on the device for work files (default ~/.cache/sparsebench)")
    group.add_argument("--ssh-config", metavar="PATH", help="ssh client config (default ~/.ssh/config)")
    group.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                       help="ssh connect timeout (default 15); for an rpc:// device, how long to wait for a free "
                            "board (default 60)")


def device_spec_from_args(args: argparse.Namespace) -> DeviceSpec:
    """The :class:`DeviceSpec` the parsed options describe."""
    return DeviceSpec(device=args.device, python=args.python, identity=tuple(args.identity),
                      known_hosts=args.known_hosts, trust_new_host=args.trust_new_host, keep_remote=args.keep_remote,
                      remote_root=args.remote_root, ssh_config=args.ssh_config,
                      connect_timeout_s=args.connect_timeout)
