"""A real OpenSSH server on 127.0.0.1 for the loopback tests: its own config, host key, user keys and known_hosts.

``start_sshd(folder)`` generates the keys with ``ssh-keygen``, writes an ``sshd_config`` (no PAM, keys only,
``AuthorizedKeysFile`` in the folder), starts ``/usr/sbin/sshd -D`` on a free port and waits until it answers.
It raises :class:`SSHDUnavailable` with the reason (missing binary, bad config, sshd's own log) so that a fixture
can *fail* -- an SSH test that silently skips proves nothing.

The client side lives in ``folder/home``: a HOME without keys (the tests pass ``--identity``), a ``known_hosts``
that knows the server, and an ssh ``config`` with aliases.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD_BIN = Path("/usr/sbin/sshd")  # sshd refuses to start from a relative path (it re-executes itself)
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
INSTALL_HINT = "apt-get install -y openssh-server (the CI script .ci/run does this)"


class SSHDUnavailable(RuntimeError):
    """sshd could not be started; the message says why and what to install."""


def free_port() -> int:
    """A TCP port nothing listens on right now (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keygen(path: Path, comment: str) -> Path:
    """A new ed25519 key pair without passphrase; returns the private key path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                   capture_output=True)
    return path


@dataclass
class SSHD:
    """A running sshd and the client files that reach it."""

    folder: Path
    port: int
    user: str
    host_key: Path
    user_key: Path  # authorized
    wrong_key: Path  # a valid key the server does not know
    known_hosts: Path  # knows the server's host key
    home: Path  # a HOME for client processes: no keys, no agent
    process: subprocess.Popen | None = None
    log: Path = field(default=None)

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def host_key_line(self) -> str:
        """The server's key as a known_hosts line."""
        kind, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def client_env(self, **extra: str) -> dict:
        """Environment for a client process: HOME without keys, no ssh agent."""
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["HOME"] = str(self.home)
        env.update(extra)
        return env

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_sshd(folder: Path, *, sftp_server: str | None = None) -> SSHD:
    """Start sshd on a free 127.0.0.1 port; raise :class:`SSHDUnavailable` with the reason if it cannot run."""
    if not SSHD_BIN.is_file():
        raise SSHDUnavailable(f"{SSHD_BIN} is missing; install it: {INSTALL_HINT}")
    if shutil.which("ssh-keygen") is None:
        raise SSHDUnavailable(f"ssh-keygen is missing; install it: {INSTALL_HINT}")
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # sshd's privilege separation directory
    host_key = keygen(folder / "ssh_host_ed25519_key", "sparsebench-test-host")
    user_key = keygen(folder / "id_user", "sparsebench-test-user")
    wrong_key = keygen(folder / "id_wrong", "sparsebench-test-wrong")
    authorized = folder / "authorized_keys"
    authorized.write_text(user_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    home = folder / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh").chmod(0o700)
    port = free_port()
    log = folder / "sshd.log"
    subsystem = sftp_server or (str(SFTP_SERVER) if SFTP_SERVER.is_file() else "internal-sftp")
    if sftp_server is None and SFTP_SERVER.is_file():
        # sftp-server behind a hook: while folder/fsize_limit exists, files it writes are limited to that many
        # 512-byte blocks (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG) -- the stand-in for a full disk
        # where mounting a tiny tmpfs is not permitted
        wrapper = folder / "sftp-server"
        wrapper.write_text(f"""#!/bin/sh
if [ -f {folder / 'fsize_limit'} ]; then ulimit -f "$(cat {folder / 'fsize_limit'})"; trap '' XFSZ; fi
exec {SFTP_SERVER} "$@"
""")
        wrapper.chmod(0o755)
        subsystem = str(wrapper)
    config = folder / "sshd_config"
    config.write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {folder / 'sshd.pid'}
AuthorizedKeysFile {authorized}
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
MaxStartups 50:30:100
MaxSessions 50
LogLevel VERBOSE
Subsystem sftp {subsystem}
""")
    check = subprocess.run([str(SSHD_BIN), "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise SSHDUnavailable(f"sshd rejects its test config {config}: {check.stderr.strip()}")
    server = SSHD(folder=folder, port=port, user=getpass.getuser(), host_key=host_key, user_key=user_key,
                  wrong_key=wrong_key, known_hosts=home / ".ssh" / "known_hosts", home=home, log=log)
    server.known_hosts.write_text(server.host_key_line())
    server.process = subprocess.Popen([str(SSHD_BIN), "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                      stderr=open(log, "w"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SSHDUnavailable(f"sshd exited with {server.process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise SSHDUnavailable(f"sshd did not answer on 127.0.0.1:{port} within 15 s: {log.read_text()[-2000:]}")


def mount_tiny_tmpfs(path: Path, size: str = "256k") -> bool:
    """Mount a tmpfs of ``size`` at ``path`` (root only): a disk that really fills up. False when not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
