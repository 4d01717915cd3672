"""farm.toml: every bad input is one line naming the file, the board and the fix; selection by name, glob and tag."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import sparsebench

from harness.errors import HarnessError
from harness.farm.inventory import Board, load_farm, parse_rpc_url
from harness.paths import TARGETS_DIR

GOOD = """
[farm]
name = "lab"
python = "~/sb-venv/bin/python"
ssh_config = "ssh_config"

[[board]]
name = "pi5-a"
profile = "rpi5"
url = "ssh://pi@10.0.0.21"
tags = ["shelf1", "pi"]

[[board]]
name = "pi5-b"
profile = "rpi5"
url = "ssh://pi@10.0.0.22:2222"
tags = ["shelf1", "pi"]
identity = "keys/pi_ed25519"

[[board]]
name = "nuc"
profile = "profiles/nuc.toml"
url = "local"
tags = ["shelf2"]

[[board]]
name = "orin-1"
profile = "jetson-orin-nano"
url = "rpc://10.0.0.5:9190/orin"
tags = ["shelf2", "jetson"]
"""


@pytest.fixture()
def farm_dir(tmp_path: Path) -> Path:
    (tmp_path / "ssh_config").write_text("")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "pi_ed25519").write_text("not read before connecting\n")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "nuc.toml").write_text((TARGETS_DIR / "local.toml").read_text()
                                                    .replace('name = "local"', 'name = "nuc"'))
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "farm.toml"
    path.write_text(text)
    return path


def test_good_farm(farm_dir):
    farm = load_farm(write(farm_dir, GOOD))
    assert farm.name == "lab" and [b.name for b in farm.boards] == ["pi5-a", "pi5-b", "nuc", "orin-1"]
    a, b, nuc, orin = farm.boards
    assert (a.kind, nuc.kind, orin.kind) == ("ssh", "local", "rpc")
    assert a.python == "~/sb-venv/bin/python" and nuc.python is None  # the [farm] default, for ssh boards
    assert a.ssh_config == str(farm_dir / "ssh_config")  # relative to the farm file
    assert b.identity == (str(farm_dir / "keys" / "pi_ed25519"),)
    assert nuc.profile == str(farm_dir / "profiles" / "nuc.toml") and nuc.target().name == "nuc"
    assert a.target().name == "rpi5"
    spec = b.device_spec()
    assert spec.device == "ssh://pi@10.0.0.22:2222" and spec.identity == b.identity and spec.python == b.python
    assert b.transport(run_name="x").device == "pi@10.0.0.22:2222"  # built, not connected
    assert orin.device_spec().device == "rpc://10.0.0.5:9190/orin"
    assert parse_rpc_url(orin.url) == ("10.0.0.5", 9190, "orin")
    assert load_farm(write(farm_dir, GOOD.replace('name = "lab"\n', ""))).name == "farm"  # the file's stem


def test_select(farm_dir):
    farm = load_farm(write(farm_dir, GOOD))
    names = lambda boards: [b.name for b in boards]  # noqa: E731
    assert names(farm.select()) == ["pi5-a", "pi5-b", "nuc", "orin-1"]
    assert names(farm.select(["pi5-*"])) == ["pi5-a", "pi5-b"]
    assert names(farm.select(["orin-1", "pi5-b"])) == ["pi5-b", "orin-1"]  # the file's order
    assert names(farm.select(tags=["shelf2"])) == ["nuc", "orin-1"]
    assert names(farm.select(tags=["shelf2", "jetson"])) == ["orin-1"]
    assert names(farm.select(["*"], ["pi"])) == ["pi5-a", "pi5-b"]
    with pytest.raises(HarnessError, match=r"no board matches 'jetson-\*'; known: pi5-a, pi5-b, nuc, orin-1"):
        farm.select(["jetson-*"])
    with pytest.raises(HarnessError, match=r"no board has tag 'shelf9'; known tags: jetson, pi, shelf1, shelf2"):
        farm.select(tags=["shelf9"])
    with pytest.raises(HarnessError, match="no board is named nuc and tagged pi"):
        farm.select(["nuc"], ["pi"])


BOARD = '[[board]]\nname = "b1"\nprofile = "local"\nurl = "local"\n'


@pytest.mark.parametrize("text, expected", [
    ('[[board]]\nname = "b1"\nprofile = "rpi9"\nurl = "local"\n',
     r"board 'b1': unknown target 'rpi9'; known: .*rpi5"),
    ('[[board]]\nname = "b1"\nprofile = "nope/x.toml"\nurl = "local"\n',
     r"board 'b1': profile file .*x.toml does not exist"),
    (BOARD + BOARD, r"board 'b1': duplicate name \(also board #1\)"),
    ('[[board]]\nname = "b1"\nprofile = "local"\nurl = "ssh://pi@host:99999"\n', r"board 'b1': .*port 99999"),
    ('[[board]]\nname = "b1"\nprofile = "local"\nurl = "ftp://x"\n', r"board 'b1': unknown device scheme 'ftp'"),
    ('[[board]]\nname = "b1"\nprofile = "local"\nurl = "pi@host"\n', r"board 'b1': .*did you mean ssh://pi@host"),
    ('[[board]]\nname = "b1"\nprofile = "local"\nurl = "rpc://host/key"\n', r"board 'b1': url .*rpc://TRACKER_HOST"),
    ('[[board]]\nname = "b1"\nprofile = "local"\nurl = "rpc://host:0/k"\n', r"port '0' is not a number in 1-65535"),
    ('[[board]]\nname = "b1"\nprofile = "local"\nurl = "rpc://host:9190/"\n', r"the key .* is missing"),
    (BOARD + "colour = 1\n", r"board 'b1': unknown key\(s\) colour; allowed: identity, known_hosts, name"),
    ('[farm]\nstall_s = 3\n' + BOARD, r"\[farm\]: unknown key\(s\) stall_s \(stall_s belongs in the target profile"),
    ('[farm]\nname = "x"\n', r"no boards; add one per board: \[\[board\]\]"),
    ('[board]\nname = "b1"\n', r"write each board as \[\[board\]\]"),
    (BOARD.replace('"b1"', '"../b1"'), r"name '../b1' is not an identifier"),
    (BOARD + "tags = \"pi\"\ntags2 = 1\n", r"unknown key\(s\) tags2"),
    (BOARD + "tags = [1]\n", r"board 'b1': tags must be a list of strings"),
    (BOARD + "python = 3\n", r"board 'b1': python must be a non-empty string"),
    ('[[board]]\nname = "b1"\nprofile = "local"\n', r"board 'b1': missing url"),
    ('[[board]]\nname = "b1"\nprofile = "local"\nurl = "ssh://pi@h"\nidentity = "nokey"\n',
     r"board 'b1': identity file .*nokey does not exist"),
    ("[[board]\n", r"is not valid TOML"),
])
def test_bad_farm_is_one_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(HarnessError, match=expected) as err:
        load_farm(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message


def test_missing_file(tmp_path):
    with pytest.raises(HarnessError, match=r"cannot read farm .*nothere.toml: .*; check --farm"):
        load_farm(tmp_path / "nothere.toml")


def test_board_kind():
    assert Board("a", "local", "local").kind == "local"
    assert Board("a", "local", "pi-alias").kind == "ssh"
    assert Board("a", "local", "rpc://h:1/k").kind == "rpc"


def test_cli_bad_input_exit_2(tmp_path):
    path = write(tmp_path, BOARD + BOARD)
    res = sparsebench("farm", "status", "--farm", str(path))
    assert res.returncode == 2, res.stderr
    assert "duplicate name" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = sparsebench("farm", "status", "--farm", str(write(tmp_path, BOARD)), "--tag", "gpu")
    assert res.returncode == 2 and "no board has tag 'gpu'" in res.stderr and "Traceback" not in res.stderr


def test_ssh_settings_on_a_local_board(tmp_path):
    with pytest.raises(HarnessError, match=r"board 'b1': identity only apply to ssh boards"):
        load_farm(write(tmp_path, BOARD + 'identity = "k"\n'))
