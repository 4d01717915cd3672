"""The farm's inventory: ``farm.toml`` lists boards (name, target profile, URL, tags) -> frozen :class:`Farm`.

Validated once, here, like a run config: every bad input is one :class:`HarnessError` naming the file, the board
and the fix. Nothing connects: URLs are checked by building the (unopened) transport, as ``--device`` is.

    [farm]
    name = "lab"                       # optional (default: the file's stem)
    identity = ["~/.ssh/lab_ed25519"]  # defaults for every board: identity, known_hosts, python, remote_root,
    known_hosts = "~/.ssh/known_hosts" #   ssh_config (relative paths: relative to farm.toml's folder)

    [[board]]
    name = "pi5-a"                     # [A-Za-z0-9][A-Za-z0-9_.-]*, unique in the farm
    profile = "rpi5"                   # a targets/*.toml name, or a path to a profile .toml
    url = "ssh://pi@10.0.0.21"         # local | ssh://[user@]host[:port] | ssh_config Host alias | rpc://HOST:PORT/KEY
    tags = ["shelf1", "pi"]
"""

from __future__ import annotations

import fnmatch
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import TargetProfile, known_targets, load_target
from ..errors import HarnessError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_RPC_RE = re.compile(r"^rpc://(?P<host>\[[^\]/]+\]|[^\[\]:/@\s]+):(?P<port>[^/]*)/(?P<key>.*)$")
#: board settings that may also be given once in [farm] as defaults (paths among them resolved against the file)
BOARD_DEFAULTS = ("python", "identity", "known_hosts", "remote_root", "ssh_config")
#: settings that only mean something for an ssh board
_SSH_ONLY = ("identity", "known_hosts", "remote_root", "ssh_config")
_BOARD_KEYS = {"name", "profile", "url", "tags", *BOARD_DEFAULTS}
_FARM_KEYS = {"name", *BOARD_DEFAULTS}
#: keys people may expect here that belong to the target profile instead
_PROFILE_KEYS = ("reconnect_attempts", "reconnect_backoff_s", "stall_s", "keepalive_s", "port", "transport")


def parse_rpc_url(url: str) -> tuple[str, int, str]:
    """``rpc://HOST:PORT/KEY`` -> (host, port, key); HarnessError with the expected form otherwise."""
    match = _RPC_RE.match(url.strip())
    form = "write rpc://TRACKER_HOST:PORT/KEY, e.g. rpc://10.0.0.5:9190/rpi5"
    if not match:
        raise HarnessError(f"{url!r} is not an rpc URL; {form}")
    port_text, key = match.group("port"), match.group("key")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HarnessError(f"{url!r}: port {port_text!r} is not a number in 1-65535; {form}")
    if not key or "/" in key:
        raise HarnessError(f"{url!r}: the key (the rpc_server's --key) is {'missing' if not key else 'not one word'}; "
                           f"{form}")
    return match.group("host").strip("[]"), int(port_text), key


def load_profile(profile: str) -> TargetProfile:
    """A profile by name (``targets/<name>.toml``) or by path to a ``.toml`` file (an absolute path here)."""
    if profile.endswith(".toml"):
        # load_target reads TARGETS_DIR / f"{name}.toml"; an absolute name replaces the folder
        return load_target(str(Path(profile).with_suffix("")))
    return load_target(profile)


@dataclass(frozen=True)
class Board:
    """One board of the farm, as ``[[board]]`` describes it (defaults from ``[farm]`` applied, paths resolved)."""

    name: str
    profile: str  # a targets/*.toml name, or the absolute path of a profile .toml
    url: str  # "local", ssh://[user@]host[:port], an ssh_config Host alias, or rpc://HOST:PORT/KEY
    tags: tuple[str, ...] = ()
    python: str | None = None  # interpreter on the board (None: the profile's)
    identity: tuple[str, ...] = ()  # ssh private keys (absolute or ~ paths)
    known_hosts: str | None = None
    remote_root: str | None = None  # work directories (and the board lease) on the board; None: the profile's
    ssh_config: str | None = None

    @property
    def kind(self) -> str:
        """``local``, ``ssh`` or ``rpc``."""
        if self.url == "local":
            return "local"
        return "rpc" if self.url.startswith("rpc://") else "ssh"

    def target(self) -> TargetProfile:
        """The board's target profile."""
        return load_profile(self.profile)

    def device_spec(self):
        """The :class:`~harness.transports.spec.DeviceSpec` a single-device run would get for this board."""
        from ..transports.spec import DeviceSpec

        return DeviceSpec(device=self.url, python=self.python, identity=self.identity, known_hosts=self.known_hosts,
                          remote_root=self.remote_root, ssh_config=self.ssh_config)

    def transport(self, *, run_name: str = ""):
        """The unopened transport to this board; ``run_name`` names its per-run directory there."""
        return self.device_spec().transport(self.target(), run_name=run_name)


