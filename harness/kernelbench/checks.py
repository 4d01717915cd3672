"""The issue's kernel-level targets, evaluated as PASS/FAIL on one suite document."""

from __future__ import annotations

from .bandwidth import ROOFLINE_TOLERANCE
from .summary import dense_record, fastest_np_ort, index, label, ratio, rows


def _roof(record: dict) -> str:
    """``0.81 of 95.3 GB/s at 2.4 MB``, or the probe's error."""
    if record.get("roofline_error"):
        return f"probe wrong: {record['roofline_error']}"
    return (f"{record['roofline_fraction']:.2f} of {record['roofline_gbs']:.1f} GB/s at "
            f"{record['working_set_bytes'] / 1e6:.2g} MB")


def issue_checks(doc: dict) -> list[dict]:
    """The issue's kernel-level targets evaluated on this run: ``{"claim", "ok", "detail"}`` each.

    "np/ort" is the faster of numpy and onnxruntime for that shape and batch. Claims about a
    sparsity or batch the run did not measure are left out.
    """
    summary = rows(doc)
    idx = index(doc["records"])
    checks = []

    def add(claim: str, items: list[tuple[str, bool]]) -> None:
        if items:
            checks.append({"claim": claim, "ok": all(ok for _, ok in items), "detail": "; ".join(d for d, _ in items)})

    items = []
    for shape in doc["meta"]["plan"]["shapes"]:
        for m in doc["meta"]["plan"]["batches"]:
            dense = dense_record(idx, tuple(shape), m, "ours-dense")
            base = fastest_np_ort(idx, tuple(shape), m)
            if dense and base:
                times = dense["median_us"] / base["median_us"]
                items.append((f"{shape[0]}x{shape[1]} M{m} {times:.2f}", times <= 1.5))
    add("ours-dense within 1.5x of np/ort (dense time / np/ort time)", items)

    def pick(batch: int, sparsity: float):
        return [r for r in summary if r["batch"] == batch and abs(r["sparsity"] - sparsity) < 1e-9]

    def shape_name(row):
        return f"{row['shape'][0]}x{row['shape'][1]}"

    def faster(claim: str, batch: int, sparsity: float, slow: str, fast: str, bound: float, named: bool = False,
               strict: bool = False) -> None:
        """Claim: row[fast] is at least `bound` x (more than, if `strict`) faster than row[slow] in every row at
        `batch` and `sparsity` that has both; `named` puts the fast kernel's label in the detail."""
        items = []
        for r in pick(batch, sparsity):
            if r[fast] and r[slow]:
                times = ratio(r[slow], r[fast])
                name = f"{shape_name(r)} {label(r[fast])}" if named else shape_name(r)
                items.append((f"{name} {times:.2f}x", times > bound if strict else times >= bound))
        add(claim, items)

    faster(">= 4x np/ort, batch 1, 90 %, best block", 1, 0.9, "baseline", "best_block", 4, named=True)
    faster(">= 5x ours-dense, batch 1, 90 %, best block", 1, 0.9, "dense", "best_block", 5)
    add(">= 60 % of the bandwidth roofline, batch 1, 90 %, best block", [
        (f"{shape_name(r)} {_roof(r['best_block'])}", (r["best_block"].get("roofline_fraction") or 0) >= 0.6)
        for r in pick(1, 0.9) if r["best_block"]])
    limit = 1 + ROOFLINE_TOLERANCE
    add(f"every roofline fraction in [0, {limit:.2f}] (else the bandwidth probe is wrong)", [
        (f"{shape_name(r)} {r['impl']} {label(r)} {_roof(r)}",
         r.get("roofline_error") is None and 0 <= r["roofline_fraction"] <= limit)
        for r in doc["records"] if r.get("roofline_fraction") is not None or r.get("roofline_error")])
    faster(">= 1.5x np/ort, batch 1, 90 %, 1x1", 1, 0.9, "baseline", "csr", 1.5)
    faster(">= 2x scipy CSR, batch 1, 90 %, 1x1", 1, 0.9, "scipy_csr", "csr", 2)
    faster("best block beats np/ort at 50 %, batch 1", 1, 0.5, "baseline", "best_block", 1, named=True, strict=True)
    faster(">= 2.5x np/ort, batch 16, 90 %, best block", 16, 0.9, "baseline", "best_block", 2.5, named=True)
    faster(">= 1.3x np/ort, batch 1, 2:4", 1, 0.5, "baseline", "nm", 1.3)
    return checks
