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
