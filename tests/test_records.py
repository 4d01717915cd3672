"""harness.records: the one definition of a result row, its nested records, and the weight-keyed layer join."""

from __future__ import annotations

import dataclasses
import importlib.util
import random

import pytest

from harness.records import (BuildRecord, DeviceMeta, EnergyRecord, LatencyStats, LayerRecord, ResultRow,
                             join_layers)
from harness.report import CSV_COLUMNS
from harness.sparsify import LayerSparsity


def _board_module(name: str):
    """A module of the board package (``harness/board``: what the device runs)."""
    return importlib.import_module(f"harness.board.{name}")


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


# --- the row and its columns -------------------------------------------------------------------------------------

def test_every_csv_column_is_a_scalar_column_of_the_row():
    columns = {c.name: c for c in ResultRow.columns()}
    for name in CSV_COLUMNS:
        assert name in columns and not columns[name].json, name
        assert columns[name].field == name  # CSV header = field name = SQL column name


def test_nested_records_are_json_columns():
    json_columns = {c.field: c.name for c in ResultRow.columns() if c.json}
    assert json_columns == {"target_json": "target_json", "energy": "energy_json", "reasons": "reasons_json",
                            "layers": "layers_json", "device_meta": "device_meta_json", "overhead": "overhead_json",
                            "round_p50_ms": "round_p50_ms_json", "clock_range_khz": "clock_range_khz_json",
                            "rounds_disturbed": "rounds_disturbed_json", "recovery": "recovery_json"}
    assert "id" not in {c.field for c in ResultRow.columns()}  # the store's key, not a column we write


def test_latency_and_build_map_onto_row_columns():
    row_fields = _fields(ResultRow)
    for f in dataclasses.fields(LatencyStats):
        assert f.metadata["column"] in row_fields, f.name
    for name in _fields(BuildRecord):
        assert name in row_fields, name
    stats = LatencyStats(n=100, p50_ms=1.0, p90_ms=1.2, p99_ms=1.5, mean_ms=1.05, std_ms=0.1, min_ms=0.9,
                         max_ms=3.0, cv=0.05, cv_all=0.1, n_outliers=1)
    build = BuildRecord(artifact_key="k", artifact_bytes=10, compile_s=2.0, tvm_version="0.27", toolchain="gcc")
    row = ResultRow(run_id="r", variant_key="v", device="d", model="m", method="dense", sparsity_target=0.0,
                    block="", batch=1, target="t", target_json={}, transport="local", verdict="VALID")
    assert row.latency is None
    row = row.with_latency(stats).with_build(build)
    assert row.latency == stats and row.build == build
    assert row.latency_p50_ms == 1.0 and row.n_iter == 100 and row.latency_cv_all == 0.1


def test_energy_columns_follow_the_record():
    row = ResultRow(run_id="r", variant_key="v", device="d", model="m", method="dense", sparsity_target=0.0,
                    block="", batch=1, target="t", target_json={}, transport="local", verdict="VALID")
    ok = row.with_energy(EnergyRecord(status="ok", energy_per_inference_mj=3.0))
    assert (ok.energy_status, ok.energy_mj) == ("ok", 3.0)
    invalid = row.with_energy(EnergyRecord(status="invalid: window too short", energy_per_inference_mj=3.0))
    assert invalid.energy_mj is None  # never a number from an invalid measurement


# --- records parsed from the board's JSON ------------------------------------------------------------------------

def test_energy_record_has_every_key_the_runner_produces():
    sensors = _board_module("sensors")
    produced = sensors.unavailable("no power sensor")
    assert set(produced) == set(_fields(EnergyRecord)) - {"extra"}
    record = EnergyRecord.from_json(produced)
    assert record.extra == {} and record.to_json() == produced and record.per_inference_mj is None


def test_energy_record_tolerates_old_and_new_runners():
    old = EnergyRecord.from_json({"status": "ok", "energy_per_inference_mj": 1.0})  # an older runner: fewer keys
    assert old.idle_w is None and old.rails is None and old.per_inference_mj == 1.0
    new = EnergyRecord.from_json({"status": "ok", "rails": ["a", "b"], "thermal_throttled": False})
    assert new.rails == ("a", "b") and new.extra == {"thermal_throttled": False}
    assert new.to_json()["thermal_throttled"] is False and EnergyRecord.from_json(new.to_json()) == new
    assert EnergyRecord.from_json({}).status.startswith("unavailable")


