"""A board reached over SSH (paramiko): the same interface and result type as the local transport.

What it promises:

- **Keys only.** The agent, ``IdentityFile`` entries, ``--identity`` files and ``~/.ssh/id_*``; never a password.
- **Host keys checked** against known_hosts (default ``~/.ssh/known_hosts``). An unknown host is refused with its
  fingerprint and the way to trust it; with ``trust_new_host`` it is accepted and appended to that file. A changed
  key is always refused.
- **One directory.** Everything it writes lives in ``<remote_root>/<run_name>/`` (default root
  ``~/.cache/sparsebench``); paths outside it are refused, :meth:`remove` and :meth:`close` clean it up unless
  ``keep`` is set.
- **Quoted commands.** A command is an argv list; every word, the working directory and each ``NAME=value``
  environment word is ``shlex.quote``-d for the remote POSIX shell.
- **Faults handled.** Keepalives every ``keepalive_s``; a lost connection raises :class:`ConnectionLost`, and
  :meth:`reconnect` retries ``reconnect_attempts`` times with a doubling backoff before raising
  :class:`~harness.errors.DeviceLost` (at once when the host key changed). While the runner runs
  (:attr:`heartbeat`), ``stall_s`` seconds without output raise :class:`Stalled`; an upload stalls after
  ``upload_floor_s`` + its size at 1 MB/s without progress. Commands run as their own process group (sshd's
  session; the runner makes sure) and are stopped as a group on timeout or interrupt. Every work directory has a
  ``.sparsebench-job`` marker (and ``.sparsebench-pid`` once a command ran there); the first connection sweeps
  the directories whose owner is gone. A command killed by a signal says which (``CommandResult.signal``).
- **Clear failures.** Every failure is a :class:`TransportError` whose message starts with ``device user@host:port``
  and says what to do; its step is ``connect``, ``prepare``, ``upload``, ``run``, ``fetch`` or ``clean``.

``~/.ssh/config`` is honoured for HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyJump, ProxyCommand,
UserKnownHostsFile, StrictHostKeyChecking (``accept-new`` = trust new hosts) and ConnectTimeout. paramiko is
imported only when a connection is opened.
"""

from __future__ import annotations

import base64
import errno
import getpass
import hashlib
import os
import posixpath
import re
import secrets
import select
import shlex
import socket
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeviceLost, HarnessError
from .base import (JOB_MARKER, JOB_PID, Cancelled, CommandResult, ConnectionLost, Stalled, Transport, TransportError,
                   pid_alive as _pid_alive)

DEFAULT_REMOTE_ROOT = "~/.cache/sparsebench"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_SSH_CONFIG = "~/.ssh/config"
DEFAULT_CONNECT_TIMEOUT_S = 15.0
DEFAULT_IO_TIMEOUT_S = 120.0  # one SFTP request or reply; a hung board shows up as a lost connection
DEFAULT_RECONNECT_ATTEMPTS = 3  # after a lost connection: reconnects before the device counts as lost
DEFAULT_RECONNECT_BACKOFF_S = 1.0  # wait before the first reconnect; doubled before each next one
DEFAULT_STALL_S = 60.0  # a running command that prints nothing (no heartbeat) for this long has stalled
DEFAULT_KEEPALIVE_S = 5.0
UPLOAD_FLOOR_S = 10.0  # an upload may take this long plus its size at UPLOAD_MIN_RATE before it counts as stalled
UPLOAD_MIN_RATE = 1 << 20  # bytes per second: the slowest link we wait for
STALE_FOREIGN_S = 24 * 3600  # a job directory of another host is swept only when this old and nothing runs in it

_HOST_RE = r"(?P<host>\[[^\]/@]+\]|[^\[\]:/@\s]+)"
_URL_RE = re.compile(rf"^ssh://(?:(?P<user>[^@/:\s]+)@)?{_HOST_RE}(?::(?P<port>\d+))?/?$")
_HOP_RE = re.compile(rf"^(?:(?P<user>[^@/:\s]+)@)?{_HOST_RE}(?::(?P<port>\d+))?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_ssh_url(text: str) -> tuple[str | None, str, int | None]:
    """``ssh://[user@]host[:port]`` -> (user, host, port); None where not given. IPv6 hosts go in brackets."""
    match = _URL_RE.match(text.strip())
    if not match:
        raise HarnessError(f"device {text!r} is not an ssh URL; write ssh://[USER@]HOST[:PORT], "
                           "e.g. ssh://pi@raspberrypi.local or ssh://u0_a123@192.168.1.20:8022")
    port = int(match.group("port")) if match.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise HarnessError(f"device {text!r}: port {port} is outside 1-65535")
    return match.group("user"), match.group("host").strip("[]"), port


@dataclass(frozen=True)
class Endpoint:
    """Where to connect once ``~/.ssh/config`` is applied."""

    alias: str  # what the user wrote (an ssh_config Host, or the host itself)
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    proxy_jump: str | None = None
    proxy_command: str | None = None
    known_hosts: str | None = None  # UserKnownHostsFile from ssh_config
    accept_new: bool = False  # StrictHostKeyChecking accept-new / no
    connect_timeout_s: float | None = None

    @property
    def label(self) -> str:
        """``user@host:port`` -- how results and messages name this device."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"


def _quiet_paramiko() -> None:
    """Paramiko's transport thread logs a failed handshake as ERROR lines with a traceback; with no handler
    configured Python prints them to stderr. Every failure reaches the user as our one-line message instead, so
    paramiko's own records go to a NullHandler (a developer who configures logging still sees them)."""
    import logging

    log = logging.getLogger("paramiko")
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())


