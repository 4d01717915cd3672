"""The issue's model-level targets, evaluated as PASS/FAIL on one suite document."""

from __future__ import annotations


#: "faster" means a time ratio below this
FASTER = 0.95


def target_checks(doc: dict) -> list[dict]:
    """``{"claim", "ok", "detail"}`` per target; claims about models the run did not measure are left out.

    * every measured model compiled (dense and sparse) and matched onnxruntime;
    * every model's dense build within ``plan.dense_target`` (1.5) x onnxruntime's time (median over median);
    * every CNN's 90 % block-sparse build faster than its own dense build, and faster than onnxruntime dense:
      by more than ``FASTER`` (a ratio of medians within 5 % is the noise of a shared machine, not a speedup).
    """
    limit = doc["meta"]["plan"]["dense_target"]
    measured = [m for m in doc["models"] if m["status"] != "skipped"]
    checks = []

    def add(claim: str, items: list[tuple[str, bool]]) -> None:
        if items:
            checks.append({"claim": claim, "ok": all(ok for _, ok in items), "detail": "; ".join(d for d, _ in items)})

    def built(m: dict) -> tuple[str, bool]:
        parts = [f"{which} {'ok' if m.get(which, {}).get('correct') else 'no'}" for which in ("dense", "sparse")]
        ok = m["status"] == "ok" and all(m[w].get("compiled") and m[w].get("correct") for w in ("dense", "sparse"))
        return f"{m['model']} {', '.join(parts)}" + ("" if m["status"] == "ok" else f" ({m['error']})"), ok

    add("every model compiled and matched onnxruntime (dense and 90 % sparse)", [built(m) for m in measured])
    ratios = [(m["model"], m["ratios"]) for m in measured if m["status"] == "ok"]
    add(f"dense TVM build within {limit:g}x of onnxruntime (dense ms / ORT ms)",
        [(f"{name} {r['dense_over_ort']:.2f}", r["dense_over_ort"] <= limit) for name, r in ratios
         if r["dense_over_ort"] is not None])
    cnns = [(m["model"], m["ratios"]) for m in measured if m["status"] == "ok" and m["kind"] == "cnn"]
    add(f"CNN: 90 % 16x1 sparse build faster than its own dense build (sparse ms / dense ms < {FASTER:g})",
        [(f"{name} {r['sparse_over_dense']:.2f}", r["sparse_over_dense"] < FASTER) for name, r in cnns
         if r["sparse_over_dense"] is not None])
    add(f"CNN: 90 % 16x1 sparse build faster than onnxruntime dense (sparse ms / ORT ms < {FASTER:g})",
        [(f"{name} {r['sparse_over_ort']:.2f}", r["sparse_over_ort"] < FASTER) for name, r in cnns
         if r["sparse_over_ort"] is not None])
    return checks