def test_device_meta_has_every_key_the_runner_collects():
    meta_module = _board_module("meta")
    collected = meta_module.device_metadata()
    meta = DeviceMeta.from_json(collected)
    assert meta.extra == {}, "runner keys missing from DeviceMeta"
    assert set(collected) == set(_fields(DeviceMeta)) - {"extra", "board"}  # board: the farm run adds it
    assert meta.cpu_count >= 1 and DeviceMeta.from_json(meta.to_json()) == meta


# --- the layer join ------------------------------------------------------------------------------------------------

def _pruned() -> list[LayerSparsity]:
    return [LayerSparsity("fc1", "fc1.weight", (64, 32), 0.9, 0.9, True),
            LayerSparsity("fc2", "fc2.weight", (32, 64), 0.9, 0.88, True),
            LayerSparsity("conv", "conv.w", (16, 27), 0.0, 0.0, False),
            LayerSparsity("head", "head.weight", (10, 32), 0.0, 0.0, False)]


def _compiled() -> list[dict]:
    """What the compiler reports (``LayerRecord.to_dict()`` in schedules/rewrite.py) with the ``weight`` key;
    head.weight has no record and one record has no known weight."""
    base = {"batch": 1, "density": 0.1, "nnz_blocks": 4, "weight_bytes": 100, "rule": None, "op": "matmul",
            "epilogue": None, "alternatives_us": None, "choice": "rule"}
    return [
        {**base, "layer": 0, "weight": "fc1.weight", "shape": [64, 32], "kernel": "bsr", "block": [8, 1],
         "rule": "density 0.10 < 0.5"},
        {**base, "layer": 1, "weight": "fc2.weight", "shape": [32, 64], "kernel": "nm", "block": [2, 4],
         "choice": "measured", "alternatives_us": {"dense": 5.0, "nm 2:4": 3.0}, "candidates_us": {"nm 2:4": [3.0]}},
        {**base, "layer": 2, "weight": "conv.w", "shape": [16, 27], "kernel": "default", "block": None,
         "choice": "none", "op": "conv"},
        {**base, "layer": 3, "weight": None, "shape": [10, 32], "kernel": "dense", "block": None},
    ]


def test_join_is_by_weight_name_not_position():
    joined = join_layers(_pruned(), _compiled())
    assert [(l.layer, l.weight, l.kernel, l.block, l.choice) for l in joined] == [
        ("fc1", "fc1.weight", "bsr", (8, 1), "rule"),
        ("fc2", "fc2.weight", "nm", (2, 4), "measured"),
        ("conv", "conv.w", "default", None, "none"),
        ("head", "head.weight", "default", None, "none"),  # no record with its weight: left to TVM, never "dense"
    ]
    fc1, fc2 = joined[:2]
    assert fc1.shape == (64, 32) and fc1.sparsity_actual == 0.9 and fc1.rule == "density 0.10 < 0.5"
    assert fc2.alternatives_us == {"dense": 5.0, "nm 2:4": 3.0} and fc2.sparsity_actual == 0.88
    assert fc2.extra == {"batch": 1, "candidates_us": {"nm 2:4": [3.0]}}  # unknown compiler keys are kept
    assert LayerRecord.from_json(fc2.to_json()) == fc2


@pytest.mark.parametrize("seed", range(5))
def test_join_ignores_the_compiler_records_order(seed):
    shuffled = _compiled()
    random.Random(seed).shuffle(shuffled)
    assert join_layers(_pruned(), shuffled) == join_layers(_pruned(), _compiled())


def test_join_without_compiler_records_is_all_default():
    joined = join_layers(_pruned(), [])
    assert {(l.kernel, l.choice, l.block) for l in joined} == {("default", "none", None)}
    assert [l.layer for l in joined] == ["fc1", "fc2", "conv", "head"]