def load_ssh_config(path: str | None):
    """The parsed ssh client config (empty when the default file does not exist)."""
    import paramiko

    explicit = path is not None
    file = Path(os.path.expanduser(path or DEFAULT_SSH_CONFIG))
    if not file.is_file():
        if explicit:
            raise HarnessError(f"ssh config {file} does not exist; check --ssh-config")
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(file))
    except Exception as err:  # paramiko raises several types for a bad file; all mean "fix this file"
        raise HarnessError(f"cannot read ssh config {file}: {err}") from None


def resolve_endpoint(host: str, *, config, user: str | None = None, port: int | None = None,
                     default_port: int | None = None, identity: tuple[str, ...] = ()) -> Endpoint:
    """Apply ``config`` (a paramiko SSHConfig) to ``host``. Precedence: explicit > ssh_config > profile default."""
    found = config.lookup(host)
    try:
        config_port = int(found["port"]) if "port" in found else None
    except ValueError:
        raise HarnessError(f"ssh config: Port {found['port']!r} for {host!r} is not a number") from None
    identities = tuple(os.path.expanduser(p) for p in identity)
    identities += tuple(os.path.expanduser(p) for p in found.get("identityfile", []) if p not in identity)
    proxy_jump = found.get("proxyjump")
    proxy_command = found.get("proxycommand")
    timeout = found.get("connecttimeout")
    return Endpoint(
        alias=host,
        hostname=found.get("hostname", host),
        port=port or config_port or default_port or 22,
        user=user or found.get("user") or getpass.getuser(),
        identity_files=identities,
        identities_only=str(found.get("identitiesonly", "no")).lower() == "yes",
        proxy_jump=None if not proxy_jump or proxy_jump.lower() == "none" else proxy_jump,
        proxy_command=None if not proxy_command or proxy_command.lower() == "none" else proxy_command,
        known_hosts=(found.get("userknownhostsfile") or "").split()[0] if found.get("userknownhostsfile") else None,
        accept_new=str(found.get("stricthostkeychecking", "")).lower() in ("accept-new", "no", "off"),
        connect_timeout_s=float(timeout) if timeout and str(timeout).isdigit() else None,
    )


