"""Statistics, quality figures and verdicts."""

import numpy as np
import pytest

from harness.measure import latency_stats, quality_figures, verdict


def test_latency_stats_percentiles_and_cv():
    ns = np.arange(1, 101) * 1_000_000  # 1..100 ms
    s = latency_stats(ns)
    assert s.n == 100 and s.min_ms == 1 and s.max_ms == 100
    assert s.p50_ms == pytest.approx(50.5) and s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.cv == pytest.approx(np.std(np.arange(1, 101), ddof=1) / 50.5)


def test_quality_figures():
    dense = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    out = np.array([[0.9, 0.1], [0.6, 0.4], [1.0, 0.0]])
    q = quality_figures(out, labels=np.array([0, 1, 1]), dense=dense, reference=out + 1e-7)
    assert q.accuracy == pytest.approx(1 / 3) and q.top1_agreement == pytest.approx(2 / 3)
    assert q.max_abs_err == pytest.approx(0.6) and q.ref_max_abs_err < 1e-6
    assert quality_figures(out).accuracy is None


def test_verdict_reasons():
    good = latency_stats([1_000_000 + i for i in range(50)])
    q_ok = quality_figures(np.ones((2, 2)), reference=np.ones((2, 2)))
    assert verdict(good, q_ok, min_valid_runs=10, max_cv=0.1, ref_rtol=1e-4) == ("VALID", [])
    noisy = latency_stats([1_000_000, 3_000_000] * 10)
    status, reasons = verdict(noisy, q_ok, min_valid_runs=30, max_cv=0.1, ref_rtol=1e-4)
    assert status == "INVALID" and any("too few iterations" in r for r in reasons) and any("CV" in r for r in reasons)
    wrong = quality_figures(np.ones((2, 2)), reference=np.zeros((2, 2)))
    status, reasons = verdict(good, wrong, min_valid_runs=10, max_cv=0.1, ref_rtol=1e-4)
    assert status == "INVALID" and "off the reference" in reasons[0]


def test_outliers_do_not_hide_a_steady_distribution_but_are_counted():
    rng = np.random.default_rng(0)
    steady = rng.normal(1_000_000, 10_000, 2000)  # 1 ms ± 1 %
    spiky = np.concatenate([steady, [80_000_000, 120_000_000]])  # two 100x stalls
    s = latency_stats(spiky)
    assert s.n_outliers == 2 and s.cv < 0.02 and s.cv_all > 0.5
    q = quality_figures(np.ones((2, 2)), reference=np.ones((2, 2)))
    assert verdict(s, q, min_valid_runs=10, max_cv=0.1, ref_rtol=1e-4) == ("VALID", [])
    many = latency_stats(np.concatenate([steady, [80_000_000] * 100]))  # 5 % stalls: an interrupted run
    status, reasons = verdict(many, q, min_valid_runs=10, max_cv=0.1, ref_rtol=1e-4)
    assert status == "INVALID" and "outliers" in reasons[-1]
