"""Reading the suite's records: one summary row per shape, batch and sparsity, for the table and the checks."""

from __future__ import annotations

from collections.abc import Sequence


def index(records: Sequence[dict]) -> dict:
    """Records by (shape, batch, sparsity, format, block, impl)."""
    return {(tuple(r["shape"]), r["batch"], r["sparsity"], r["format"], tuple(r["block"] or ()), r["impl"]): r
            for r in records}


def dense_record(idx: dict, shape, m: int, impl: str) -> dict | None:
    """The dense record of `impl` at `shape` and batch `m` in `idx` (see `index`), or None."""
    return idx.get((shape, m, 0.0, "dense", (), impl))


def fastest_np_ort(idx: dict, shape, m: int) -> dict | None:
    """The faster of the numpy and onnxruntime records at `shape` and batch `m` ("np/ort"), or None."""
    baselines = [dense_record(idx, shape, m, impl) for impl in ("numpy", "onnxruntime")]
    return min((b for b in baselines if b), key=lambda r: r["median_us"], default=None)


def rows(doc: dict) -> list[dict]:
    """One summary row per shape, batch and sparsity: the best of our sparse kernels against the baselines."""
    idx = index(doc["records"])
    shapes = doc["meta"]["plan"]["shapes"]
    keys = {(tuple(r["shape"]), r["batch"], r["sparsity"]) for r in doc["records"] if r["impl"] == "ours-sparse"}
    out = []
    for shape, m, sparsity in sorted(keys, key=lambda key: (shapes.index(list(key[0])), key[1], key[2])):
        ours = [r for r in doc["records"] if tuple(r["shape"]) == shape and r["batch"] == m
                and r["sparsity"] == sparsity and r["impl"] == "ours-sparse"]
        blocks = [r for r in ours if r["format"] == "bsr"]
        best = min(ours, key=lambda r: r["median_us"])
        best_block = min(blocks, key=lambda r: r["median_us"]) if blocks else None
        csr = idx.get((shape, m, sparsity, "bsr", (1, 1), "ours-sparse"))
        scipy_csr = idx.get((shape, m, sparsity, "bsr", (1, 1), "scipy-csr"))
        nm_rec = next((r for r in ours if r["format"] == "nm"), None)
        out.append({"shape": shape, "batch": m, "sparsity": sparsity, "best": best, "best_block": best_block,
                    "baseline": fastest_np_ort(idx, shape, m), "dense": dense_record(idx, shape, m, "ours-dense"),
                    "csr": csr, "scipy_csr": scipy_csr, "nm": nm_rec,
                    "tvm_default": dense_record(idx, shape, m, "tvm-default")})
    return out


def label(record: dict | None) -> str:
    """How a record's kernel is named in the table: ``bsr 16x1``, ``nm 2:4``, ``dense`` or ``-``."""
    if record is None:
        return "-"
    block = record["block"]
    if record["format"] == "nm":
        return f"nm {block[0]}:{block[1]}"
    return f"{record['format']} {block[0]}x{block[1]}" if block else record["format"]


def ratio(a: dict | None, b: dict | None) -> float | None:
    """How many times faster `b` is than `a` (a.median / b.median); None if either is missing."""
    if not a or not b:
        return None
    return a["median_us"] / b["median_us"]