def fingerprint(key) -> str:
    """``SHA256:...`` as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_hosts_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


class _UnknownHost(Exception):
    def __init__(self, name: str, key):
        super().__init__(name)
        self.name, self.key = name, key


def _host_key_policy(trust: bool, known_hosts: Path):
    """paramiko policy: refuse an unknown host, or (trust) accept it and append it to ``known_hosts``."""
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            if not trust:
                raise _UnknownHost(hostname, key)
            client.get_host_keys().add(hostname, key.get_name(), key)
            known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # append (never rewrite): other entries, hashed names and comments stay as they are
            with open(known_hosts, "a") as fh:
                if known_hosts.stat().st_size and not known_hosts.read_bytes().endswith(b"\n"):
                    fh.write("\n")
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            os.chmod(known_hosts, 0o600)

    return Policy()


class SSHTransport(Transport):
    """A device reached over SSH: SFTP for files, one exec channel per command.

    ``host`` is ``ssh://[user@]host[:port]``, a plain host name, or a Host alias from the ssh config
    (``require_alias=True`` insists on the latter, for ``--device NAME`` without a scheme). Nothing is opened until
    the first use (or ``with``).
    """

    name = "ssh"

    def __init__(self, host: str, *, user: str | None = None, port: int | None = None,
                 identity: str | list[str] | tuple[str, ...] = (), known_hosts: str | None = None,
                 trust_new_host: bool = False, ssh_config: str | None = None, remote_root: str | None = None,
                 run_name: str = "", keep: bool = False, connect_timeout_s: float | None = None,
                 io_timeout_s: float = DEFAULT_IO_TIMEOUT_S, default_port: int | None = None,
                 require_alias: bool = False, reconnect_attempts: int = DEFAULT_RECONNECT_ATTEMPTS,
                 reconnect_backoff_s: float = DEFAULT_RECONNECT_BACKOFF_S, stall_s: float = DEFAULT_STALL_S,
                 keepalive_s: float = DEFAULT_KEEPALIVE_S, sweep: bool = True):
        if host.startswith("ssh://"):
            url_user, host, url_port = parse_ssh_url(host)
            user, port = user or url_user, port or url_port
        if isinstance(identity, str):
            identity = (identity,)
        for path in identity:
            if not Path(os.path.expanduser(path)).is_file():
                raise HarnessError(f"identity file {path} does not exist; pass the private key with --identity PATH")
        config = load_ssh_config(ssh_config)
        if require_alias and host not in config.get_hostnames():
            where = ssh_config or DEFAULT_SSH_CONFIG
            raise HarnessError(f"unknown device {host!r}: not a transport (local, ssh), not ssh://[USER@]HOST[:PORT] "
                               f"and not a Host in {where}; e.g. --device ssh://pi@{host}")
        self._config = config
        self.endpoint = resolve_endpoint(host, config=config, user=user, port=port, default_port=default_port,
                                         identity=tuple(identity))
        self.known_hosts = Path(os.path.expanduser(known_hosts or self.endpoint.known_hosts or DEFAULT_KNOWN_HOSTS))
        self.trust_new_host = trust_new_host or self.endpoint.accept_new
        self.remote_root = remote_root or DEFAULT_REMOTE_ROOT
        self.run_name = _safe(run_name) or time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        self.keep = keep
        self.connect_timeout_s = connect_timeout_s or self.endpoint.connect_timeout_s or DEFAULT_CONNECT_TIMEOUT_S
        self.io_timeout_s = io_timeout_s
        self.reconnect_attempts = max(0, int(reconnect_attempts))
        self.reconnect_backoff_s = max(0.0, float(reconnect_backoff_s))
        self.stall_s = float(stall_s) if stall_s else None
        self.keepalive_s = keepalive_s
        self.upload_floor_s = UPLOAD_FLOOR_S
        self.token = secrets.token_hex(8)  # names this transport in the job markers it writes
        _LIVE.add(self.token)
        self.sweep = sweep  # on the first connection: remove stale job directories of this harness
        self.swept: list[str] = []  # the job directories that sweep removed
        self.last_pid: int | None = None  # the process (group) of the last command run, once it printed its pid
        self.home: str | None = None  # remote home directory, known once connected
        self.session_dir: str | None = None  # <root>/<run_name>, created by the first make_workdir
        self._client = None
        self._sftp = None
        self._hops: list = []  # clients of ProxyJump hosts, closed with the main one

    # -- naming ------------------------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return self.endpoint.label

    def _error(self, step: str, message: str, result: CommandResult | None = None, *,
               reason: str | None = None) -> TransportError:
        err = TransportError(step, f"device {self.device}: {message}", result)
        err.reason = reason or message  # the short cause, for "unreachable after N reconnects (last: ...)"
        return err

    # -- connection --------------------------------------------------------------------------------------------

    def _connected(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active() and self._sftp is not None

    def connect(self) -> None:
        _LIVE.add(self.token)
        if self._connected():
            return
        self._drop()
        start = time.perf_counter()
        try:
            sock = self._proxy_sock()
            self._client = self._open(self.endpoint, sock, "device")
            _record_exit_signals()
            if self.keepalive_s:
                self._client.get_transport().set_keepalive(max(1, int(self.keepalive_s)))
            try:
                self._sftp = self._client.open_sftp()
                self._sftp.get_channel().settimeout(self.io_timeout_s)
                self.home = self._sftp.normalize(".")
            except Exception as err:
                raise self._error("connect", f"SFTP is not available ({_why(err)}); enable the sftp Subsystem in "
                                             "the device's sshd_config (Termux: pkg install openssh-sftp-server)")
        except BaseException:
            self._drop()
            raise
        finally:
            self.connect_s += time.perf_counter() - start
        if self.sweep and not getattr(self, "_swept_once", False):
            self._swept_once = True
            self._sweep_stale()

    def reconnect(self, why: str = "") -> None:
        """A fresh connection after a lost one: up to ``reconnect_attempts`` tries, waiting ``reconnect_backoff_s``
        before the first and twice as long before each next. Raises :class:`DeviceLost` (the run stops) when every
        try failed, or at once when the host key changed."""
        self._drop()
        start = time.monotonic()
        delay, last = self.reconnect_backoff_s, why or "connection lost"
        for _ in range(self.reconnect_attempts):
            time.sleep(delay)
            delay *= 2
            try:
                self.connect()
                return
            except TransportError as err:
                if getattr(err, "host_key_changed", False):
                    raise DeviceLost(str(err)) from None  # the CLI's stop line says how to resume
                last = getattr(err, "reason", str(err))
        raise DeviceLost(f"device ssh://{self.device} unreachable after {self.reconnect_attempts} reconnects over "
                         f"{time.monotonic() - start:.0f} s (last: {last})") from None

    def _open(self, ep: Endpoint, sock, role: str):
        """An authenticated paramiko client for ``ep`` (the device or a jump host); failures become one message."""
        import paramiko

        _quiet_paramiko()

        who = "" if role == "device" else f"jump host {ep.label}: "
        client = paramiko.SSHClient()
        known = self.known_hosts
        try:
            for path in (Path("/etc/ssh/ssh_known_hosts"), known):
                if path.is_file():
                    client.get_host_keys().load(str(path))
        except Exception as err:
            raise self._error("connect", f"cannot read known_hosts {known} ({_why(err)}); fix or move that file")
        client.set_missing_host_key_policy(_host_key_policy(self.trust_new_host, known))
        timeout = self.connect_timeout_s
        name = _known_hosts_name(ep.hostname, ep.port)
        try:
            client.connect(ep.hostname, port=ep.port, username=ep.user, key_filename=list(ep.identity_files) or None,
                           allow_agent=True, look_for_keys=not ep.identities_only, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout, sock=sock)
            return client
        except _UnknownHost as err:
            client.close()
            raise self._error("connect", (
                f"{who}unknown host key for {err.name} ({err.key.get_name()} {fingerprint(err.key)}), not in "
                f"{known}. Check it on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then rerun "
                f"with --trust-new-host to record it, or record it yourself: "
                f"ssh-keyscan -p {ep.port} {shlex.quote(ep.hostname)} >> {shlex.quote(str(known))}")) from None
        except paramiko.BadHostKeyException as err:
            client.close()
            changed = self._error("connect", (
                f"{who}the host key of {name} CHANGED ({err.key.get_name()} {fingerprint(err.key)}, "
                f"{known} has {fingerprint(err.expected_key)}): someone may be intercepting the connection. If the "
                f"device was reinstalled, remove the old key: ssh-keygen -R {shlex.quote(name)} "
                f"-f {shlex.quote(str(known))}"), reason="host key changed")
            changed.host_key_changed = True
            raise changed from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise self._error("connect", (
                f"{who}the private key is protected by a passphrase; load it into the agent first "
                f"(eval $(ssh-agent) && ssh-add KEY); sparsebench never asks for passwords")) from None
        except paramiko.AuthenticationException as err:
            client.close()
            keys = ", ".join(ep.identity_files) or "~/.ssh/id_* and the ssh agent"
            raise self._error("connect", (
                f"{who}authentication as {ep.user!r} failed with {keys} ({_why(err)}). Install your public key on "
                f"the device (ssh-copy-id -p {ep.port} {ep.user}@{ep.hostname}) or pass the right one with "
                "--identity PATH")) from None
        except paramiko.ssh_exception.NoValidConnectionsError:
            client.close()
            raise self._error("connect", (
                f"{who}connection refused on {ep.hostname} port {ep.port}: is sshd running there and is the port "
                "right? (Termux: run `sshd`, port 8022; Linux: sudo systemctl enable --now ssh)"),
                reason="Connection refused") from None
        except socket.gaierror as err:
            client.close()
            raise self._error("connect", f"{who}cannot resolve host {ep.hostname!r} ({err.strerror}); "
                                         "check the name or use the IP address") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise self._error("connect", f"{who}no answer from {ep.hostname}:{ep.port} within {timeout:g} s; "
                                         "is the device on and reachable (ping it)?",
                              reason=f"no answer within {timeout:g} s") from None
        except (paramiko.SSHException, OSError, EOFError) as err:
            client.close()
            raise self._error("connect", f"{who}SSH to {ep.hostname}:{ep.port} failed ({_why(err)})",
                              reason=_why(err)) from None

    def _proxy_sock(self):
        """The socket to reach the device through: a ProxyCommand, a chain of ProxyJump hosts, or None."""
        import paramiko

        ep = self.endpoint
        if ep.proxy_command:
            return paramiko.ProxyCommand(ep.proxy_command)
        if not ep.proxy_jump:
            return None
        hops = []
        for text in ep.proxy_jump.split(","):
            match = _HOP_RE.match(text.strip().removeprefix("ssh://"))
            if not match:
                raise self._error("connect", f"ProxyJump entry {text!r} is not [USER@]HOST[:PORT]")
            hop_port = int(match.group("port")) if match.group("port") else None
            hops.append(resolve_endpoint(match.group("host").strip("[]"), config=self._config,
                                         user=match.group("user"), port=hop_port))
        sock = None
        for i, hop in enumerate(hops):
            client = self._open(hop, sock, "jump")
            self._hops.append(client)
            nxt = hops[i + 1] if i + 1 < len(hops) else ep
            try:
                sock = client.get_transport().open_channel("direct-tcpip", (nxt.hostname, nxt.port), ("127.0.0.1", 0),
                                                           timeout=self.connect_timeout_s)
            except Exception as err:
                raise self._error("connect", f"jump host {hop.label} could not reach {nxt.hostname}:{nxt.port} "
                                             f"({_why(err)}); does it allow TCP forwarding?") from None
        return sock

    def _drop(self) -> None:
        for thing in (self._sftp, self._client, *reversed(self._hops)):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing a dead connection: nothing left to do
                    pass
        self._sftp = self._client = None
        self._hops = []

    def close(self) -> None:
        _LIVE.discard(self.token)
        if self._connected() and self.session_dir and not self.keep:
            try:
                self._sftp.rmdir(self.session_dir)  # only when empty: kept work dirs stay
            except Exception:  # not empty (a job kept its files) or already gone
                pass
        self._drop()

    @contextmanager
    def _lost(self, step: str, what: str):
        """A dropped or hung connection during ``what`` becomes a TransportError; the next call reconnects."""
        import paramiko

        try:
            yield
        except (EOFError, paramiko.SSHException, socket.timeout, TimeoutError, ConnectionError, OSError) as err:
            if isinstance(err, OSError) and not isinstance(err, (socket.timeout, TimeoutError, ConnectionError)) \
                    and self._connected():
                raise  # a file error over a live connection (the callers say what it means)
            self._drop()
            raise ConnectionLost(step, f"device {self.device}: lost the connection during {what} ({_why(err)}); "
                                       "check the device is up (power, network), then resume the run",
                                 pid=self.last_pid) from None

    # -- paths -------------------------------------------------------------------------------------------------

    def _expand(self, path: str) -> str:
        """``~`` and relative paths resolved against the remote home (SFTP and quoted commands expand nothing)."""
        if path == "~":
            return self.home
        if path.startswith("~/"):
            return posixpath.join(self.home, path[2:])
        if not path.startswith("/"):
            return posixpath.join(self.home, path)
        return posixpath.normpath(path)

    def _inside(self, path: str, step: str, *, strict: bool = False) -> str:
        """``path`` normalised, refused unless it lies in this run's directory (strictly, for deletion)."""
        norm = posixpath.normpath(path)
        base = self.session_dir
        if base is None or not (norm.startswith(base + "/") or (norm == base and not strict)):
            raise self._error(step, f"refusing to touch {path}: outside this run's directory {base or '(none yet)'}")
        return norm

    def _makedirs(self, path: str) -> None:
        current = "/"
        for part in path.strip("/").split("/"):
            current = posixpath.join(current, part)
            try:
                self._sftp.stat(current)
            except FileNotFoundError:
                self._sftp.mkdir(current, 0o700)

    # -- Transport interface -----------------------------------------------------------------------------------

    def make_workdir(self, label: str) -> str:
        self.connect()
        with self._lost("prepare", "making the work directory"):
            root = self._expand(self.remote_root)
            session = posixpath.join(root, self.run_name)
            try:
                self._makedirs(session)
            except OSError as err:
                raise self._error("prepare", f"cannot create {session} ({_why(err)}); choose a writable "
                                             "--remote-root") from None
            self.session_dir = session
            for _ in range(50):
                path = f"{session}/{_safe(label)[:60] or 'job'}-{secrets.token_hex(3)}"
                try:
                    self._sftp.mkdir(path, 0o700)
                    self._write_marker(path)
                    return path
                except OSError as err:
                    if not self._exists(path):
                        raise self._error("prepare", f"cannot create {path} ({_why(err)})") from None
            raise self._error("prepare", f"cannot find a free directory name under {session}")

    def _write_marker(self, path: str) -> None:
        """``.sparsebench-job`` in a new work directory: which harness process made it, so that a later run can
        tell a stale directory (its owner gone) from one in use."""
        import json

        marker = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "started": time.time(),
                  "run": self.run_name, "keep": self.keep}
        with self._sftp.open(f"{path}/{JOB_MARKER}", "w") as fh:
            fh.write(json.dumps(marker))

    def exists(self, remote: str) -> bool:
        remote = self._inside(remote, "fetch")
        self.connect()
        with self._lost("fetch", f"looking for {posixpath.basename(remote)}"):
            return self._exists(remote)

    def _exists(self, path: str) -> bool:
        try:
            self._sftp.stat(path)
            return True
        except OSError:
            return False

    def mkdir(self, remote_dir: str, name: str) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise self._error("upload", f"bad folder name {name!r}")
        path = f"{self._inside(remote_dir, 'upload')}/{name}"
        self.connect()
        with self._lost("upload", f"making the folder {name}"):
            try:
                self._sftp.mkdir(path, 0o700)
            except OSError as err:
                if not self._exists(path):
                    raise self._error("upload", f"cannot create {path} ({_why(err)})") from None
        return path

    def put(self, local: Path, remote_dir: str, name: str | None = None) -> str:
        name = name or Path(local).name
        if "/" in name or name in ("", ".", ".."):
            raise self._error("upload", f"bad file name {name!r}")
        remote_dir = self._inside(remote_dir, "upload")
        dest = f"{remote_dir}/{name}"
        size = Path(local).stat().st_size
        self.connect()
        # a stall detector sized to the file: each SFTP reply may take the floor plus the file at the slowest rate
        limit = self.upload_floor_s + size / UPLOAD_MIN_RATE
        with self._lost("upload", f"the upload of {name}"):
            channel = self._sftp.get_channel()
            channel.settimeout(limit)
            try:
                self._sftp.put(str(local), dest, confirm=True)
            except (socket.timeout, TimeoutError):  # an OSError too, but a hung link, not a full disk
                self._drop()
                raise Stalled("upload", f"device {self.device}: stalled: the upload of {name} ({_size(size)}) made "
                                        f"no progress for {limit:.0f} s; check the link to the device",
                              seconds=limit) from None
            except OSError as err:
                try:
                    self._sftp.remove(dest)  # a partial file helps nobody and holds the space
                except OSError:
                    pass
                raise self._error("upload", self._upload_failure(name, size, remote_dir, err)) from None
            finally:
                if self._sftp is not None:
                    self._sftp.get_channel().settimeout(self.io_timeout_s)
        return dest

    def _upload_failure(self, name: str, size: int, remote_dir: str, err: OSError) -> str:
        """Why an SFTP write failed. sftp-server reports ENOSPC as a bare "Failure": ask ``df`` for the free space."""
        if getattr(err, "errno", None) in (errno.EACCES, errno.EPERM):
            return f"permission denied writing {name} into {remote_dir}; choose a writable --remote-root"
        free = None
        try:
            res = self.run(["df", "-Pk", remote_dir], timeout_s=30)
            fields = res.stdout.strip().splitlines()[-1].split() if res.ok else []
            free, total, mount = int(fields[3]) * 1024, int(fields[1]) * 1024, fields[5]
        except (TransportError, IndexError, ValueError):
            pass
        what = f"writing {name} ({_size(size)}) into {remote_dir} failed ({_why(err)})"
        if free is None:
            return f"{what}; check free space (df -h) and permissions on the device"
        if free < max(size, 1 << 20):
            return (f"{what}: the device's disk is full ({_size(free)} free of {_size(total)} on {mount}); free "
                    "some space there or point --remote-root at a bigger disk")
        return (f"{what}; {_size(free)} are free on {mount}, so check permissions and file-size limits (ulimit -f) "
                "for this user on the device")

    def get(self, remote: str, local: Path) -> Path:
        remote = self._inside(remote, "fetch")
        self.connect()
        with self._lost("fetch", f"fetching {posixpath.basename(remote)}"):
            try:
                self._sftp.get(remote, str(local))
            except FileNotFoundError:
                # the same as a missing local file: the session then reports what the runner printed
                raise FileNotFoundError(errno.ENOENT, f"no file {remote} on device {self.device}") from None
            except OSError as err:
                raise self._error("fetch", f"cannot fetch {remote} ({_why(err)})") from None
        return Path(local)

    def command_line(self, command: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> str:
        """The remote shell line for ``command``: ``echo $$`` (the pid, to stop it on timeout), then the quoted
        ``cd DIR && exec env NAME=value... ARGV``. In a work directory (one with the job marker) the pid is also
        written to ``.sparsebench-pid``, for the sweep of stale directories. sshd starts the shell as a session
        leader, so the command's process group is that pid (the runner makes sure with ``setsid`` itself)."""
        argv = [str(word) for word in command]
        if not argv:
            raise self._error("run", "empty command")
        if self.home is not None and argv[0].startswith("~"):
            argv[0] = self._expand(argv[0])
        words = []
        for key, value in (env or {}).items():
            if not _ENV_NAME_RE.match(key):
                raise self._error("run", f"bad environment variable name {key!r}")
            words.append(shlex.quote(f"{key}={value}"))
        line = " ".join((["env", *words] if words else []) + [shlex.quote(w) for w in argv])
        if not cwd:
            return f"echo $$; exec {line}"
        cd = shlex.quote(self._expand(cwd) if self.home else cwd)
        return (f"echo $$; cd {cd} && {{ if [ -f {JOB_MARKER} ]; then echo $$ > {JOB_PID}; fi; "
                f"exec {line}; }}")

    def run(self, command, *, env=None, timeout_s=None, cwd=None) -> CommandResult:
        """Run ``command``, reading its output as it comes. Past ``timeout_s`` its process group is stopped and the
        result says ``timed_out``; while :attr:`heartbeat` is set (the runner prints a heartbeat line per round),
        nothing at all for ``stall_s`` raises :class:`Stalled`; a dropped connection raises :class:`ConnectionLost`. Interrupted here
        (Ctrl-C, or SIGTERM/SIGHUP turned into an exception), the remote process group is stopped before the
        exception goes on."""
        self.connect()
        line = self.command_line(command, env, cwd)
        argv = [str(word) for word in command]
        start = time.perf_counter()
        out, err = bytearray(), bytearray()
        self.last_pid = pid = None
        chan = None
        try:
            with self._lost("run", f"`{shlex.join(argv)[:80]}`"):
                chan = self._client.get_transport().open_session(timeout=self.connect_timeout_s)
                chan.exec_command(line)
                deadline = None if timeout_s is None else time.monotonic() + timeout_s
                heard = time.monotonic()
                while True:
                    got = False
                    while chan.recv_ready():
                        out += chan.recv(65536)
                        got = True
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                        got = True
                    now = time.monotonic()
                    if got:
                        heard = now
                        if pid is None and b"\n" in out:
                            first = out.split(b"\n", 1)[0].strip()
                            self.last_pid = pid = int(first) if first.isdigit() else None
                    if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                        break
                    if self.cancelled:
                        self.cancelled = False  # consumed: the caller's cleanup commands run again
                        raise Cancelled(f"cancelled: {shlex.join(argv)[:80]}")  # the group is stopped below
                    if deadline is not None and now > deadline:
                        self.kill_group(pid)
                        chan.close()
                        stdout, stderr = _strip_pid(out), err.decode(errors="replace")
                        return CommandResult(argv, -1, stdout, stderr, time.perf_counter() - start, timed_out=True,
                                             pid=pid)
                    if self.heartbeat and self.stall_s is not None and now - heard > self.stall_s:
                        partial = CommandResult(argv, -1, _strip_pid(out), err.decode(errors="replace"),
                                                time.perf_counter() - start, pid=pid)
                        self._drop()  # the connection is what hung, or the command: a fresh one finds out
                        raise Stalled("run", f"stalled: no heartbeat from the runner for {self.stall_s:g} s on "
                                             f"{self.device}", partial, pid, self.stall_s)
                    select.select([chan], [], [], 0.2)
                code = chan.recv_exit_status()
                signame = getattr(chan, "sparsebench_exit_signal", None)
                chan.close()
                # no exit status and no end-of-output from the server: the connection died under the command
                if code == -1 and not chan.eof_received and not signame:
                    raise EOFError("the connection closed before the command ended")
        except BaseException as exc:
            if not isinstance(exc, TransportError) and pid is not None:
                # interrupted (KeyboardInterrupt, the CLI's exception for SIGTERM/SIGHUP) or a bug here: stop what
                # we started on the device (a lost connection is the session's to handle: it reconnects first)
                try:
                    self.kill_group(pid)
                finally:
                    if chan is not None:
                        chan.close()
            raise
        return CommandResult(argv, code, _strip_pid(out), err.decode(errors="replace"), time.perf_counter() - start,
                             signal=("SIG" + signame if signame and not signame.startswith("SIG") else signame),
                             pid=pid)

    def kill_group(self, pid: int | None) -> None:
        """Stop the process group ``pid`` on the device (TERM, then KILL after up to 3 s): closing the channel
        alone can leave the command running. Needs a live connection (nothing is done without one); never raises."""
        if pid is None or not str(pid).isdigit():
            return
        p = int(pid)
        script = (f"kill -s TERM -- -{p} 2>/dev/null || kill -s TERM {p} 2>/dev/null; i=0; "
                  f"while [ $i -lt 30 ] && {{ kill -s 0 -- -{p} 2>/dev/null || kill -s 0 {p} 2>/dev/null; }}; "
                  f"do sleep 0.1; i=$((i+1)); done; kill -s KILL -- -{p} 2>/dev/null; kill -s KILL {p} 2>/dev/null; "
                  "true")
        if not self._connected():
            return
        try:
            chan = self._client.get_transport().open_session(timeout=self.connect_timeout_s)
            chan.settimeout(15)
            chan.exec_command(script)
            chan.recv_exit_status()
            chan.close()
        except Exception:  # the connection may be what hung; the caller reports the failure either way
            pass

    def _stop(self, pid: bytes) -> None:
        self.kill_group(int(pid) if pid.isdigit() else None)

    def _sweep_stale(self) -> None:
        """Remove the job directories of this harness under the remote root whose owner is gone: the harness
        process that made them (this host: its pid no longer runs; another host: older than a day and nothing
        running in them), except those kept on purpose (``--keep-remote``). A runner still running in such a
        directory is stopped first. Never raises."""
        import json

        try:
            root = self._expand(self.remote_root)
            stale: list[tuple[str, int | None]] = []
            for run_entry in self._sftp.listdir_attr(root):
                if not stat.S_ISDIR(run_entry.st_mode or 0):
                    continue
                run_dir = f"{root}/{run_entry.filename}"
                for job_entry in self._sftp.listdir_attr(run_dir):
                    job_dir = f"{run_dir}/{job_entry.filename}"
                    if not stat.S_ISDIR(job_entry.st_mode or 0):
                        continue
                    try:
                        with self._sftp.open(f"{job_dir}/{JOB_MARKER}") as fh:
                            marker = json.loads(fh.read().decode())
                    except (OSError, ValueError):
                        continue  # not ours (no marker): never touched
                    if marker.get("keep"):
                        continue  # kept on purpose (--keep-remote): the user removes it
                    runner = None
                    try:
                        with self._sftp.open(f"{job_dir}/{JOB_PID}") as fh:
                            runner = int(fh.read().decode().strip())
                    except (OSError, ValueError):
                        pass
                    if marker.get("host") == socket.gethostname() and marker.get("pid") == os.getpid():
                        gone = marker.get("token") not in _LIVE  # this process: a transport closed since
                    elif marker.get("host") == socket.gethostname():
                        gone = not _pid_alive(int(marker.get("pid", 0)))
                    else:
                        gone = time.time() - float(marker.get("started", time.time())) > STALE_FOREIGN_S
                    if gone:
                        stale.append((job_dir, runner))
            if not stale:
                return
            for job_dir, runner in stale:
                self.kill_group(runner)
                self._rmtree(job_dir)
                self.swept.append(job_dir)
                try:
                    self._sftp.rmdir(posixpath.dirname(job_dir))  # the run directory, once empty
                except OSError:
                    pass
        except Exception:  # a sweep that cannot read the root (none yet) or races another: nothing to sweep
            pass

    def remove(self, remote_dir: str) -> None:
        if self.keep:
            return
        path = self._inside(remote_dir, "clean", strict=True)
        self.connect()
        with self._lost("clean", f"removing {path}"):
            try:
                self._rmtree(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise self._error("clean", f"cannot remove {path} ({_why(err)}); remove it by hand: "
                                           f"rm -rf {shlex.quote(path)}") from None

    def _rmtree(self, path: str) -> None:
        for entry in self._sftp.listdir_attr(path):
            child = f"{path}/{entry.filename}"
            if stat.S_ISDIR(entry.st_mode or 0):
                self._rmtree(child)
            else:
                self._sftp.remove(child)
        self._sftp.rmdir(path)

    def default_python(self) -> str:
        return "python3"


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip(".")


def _why(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _strip_pid(out: bytearray) -> str:
    """stdout without the first line (the shell's pid printed by :meth:`SSHTransport.command_line`)."""
    first, _, rest = bytes(out).partition(b"\n")
    return (rest if first.strip().isdigit() else bytes(out)).decode(errors="replace")


#: tokens of this process's transports not closed yet: their job directories are in use
_LIVE: set[str] = set()


def _record_exit_signals() -> None:
    """Teach paramiko's channels to keep the ``exit-signal`` request (paramiko ignores it): a command killed by a
    signal then says which (``chan.sparsebench_exit_signal``, e.g. ``"SEGV"``) instead of a bare exit status -1.
    paramiko dispatches channel messages through ``Transport._channel_handler_table``; its request entry is
    wrapped once."""
    from paramiko.common import MSG_CHANNEL_REQUEST
    from paramiko.transport import Transport as ParamikoTransport

    table = ParamikoTransport._channel_handler_table
    original = table[MSG_CHANNEL_REQUEST]
    if getattr(original, "sparsebench", False):
        return

    def handle_request(chan, m):
        position = m.packet.tell()
        try:
            if m.get_text() == "exit-signal":
                m.get_boolean()
                chan.sparsebench_exit_signal = m.get_text()
        except Exception:  # a malformed request: paramiko's own handler decides
            pass
        m.packet.seek(position)
        return original(chan, m)

    handle_request.sparsebench = True
    table[MSG_CHANNEL_REQUEST] = handle_request
