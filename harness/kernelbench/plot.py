"""The roofline figure: the read-bandwidth curve over working-set sizes, with every batch-1 kernel on it."""

from __future__ import annotations

from pathlib import Path


def plot_roofline(doc: dict, path: Path) -> Path | None:
    """Curve (GB/s vs working-set bytes, log-log) and each batch-1 record as a point at (working set, working set /
    median): a point on the curve runs at the speed of reading its data, below it is that much slower. ``None``
    when the document has no curve."""
    curve = doc.get("bandwidth", {}).get("read_curve")
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot([p["bytes"] for p in curve], [p["gbs"] for p in curve], "k-", lw=2, label="read bandwidth (probe)")
    by_impl: dict[str, list[tuple[float, float]]] = {}
    for r in doc["records"]:
        if r.get("working_set_bytes") and r.get("median_us"):
            by_impl.setdefault(r["impl"], []).append((r["working_set_bytes"],
                                                        r["working_set_bytes"] / r["median_us"] / 1e3))
    for impl, points in sorted(by_impl.items()):
        ax.scatter(*zip(*points), s=14, label=impl, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("working set: weights + indices + activations (bytes)")
    ax.set_ylabel("GB/s (working set / median time)")
    ax.set_title("Batch-1 kernels against the read-bandwidth roofline")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