@dataclass(frozen=True)
class Farm:
    """The boards of one ``farm.toml``."""

    name: str
    path: Path
    boards: tuple[Board, ...]

    def select(self, names: Sequence[str] = (), tags: Sequence[str] = ()) -> list[Board]:
        """The boards named (exact names or shell globs) that carry every tag in ``tags``, in the file's order; all
        boards when neither is given. HarnessError for a name/glob matching no board, or a tag no board has."""
        known = [b.name for b in self.boards]
        chosen = list(self.boards)
        if names:
            picked: set[str] = set()
            for pattern in names:
                hits = [n for n in known if n == pattern or fnmatch.fnmatchcase(n, pattern)]
                if not hits:
                    raise HarnessError(f"farm {self.path}: no board matches {pattern!r}; known: {', '.join(known)}")
                picked.update(hits)
            chosen = [b for b in chosen if b.name in picked]
        all_tags = sorted({t for b in self.boards for t in b.tags})
        for tag in tags:
            if tag not in all_tags:
                raise HarnessError(f"farm {self.path}: no board has tag {tag!r}; known tags: "
                                   f"{', '.join(all_tags) or '(none: add tags = [...] to a [[board]])'}")
        chosen = [b for b in chosen if set(tags) <= set(b.tags)]
        if not chosen:
            raise HarnessError(f"farm {self.path}: no board is named {' or '.join(names)} and tagged "
                               f"{' and '.join(tags)}; check --boards and --tag")
        return chosen

    def board(self, name: str) -> Board:
        for b in self.boards:
            if b.name == name:
                return b
        raise HarnessError(f"farm {self.path}: unknown board {name!r}; known: {', '.join(b.name for b in self.boards)}")


# ---------------------------------------------------------------------------------------------------------------
# loading


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if not unknown:
        return
    misplaced = [k for k in unknown if k in _PROFILE_KEYS]
    hint = (f" ({', '.join(misplaced)} belong{'s' if len(misplaced) == 1 else ''} in the target profile's [device] "
            "table)" if misplaced else "")
    raise HarnessError(f"{where}: unknown key(s) {', '.join(unknown)}{hint}; allowed: {', '.join(sorted(allowed))}")


