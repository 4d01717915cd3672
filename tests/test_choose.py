"""Per-layer kernel choice: candidates, measured choice (real timings on this machine), cache, rule fallback."""

import numpy as np

from harness.config import load_target
from schedules.choose import MeasuredChooser, rule_chooser
from schedules.cpu import cpu_info
from schedules.kernels import candidates, label


def _target():
    import tvm

    return tvm.target.Target(load_target("local").tvm_target)


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


def test_measured_choice_times_every_candidate_and_caches(tmp_path):
    target = _target()
    w = _block_sparse(512, 512, (16, 1), 0.95)
    chooser = MeasuredChooser(target, cache_file=tmp_path / "t.json", fingerprint="x")
    choice, info = chooser(w, 1, cpu_info(target))
    assert info["choice"] == "measured" and not info["cached"]
    assert set(info["alternatives_us"]) == {label(c) for c in candidates(w)}
    assert all(t > 0 for t in info["alternatives_us"].values())
    assert label(choice) == min(info["alternatives_us"], key=info["alternatives_us"].get)
    again = MeasuredChooser(target, cache_file=tmp_path / "t.json", fingerprint="x")
    assert again(w, 1, cpu_info(target))[1]["cached"] is True


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
