"""Device profiles (targets/*.toml): every shipped board loads, TVM accepts its targets, and a bad profile gets one
clear error naming the file, the key and the fix."""

from __future__ import annotations

import pytest

import harness.config as config
from harness.config import ENERGY_SENSORS, TOOLCHAINS, known_targets, load_target
from harness.errors import HarnessError

BOARDS = {"x86-64", "rpi4", "rpi5", "jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx", "android-snapdragon8"}


def test_every_board_profile_loads_with_its_facts():
    assert BOARDS | {"local"} <= set(known_targets())
    for name in BOARDS:
        p = load_target(name)
        assert p.transport == "ssh" and p.description and p.needs and p.notes and p.energy, name
        assert p.tvm_targets["cpu"] is p.tvm_target and p.tvm_target["mtriple"] and p.toolchain in TOOLCHAINS
    assert load_target("android-snapdragon8").port == 8022
    assert load_target("android-snapdragon8").tvm_target["mattr"] == ["-sve", "-sve2"]  # these SoCs disable SVE
    assert load_target("rpi5").tvm_target["mcpu"] == "cortex-a76"
    orin = load_target("jetson-orin-nano")
    assert orin.tvm_target["mcpu"] == "cortex-a78ae"  # not TVM's tag's `carmel`
    assert orin.tvm_targets["cuda"] == {"kind": "cuda", "arch": "sm_87", "host": orin.tvm_target}
    assert load_target("jetson-xavier-nx").tvm_targets["cuda"]["arch"] == "sm_72"
    assert any("jetson_clocks" in step for step in orin.prepare)
    local = load_target("local")  # the existing profile keeps loading with the new fields' defaults
    assert local.transport == "local" and local.toolchain == "native" and local.energy == ()


def test_tvm_accepts_every_profile_target():
    tvm = pytest.importorskip("tvm")
    for name in known_targets():
        for role, target in load_target(name).tvm_targets.items():
            built = tvm.target.Target(target)
            assert built.kind.name == target["kind"], (name, role)
            if role == "cuda":
                assert str(built.host.attrs["mcpu"]) == target["host"]["mcpu"]


def test_energy_kinds_match_the_sensor_backends():
    from harness.board import sensors

    methods = {cls.method for cls in vars(sensors).values()
               if isinstance(cls, type) and issubclass(cls, sensors.PowerSensor) and cls.method}
    assert set(ENERGY_SENSORS) == methods


PROFILE = """
name = "board"
description = "a board"
[device]
transport = "ssh"
[tvm]
target = { kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "cortex-a72" }
"""


@pytest.mark.parametrize("edit, message", [
    (("transport = \"ssh\"", "transport = \"adb\""), "unknown transport 'adb'; known: local, ssh"),
    (("transport = \"ssh\"", "transport = \"ssh\"\nport = 70000"), "port must be an integer in 1-65535"),
    (("transport = \"ssh\"", "transport = \"ssh\"\nprepare = \"sudo jetson_clocks\""),
     r"\[device\].prepare must be a list of strings"),
    (("mtriple = \"aarch64-linux-gnu\", ", ""), "give an explicit mtriple"),
    (("aarch64-linux-gnu", "arm64-linux-android"), "TVM does not treat arm64-\\* as aarch64; write 'aarch64-linux-android'"),
    (("mcpu = \"cortex-a72\"", "mcpu = \"cortex-a72\", mattr = \"+neon\""), "mattr must be a list"),
    (("[tvm]", "[tvm]\ncuda = { kind = \"cuda\", arch = \"87\" }"), "arch must name the GPU's compute capability"),
    (("[tvm]", "[build]\ntoolchain = \"msvc\"\n[tvm]"), "unknown toolchain 'msvc'; known: native"),
    (("[tvm]", "[build]\ntoolchain = \"aarch64-linux-android\"\n[tvm]"),
     "toolchain 'aarch64-linux-android' does not build for mtriple 'aarch64-linux-gnu'"),
    (("[tvm]", "[energy]\nsensors = [\"ina226\"]\n[tvm]"), "unknown sensor kind\\(s\\) ina226; known: jetson-ina3221"),
    (("[device]", "[devices]"), "unknown key\\(s\\) devices"),
    (("transport = \"ssh\"", "transport = \"ssh\"\nstall_s = 0"), "stall_s must be a number >= 1.0, got 0"),
    (("transport = \"ssh\"", "transport = \"ssh\"\nreconnect_attempts = 1.5"),
     "reconnect_attempts must be an integer >= 0, got 1.5"),
])
def test_bad_profiles_get_clear_errors(tmp_path, monkeypatch, edit, message):
    monkeypatch.setattr(config, "TARGETS_DIR", tmp_path)
    (tmp_path / "board.toml").write_text(PROFILE.replace(*edit, 1))
    with pytest.raises(HarnessError, match=message) as info:
        load_target("board")
    assert "board.toml" in str(info.value)
    (tmp_path / "board.toml").write_text(PROFILE)
    assert load_target("board").transport == "ssh"


def test_link_settings_are_read_from_the_profile(tmp_path, monkeypatch):
    """A profile sets the ssh link's reconnects, stall and keepalive (issue 11); spec.py hands them on."""
    monkeypatch.setattr(config, "TARGETS_DIR", tmp_path)
    (tmp_path / "board.toml").write_text(PROFILE.replace("transport = \"ssh\"", "transport = \"ssh\"\n"
                                         "reconnect_attempts = 5\nreconnect_backoff_s = 0.5\nstall_s = 20\n"
                                         "keepalive_s = 2", 1))
    profile = load_target("board")
    assert (profile.reconnect_attempts, profile.reconnect_backoff_s, profile.stall_s, profile.keepalive_s) == \
        (5, 0.5, 20, 2)
    (tmp_path / "board.toml").write_text(PROFILE)
    assert load_target("board").stall_s is None  # unset: the transport's defaults