def _str(value: Any, where: str, key: str, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise HarnessError(f"{where}: {key} must be a non-empty string, e.g. {key} = {example!r}; got {value!r}")
    return value.strip()


def _strs(value: Any, where: str, key: str, example: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise HarnessError(f"{where}: {key} must be a list of strings, e.g. {key} = {example}; got {value!r}")
    return tuple(v.strip() for v in value)


def _local_path(text: str, base: Path) -> str:
    """A host-side path: ``~`` kept for the transport to expand, relative ones made absolute against ``base``."""
    if text.startswith("~") or Path(text).is_absolute():
        return text
    return str((base / text).resolve())


def _settings(table: dict, where: str, base: Path) -> dict:
    """The board settings in ``table`` (a [[board]] or the [farm] defaults), type-checked, paths resolved."""
    out: dict[str, Any] = {}
    if "python" in table:
        out["python"] = _str(table["python"], where, "python", "~/sb-venv/bin/python")
    if "remote_root" in table:
        out["remote_root"] = _str(table["remote_root"], where, "remote_root", "~/.cache/sparsebench")
    if "identity" in table:
        out["identity"] = tuple(_local_path(p, base) for p in _strs(table["identity"], where, "identity",
                                                                    '["~/.ssh/lab_ed25519"]'))
    for key, example in (("known_hosts", "~/.ssh/known_hosts"), ("ssh_config", "~/.ssh/config")):
        if key in table:
            out[key] = _local_path(_str(table[key], where, key, example), base)
    return out


def _profile(value: Any, where: str, base: Path) -> str:
    text = _str(value, where, "profile", "rpi5")
    if text.endswith(".toml") or "/" in text:
        path = Path(_local_path(text, base)).expanduser()
        if path.suffix != ".toml" or not path.is_file():
            raise HarnessError(f"{where}: profile file {path} does not exist; give a path to a profile .toml or one "
                               f"of the known profiles: {', '.join(known_targets())}")
        text = str(path)
    try:
        load_profile(text)
    except HarnessError as err:
        raise HarnessError(f"{where}: {err}") from None
    return text


def _check_url(board: Board, where: str) -> None:
    """The URL's form (and, for ssh, the identity files and ssh config), without connecting."""
    if board.kind == "rpc":
        try:
            parse_rpc_url(board.url)
        except HarnessError as err:
            raise HarnessError(f"{where}: url {err}") from None
        return
    try:
        board.transport(run_name="check")
    except HarnessError as err:
        raise HarnessError(f"{where}: {err}") from None


def load_farm(path: str | Path) -> Farm:
    """Read and validate ``farm.toml``; one HarnessError naming the file, the board and the fix otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or "not a UTF-8 text file"
        raise HarnessError(f"cannot read farm {path}: {why}; check --farm") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise HarnessError(f"farm {path} is not valid TOML: {err}; fix that line") from None
    base = path.resolve().parent
    _check_keys(data, {"farm", "board"}, f"farm {path}")
    farm_table = data.get("farm", {})
    if not isinstance(farm_table, dict):
        raise HarnessError(f"farm {path}: farm must be a table ([farm]); got {farm_table!r}")
    _check_keys(farm_table, _FARM_KEYS, f"farm {path} [farm]")
    name = _str(farm_table["name"], f"farm {path} [farm]", "name", "lab") if "name" in farm_table else path.stem
    defaults = _settings(farm_table, f"farm {path} [farm]", base)
    tables = data.get("board", [])
    if isinstance(tables, dict):
        raise HarnessError(f"farm {path}: write each board as [[board]] (double brackets), not [board]")
    if not isinstance(tables, list) or not tables:
        raise HarnessError(f"farm {path}: no boards; add one per board: [[board]] name = \"pi5-a\" profile = \"rpi5\" "
                           "url = \"ssh://pi@10.0.0.21\"")
    boards: list[Board] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables, 1):
        where = f"farm {path} board #{index}"
        if not isinstance(table, dict):
            raise HarnessError(f"{where}: must be a [[board]] table; got {table!r}")
        if "name" in table and isinstance(table["name"], str):
            where = f"farm {path} board {table['name']!r}"
        _check_keys(table, _BOARD_KEYS, where)
        for key in ("name", "profile", "url"):
            if key not in table:
                raise HarnessError(f"{where}: missing {key}; each [[board]] needs name, profile and url, e.g. "
                                   'name = "pi5-a", profile = "rpi5", url = "ssh://pi@10.0.0.21"')
        board_name = table["name"]
        if not isinstance(board_name, str) or not _NAME_RE.fullmatch(board_name):
            raise HarnessError(f"{where}: name {board_name!r} is not an identifier; use letters, digits, '-', '_' "
                               "and '.' (starting with a letter or digit), e.g. name = \"pi5-a\"")
        if board_name in seen:
            raise HarnessError(f"{where}: duplicate name (also board #{seen[board_name]}); give each board its own "
                               "name")
        seen[board_name] = index
        url = _str(table["url"], where, "url", "ssh://pi@10.0.0.21")
        tags = _strs(table.get("tags", []), where, "tags", '["shelf1", "pi"]')
        bad_tag = next((t for t in tags if not _NAME_RE.fullmatch(t)), None)
        if bad_tag is not None:
            raise HarnessError(f"{where}: tag {bad_tag!r} is not an identifier; use letters, digits, '-', '_', '.'")
        own = _settings(table, where, base)
        if url == "local" or url.startswith("rpc://"):
            # the [farm] defaults for ssh boards do not apply here; set on this board they are a mistake
            given = sorted(k for k in own if k in _SSH_ONLY)
            if given:
                raise HarnessError(f"{where}: {', '.join(given)} only apply to ssh boards; remove them or give an "
                                   "ssh://USER@HOST[:PORT] url")
            # (python too: this machine's default is the harness's own interpreter, an rpc board runs no Python)
            defaults_here = {k: v for k, v in defaults.items() if k not in _SSH_ONLY and k != "python"}
        else:
            defaults_here = defaults
        settings = {**defaults_here, **own}
        board = Board(name=board_name, profile=_profile(table["profile"], where, base), url=url,
                      tags=tuple(dict.fromkeys(tags)), **settings)
        _check_url(board, where)
        boards.append(board)
    return Farm(name=name, path=path, boards=tuple(boards))
