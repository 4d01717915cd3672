"""Per-layer kernel choice: candidates, the rule, the plan chooser (measurement itself: tests/test_select.py)."""

import numpy as np

from schedules.choose import PlanChooser, layer_key, kernel_key, rule_chooser
from schedules.kernels import candidates, label


def _block_sparse(n, k, block, sparsity, seed=0):
    rng = np.random.default_rng(seed)
    keep = rng.random((n // block[0], k // block[1])) >= sparsity
    return rng.standard_normal((n, k)).astype(np.float32) * np.kron(keep, np.ones(block, bool))


def test_candidates_follow_the_sparsity_pattern():
    dense = np.ones((64, 32), np.float32)
    assert candidates(dense) == [("dense", None)]
    w = _block_sparse(64, 32, (16, 1), 0.9)
    names = [label(c) for c in candidates(w)]
    assert names[0] == "dense" and "bsr 16x1" in names and "bsr 1x1" in names


def test_rule_choice_says_it_was_not_measured():
    w = _block_sparse(64, 32, (8, 1), 0.9)
    choice, info = rule_chooser(0.5)(w, 1, None)
    assert choice == ("bsr", (8, 1)) and info["choice"] == "rule"


def test_nm_candidate_only_for_nm_weights():
    from schedules.nm import prune_nm

    rng = np.random.default_rng(4)
    w24 = prune_nm(rng.standard_normal((64, 30)).astype(np.float32), 2, 4)
    assert ("nm", (2, 4)) in candidates(w24)
    unstructured = rng.standard_normal((64, 32)).astype(np.float32) * (rng.random((64, 32)) > 0.5)
    assert not [c for c in candidates(unstructured) if c[0] == "nm"]
    choice, info = rule_chooser(0.5)(w24, 1, None)
    assert choice == ("nm", (2, 4)) and "2:4" in info["rule"]
    assert label(choice) == "nm 2:4"


def test_plan_chooser_follows_the_plan_and_names_what_it_lacks():
    w = _block_sparse(64, 32, (16, 1), 0.9)
    table = {layer_key(w, 4): (("bsr", (4, 1)), {"choice": "measured", "alternatives_us": {"bsr 4x1": 1.0}})}
    choice, info = PlanChooser(table)(w, 4, None)
    assert choice == ("bsr", (4, 1)) and info["choice"] == "measured"
    choice, info = PlanChooser(table)(w, 8, None)  # another batch: not in the plan -> the rule, saying so
    assert info["choice"] == "rule" and "not in the kernel plan" in info["rule"]


def test_keys_depend_on_the_pattern_not_the_values():
    w = _block_sparse(64, 32, (16, 1), 0.9)
    scaled = w * 3.0
    assert layer_key(w, 1) == layer_key(scaled, 1) != layer_key(w, 2)
    assert kernel_key(("bsr", (16, 1)), w, 1) == kernel_key(("bsr", (16, 1)), scaled, 1)
    other = _block_sparse(64, 32, (16, 1), 0.9, seed=1)
    assert kernel_key(("bsr", (16, 1)), w, 1) != kernel_key(("bsr", (16, 1)), other, 1)
    assert kernel_key(("dense", None), w, 1) == kernel_key(("dense", None), other, 1)  # dense: shape only


def test_cuda_candidates_are_ours_and_tvms_default_schedule():
    from schedules.kernels import cuda_candidates

    w = _block_sparse(64, 32, (16, 1), 0.9)
    names = [label(c) for c in cuda_candidates(w)]
    assert names[:2] == ["dense", "tvm"] and "bsr 16x1" in names and "bsr 1x1" in names
    assert not [n for n in names if n.startswith("nm")]  # no N:M kernel on CUDA
    assert cuda_candidates(np.ones((64, 32), np.float32)) == [("dense", None), ("tvm", None)]
    # TVM's kernel, like our dense one, depends on the shape alone
    assert kernel_key(("tvm", None), w, 1) == kernel_key(("tvm", None), np.ones((64, 32), np.float32), 1)
    assert kernel_key(("tvm", None), w, 1) != kernel_key(("dense", None), w, 1)


def test_cuda_rule_is_what_the_recorded_measurements_say_is_fastest():
    """The rule on CUDA (nothing measured on the device) picks a kernel only because the recorded timings show it
    fastest: in every workload where it was timed against ours it beat all of ours, and it was timed in one."""
    import json
    from pathlib import Path

    from schedules.choose import CUDA_MEASUREMENTS, CUDA_RULE
    from schedules.cuda import GpuInfo

    recorded = json.loads((Path(__file__).resolve().parents[1] / CUDA_MEASUREMENTS).read_text())
    assert recorded["device"] and recorded["driver"] == "580.159.04" and recorded["date"] == "2026-11-29"
    assert recorded["how"] and recorded["unit"]
    chosen = label(CUDA_RULE)
    compared = [w for w in recorded["workloads"] if chosen in {t["kernel"] for t in w["p50_us"]}]
    assert compared, f"no recorded workload timed {chosen}"
    for workload in compared:
        fastest = min(workload["p50_us"], key=lambda t: t["us"])
        assert fastest["kernel"] == chosen, (workload["model"], fastest)

    w = _block_sparse(64, 32, (16, 1), 0.9)
    for weight in (w, np.ones((64, 32), np.float32)):
        choice, info = rule_chooser(0.5)(weight, 1, GpuInfo("sm_90"))
        assert choice == CUDA_RULE and info["choice"] == "rule" and CUDA_MEASUREMENTS in info["rule"]
    assert rule_chooser(0.5)(w, 1, None)[0] == ("bsr", (16, 1))  # the CPU rule is unchanged
