"""Energy through the whole pipeline: the CLI run, the device runner in its subprocess reading a fake board's
sensor (a sysfs tree or a `vcgencmd` built from the real formats), the store, results.csv and the report.

The fake board draws a known power P (with a small ripple, so readings change like a real sensor's): the energy
per inference must be P · window / iterations within 2 %."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from conftest import sparsebench, write_config
from harness.board import sensors
from test_energy import FIXTURES, battery_tree, hwmon_tree, pmic_text, put, rewriting

POWER_W = 7.5
RIPPLE = 0.02


def _power(t: float) -> float:
    return POWER_W * (1 + RIPPLE * math.sin(2 * math.pi * 3.0 * t))


def _run(tmp_path: Path, root: Path, env_path: str | None = None, extra: str = "") -> list[dict]:
    model, eval_set = _small(tmp_path)
    db, out = tmp_path / "r.db", tmp_path / "report"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.9),
                       methods=("block:8x1",), extra="energy_idle_s = 1.5\nenergy_window_s = 2.0\n" + extra)
    old_path = os.environ.get("PATH", "")
    if env_path:
        os.environ["PATH"] = f"{env_path}:{old_path}"
    try:
        proc = sparsebench("run", str(cfg), "--out", str(out), "--sensor-root", str(root), "--no-progress")
    finally:
        os.environ["PATH"] = old_path
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    energy = [json.loads(r[0]) for r in sqlite3.connect(db).execute("SELECT energy_json FROM results ORDER BY id")]
    assert list((out / "plots").glob("*_energy.png")), "the report plots energy per inference"
    for row, record in zip(rows, energy):
        assert row["energy_status"] == "ok", row["energy_status"]
        expected_mj = POWER_W * record["window_s"] / record["iterations"] * 1e3
        assert float(row["energy_mj"]) == pytest.approx(expected_mj, rel=0.02)
        assert record["idle_w"] == pytest.approx(POWER_W, rel=0.02)
        assert abs(record["energy_above_idle_per_inference_mj"]) < 0.02 * expected_mj
    return energy


_SMALL = {}


def _small(tmp_path):
    from conftest import make_small_model

    if "m" not in _SMALL:
        folder = tmp_path.parent / "energy-model"
        folder.mkdir(exist_ok=True)
        _SMALL["m"] = make_small_model(folder)
    return _SMALL["m"]


def test_fake_jetson_energy_through_the_pipeline(tmp_path):
    root = tmp_path / "board"
    folder = hwmon_tree(root, labels=("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"))

    def update(now):  # VDD_IN at 5 V: I = P / V
        put(folder / "curr1_input", int(round(_power(now) / 5.0 * 1000)))  # sysfs: integer mA

    with rewriting(update, period_s=0.002):
        records = _run(tmp_path, root)
    assert records[0]["method"] and records[0]["total_rail"] == "VDD_IN"


def test_fake_pi5_energy_through_the_pipeline(tmp_path):
    root = tmp_path / "board"
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_text("Raspberry Pi 5 Model B Rev 1.0\x00")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a stand-in `vcgencmd`: the recorded PMIC output with VDD_CORE set so that Σ V·I follows the power profile
    script = bin_dir / "vcgencmd"
    # a fast stand-in (the real command takes ~0.1 s): only VDD_CORE's current changes between calls
    sample = pmic_text(POWER_W)
    volts = sensors.parse_pmic_adc(sample)["rails_v"]["VDD_CORE"]
    others_w = POWER_W - sensors.parse_pmic_adc(sample)["rails_w"]["VDD_CORE"]
    template = re.sub(r"(VDD_CORE_A current\(7\)=)[0-9.]+A", r"\g<1>{amps:.8f}A", sample)
    script.write_text(f"""#!{sys.executable}
import math, time
t = time.time()
power = {POWER_W} * (1 + {RIPPLE} * math.sin(2 * math.pi * 3.0 * t))
print({template!r}.format(amps=(power - {others_w!r}) / {volts!r}), end="")
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    records = _run(tmp_path, root, env_path=str(bin_dir))
    assert records[0]["calibration"] is not None  # raw figure reported, calibrated one next to it


def test_external_meter_from_the_config_through_the_pipeline(tmp_path):
    """`[measure].meter_command` reaches the runner's job: on a board with no sensor at all, the meter's watts are
    the energy source."""
    root = tmp_path / "board"
    root.mkdir()  # nothing there: without the meter this run would say "unavailable: no power sensor"
    meter = tmp_path / "read_meter.py"
    meter.write_text(f"""import math, time
t = time.time()
print("{{:.4f}} W".format({POWER_W} * (1 + {RIPPLE} * math.sin(2 * math.pi * 3.0 * t))))
""")
    command = json.dumps([sys.executable, str(meter)])
    records = _run(tmp_path, root, extra=f"meter_command = {command}\n")
    assert records[0]["method"] == "external-meter" and records[0]["rails"] == ["meter"]
    assert records[0]["sensor_detail"]["command"] == f"{sys.executable} {meter}"


def test_fake_android_energy_through_the_pipeline(tmp_path):
    root = tmp_path / "board"
    folder = battery_tree(root, current=-1_000_000, voltage=4_000_000)

    def update(now):  # µA, negative while discharging, at 4.0 V
        put(folder / "current_now", int(-_power(now) / 4.0 * 1e6))

    with rewriting(update, period_s=0.002):
        records = _run(tmp_path, root)
    detail = records[0]["sensor_detail"]  # the interpretation of this battery's units and sign is recorded
    assert detail["current_unit"] == "uA" and detail["voltage_unit"] == "uV"
    assert detail["discharging_current"].startswith("negative")


def test_this_machine_says_unavailable(tmp_path):
    """No sensor tree at all: the row says why and leaves energy empty (never an estimate)."""
    root = tmp_path / "empty"
    root.mkdir()
    model, eval_set = _small(tmp_path)
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db", levels=(0,))
    proc = sparsebench("run", str(cfg), "--out", str(tmp_path / "rep"), "--sensor-root", str(root), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "rep" / "results.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["energy_status"] == "unavailable: no power sensor" and row["energy_mj"] == ""
    assert FIXTURES.is_dir()
