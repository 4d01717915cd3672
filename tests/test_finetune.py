"""Recovery by fine-tuning ([sparsify.finetune]): the digits-mlp targets with real numpy training, the schedule, the
exact sparsity pattern of the recovered variant, config faults (one line each, before any compile), the schema 8
migration, and a short `sparsebench run` whose rows carry both accuracies."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, make_small_model, sparsebench, write_config
from harness.config import FinetuneConfig, Method, model_finetune, parse_config
from harness.errors import EXIT_USAGE, HarnessError
from harness.sparsify.finetune import recover, schedule_steps, training_path


@pytest.fixture(scope="module")
def digits_mlp():
    from harness.models import zoo

    return zoo.materialize("digits-mlp")[0]


@pytest.mark.parametrize("method, least", [(Method("block", (16, 1)), 0.95), (Method("unstructured"), 0.97)])
def test_digits_mlp_targets_at_90(digits_mlp, tmp_path, method, least):
    """The issue's targets: 90 % block 16x1 >= 95 %, 90 % unstructured >= 97 % after recovery (dense 98.6 %), each
    in a few seconds of numpy; the one-shot variant is far below; the recovered one keeps the method's pattern."""
    import onnx
    from onnx import numpy_helper

    rec = recover("digits-mlp", digits_mlp, method, 0.9, tmp_path, FinetuneConfig())
    assert rec.accuracy >= least, rec
    assert rec.accuracy_oneshot < rec.accuracy - 0.05
    assert 0 < rec.train_s < 60
    assert rec.record["schedule"] == "gradual" and rec.record["pruning_steps"][-1]["sparsity"] == pytest.approx(0.9)
    assert rec.record["train_samples"] == 1438 and rec.record["eval_samples"] == 359  # the 80/20 split
    # the same pattern granularity as one-shot pruning: per layer, the same reached sparsity
    from harness.sparsify import make_variant

    oneshot = make_variant("digits-mlp", digits_mlp, method, 0.9, tmp_path / "oneshot")
    assert [l.sparsity_actual for l in rec.variant.layers] == pytest.approx(
        [l.sparsity_actual for l in oneshot.layers], abs=1e-3)
    assert [l.pruned for l in rec.variant.layers] == [True, True, False]
    if method.name == "block":  # every 16x1 block of a pruned layer all zero or kept: [N, K] views, 16 rows a block
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(rec.variant.onnx_path)).graph.initializer}
        for layer in rec.variant.layers[:2]:
            w = inits[layer.weight]  # Gemm transB=1: [N, K]
            blocks = (w.reshape(w.shape[0] // 16, 16, w.shape[1]) != 0).any(axis=1)
            assert 1 - blocks.mean() == pytest.approx(0.9, abs=0.01)
    # cached: the same variant again, without training
    again = recover("digits-mlp", digits_mlp, method, 0.9, tmp_path, FinetuneConfig())
    assert again.variant.sha256 == rec.variant.sha256 and again.train_s == rec.train_s


def test_schedule_is_cubic_from_start_to_end():
    cfg = FinetuneConfig(schedule="gradual", start=0.2, end=0.6, steps=4)
    steps = schedule_steps(cfg, 0.8, 100)
    assert [s for s, _ in steps] == [20, 33, 47, 60]
    assert [x for _, x in steps] == pytest.approx([0.8 * (1 - (1 - k / 4) ** 3) for k in range(1, 5)])
    assert all(a < b for (_, a), (_, b) in zip(steps, steps[1:])) and steps[-1][1] == pytest.approx(0.8)
    assert schedule_steps(FinetuneConfig(schedule="oneshot"), 0.9, 100) == [(0, 0.9)]


def test_training_paths():
    assert training_path("digits-mlp", None) is None and training_path("digits-cnn", None) is None
    assert "no labels" in training_path("ffn-768", None)
    assert "user's ONNX file" in training_path("mine", ROOT / "x.onnx")


def test_config_finetune_table_and_opt_out():
    models = [{"name": "digits-mlp"}, {"name": "ffn-768", "finetune": False}]
    cfg = parse_config({"sparsify": {"finetune": {"epochs": 3, "schedule": "oneshot"}}, "models": models})
    assert cfg.sparsify.finetune == FinetuneConfig(epochs=3, schedule="oneshot")
    assert model_finetune(cfg.sparsify, cfg.models[0]).epochs == 3
    assert model_finetune(cfg.sparsify, cfg.models[1]) is None
    off = parse_config({"sparsify": {"finetune": {"enabled": False}}, "models": [{"name": "ffn-768"}]})
    assert off.sparsify.finetune is None
    assert parse_config({"models": [{"name": "digits-mlp"}]}).sparsify.finetune is None
    # a model's own settings over [sparsify.finetune]'s; a table with enabled = false opts out
    own = parse_config({"sparsify": {"finetune": {"epochs": 3, "start": 0.1}},
                        "models": [{"name": "digits-cnn", "finetune": {"epochs": 30, "lr": 0.003}},
                                   {"name": "ffn-768", "finetune": {"enabled": False}}]})
    assert model_finetune(own.sparsify, own.models[0]) == FinetuneConfig(epochs=30, lr=0.003, start=0.1)
    assert model_finetune(own.sparsify, own.models[1]) is None
    alone = parse_config({"models": [{"name": "digits-mlp", "finetune": {"epochs": 2}}]})
    assert model_finetune(alone.sparsify, alone.models[0]) == FinetuneConfig(epochs=2)
    with pytest.raises(HarnessError, match=r"models\[0\] \(digits-mlp\): finetune: end \(0.05\) is before start"):
        parse_config({"sparsify": {"finetune": {"start": 0.1}}, "models": [{"name": "digits-mlp",
                                                                             "finetune": {"end": 0.05}}]})
    with pytest.raises(HarnessError, match=r"models\[0\] \(ffn-768\).*finetune = false"):
        parse_config({"sparsify": {"finetune": {}}, "models": [{"name": "ffn-768"}]})


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _one_line(proc) -> str:
    assert proc.returncode == EXIT_USAGE, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsebench: error:") and "Traceback" not in proc.stderr, \
        proc.stderr
    return lines[0]


FAULTS = {
    "user-onnx": ('[sparsify.finetune]\nepochs = 2\n', "", "models[0] (small): [sparsify.finetune] is on but small "
                  "cannot be fine-tuned: it is a user's ONNX file"),
    "model-true": ("", "finetune = true", "models[0] (small): finetune is on but small cannot be fine-tuned"),
    "schedule": ('[sparsify.finetune]\nschedule = "cubic"\n', "", "[sparsify.finetune].schedule must be one of"),
    "epochs": ("[sparsify.finetune]\nepochs = -1\n", "", "[sparsify.finetune].epochs must be a whole number >= 0"),
    "lr": ("[sparsify.finetune]\nlr = 0\n", "", "[sparsify.finetune].lr must be a number > 0"),
    "end-before-start": ("[sparsify.finetune]\nstart = 0.6\nend = 0.2\n", "", "end (0.2) is before start (0.6)"),
    "unknown-key": ("[sparsify.finetune]\nrate = 1\n", "", "[sparsify.finetune]: unknown key(s) rate"),
    "not-a-table": ("", "", None),
    "model-table-bad": ("", "finetune = {epochs = 2.5}", "models[0] (small): finetune.epochs must be a whole number"),
    "model-not-bool": ("", 'finetune = "no"', "finetune must be true or false"),
}


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_finetune_config_faults_are_one_line(tmp_path, case):
    sparsify, model_extra, says = FAULTS[case]
    model, eval_set = make_small_model(tmp_path)
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db",
                       model_extra=model_extra)
    text = cfg.read_text()
    if case == "not-a-table":
        text = text.replace("[sparsify]\n", "[sparsify]\nfinetune = 3\n")
        says = "[sparsify.finetune] must be a table"
    else:
        text = text.replace("[measure]", sparsify + "[measure]")
    cfg.write_text(text)
    line = _one_line(_cli("run", str(cfg), "--no-progress"))
    assert says in line, line
    if case in ("user-onnx", "model-true"):
        assert "set finetune = false in its [[models]] table" in line
    assert not (tmp_path / "r.db").exists()  # refused before anything was stored or compiled


def test_schema_7_store_is_migrated_to_8(tmp_path):
    from harness.records import ResultRow
    from harness.store import SCHEMA_VERSION, ResultStore

    db = tmp_path / "r.db"
    store = ResultStore(db)
    store.create_run("r1", name="n", config_toml="", config_hash="h", target="local", target_json={}, host={},
                     harness_version="0")
    store.add_result(ResultRow(run_id="r1", variant_key="a", device="d", model="m", method="dense",
                               sparsity_target=0.0, block="", batch=1, target="local", target_json={},
                               transport="local", verdict="VALID", accuracy=0.9))
    store.close()
    new = _table_columns(db)
    conn = sqlite3.connect(db)
    for column in ("accuracy_oneshot", "finetune_s", "recovery_json"):
        conn.execute(f"ALTER TABLE results DROP COLUMN {column}")
    conn.execute("UPDATE meta SET value='7' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    store = ResultStore(db)
    assert SCHEMA_VERSION == 8
    assert store.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "8"
    (row,) = store.results("r1")
    assert row.accuracy == 0.9 and row.accuracy_oneshot is None and row.finetune_s is None and row.recovery is None
    store.close()
    assert _table_columns(db) == new


def _table_columns(db):
    conn = sqlite3.connect(db)
    try:
        return {r[1]: (r[2], bool(r[3])) for r in conn.execute("PRAGMA table_info(results)")}
    finally:
        conn.close()


def test_run_with_finetune_rows_carry_both_accuracies(tmp_path):
    """`sparsebench run` of digits-mlp with [sparsify.finetune], one sparse level, on this machine: the sparse row's
    accuracy is the recovered one, its one-shot accuracy and training time beside it, in the store and the CSV."""
    db, out = tmp_path / "r.db", tmp_path / "report"
    cfg = write_config(tmp_path / "c.toml", model=ROOT, eval_set=None, db=db, levels=(0, 0.9),
                       methods=("block:16x1",), extra="[sparsify.finetune]\nepochs = 6\n", name="digits-mlp")
    cfg.write_text(cfg.read_text().replace(f'path = "{ROOT}"\n', ""))
    proc = sparsebench("run", str(cfg), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "digits-mlp/block-16x1/0.9: fine-tuned in" in proc.stderr
    with open(out / "results.csv") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    dense, sparse = rows["dense"], rows["block"]
    assert dense["accuracy_oneshot"] == "" and dense["finetune_s"] == ""
    assert float(sparse["accuracy"]) >= 0.95 and float(sparse["accuracy_oneshot"]) < 0.5
    assert float(sparse["finetune_s"]) > 0
    conn = sqlite3.connect(db)
    (recovery,) = conn.execute("SELECT recovery_json FROM results WHERE method='block'").fetchone()
    assert '"schedule": "gradual"' in recovery
    html = (out / "report.html").read_text()
    assert "accuracy one-shot" in html and "fine-tune s" in html
    assert np.isclose(float(sparse["sparsity_target"]), 0.9)


def test_a_channel_cut_mlp_is_fine_tuned_like_the_sparse_variants_it_is_compared_with(digits_mlp, tmp_path):
    """The channel-vs-sparse comparison holds recovered models on both sides: the cut (smaller, dense) digits MLP
    trains with the same settings, keeps its shape, layer records and parameter count, and is cached."""
    from harness.sparsify.channel import make_channel_variant
    from harness.sparsify.finetune import recover_channel

    cut = make_channel_variant("digits-mlp", digits_mlp, 0.9, tmp_path)
    rec = recover_channel(cut, FinetuneConfig(), tmp_path)
    assert rec is not None and rec.variant.params == cut.params and rec.variant.layers == cut.layers
    assert rec.variant.method == "channel" and rec.variant.sha256 != cut.sha256
    assert rec.accuracy > rec.accuracy_oneshot and rec.accuracy >= 0.95, (rec.accuracy_oneshot, rec.accuracy)
    again = recover_channel(cut, FinetuneConfig(), tmp_path)
    assert (again.variant.sha256, again.accuracy) == (rec.variant.sha256, rec.accuracy)  # from the cache
