"""Memory bandwidth of this machine and the roofline it sets for a kernel.

The roofline uses a *read-bandwidth curve* measured here over working-set sizes from 16 KiB to far past the last-level
cache (``schedules.probe``: a compiled kernel, since numpy's call overhead hides how fast L1/L2 are read), not the
cache size the OS reports (a VM may report a 480 MB LLC). A kernel's ideal time is its working set -- weights, index
arrays and activations -- read at the bandwidth of that size; a fraction above 1 (+ tolerance) means the probe is
wrong, and is reported as such instead of printed. The numpy copy figures stay as context."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .timer import Timing


def cache_bytes(level: int | None = None) -> int:
    """Size in bytes of cpu0's cache at `level` (None: the last level) from sysfs; 0 if unknown."""
    sizes = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            lvl = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        sizes[lvl] = int(text.rstrip("KMG")) * scale
    if not sizes:
        return 0
    return sizes.get(level, 0) if level is not None else sizes[max(sizes)]


def llc_bytes() -> int:
    """Size of the last-level cache (32 MiB if unknown)."""
    return cache_bytes() or 32 << 20


def _copy_gbs(nbytes: int, threads: int, repeats: int) -> float:
    """Best-of-threads copy bandwidth over `nbytes` of float32 split across threads: (read + write bytes) / median
    time, GB/s. Each thread copies its part several times per sample, so pool dispatch does not dominate small
    buffers."""
    from concurrent.futures import ThreadPoolExecutor

    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    inner = max(1, (32 << 20) // max(nbytes, 1))  # at least ~32 MiB copied per sample
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for t in sorted({1, threads}):
            chunks = [slice(j * len(src) // t, (j + 1) * len(src) // t) for j in range(t)]
            parts = [(src[c], dst[c]) for c in chunks]

            def work(part):
                for _ in range(inner):
                    np.copyto(part[1], part[0])

            def copy(parts=parts):
                if len(parts) == 1:
                    work(parts[0])
                else:
                    list(pool.map(work, parts))

            copy()
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                copy()
                samples.append(time.perf_counter() - start)
            best = max(best, 2 * src.nbytes * inner / float(np.median(samples)) / 1e9)
    return best


def measure_bandwidth(threads: int, quick: bool = False) -> dict:
    """numpy copy bandwidth in GB/s (STREAM convention: bytes read + bytes written) for two buffers.

    ``cache``: source and destination together a quarter of the last-level cache (fits in it,
    not in the per-core L2s); ``dram``: each buffer 4x the LLC. The best of 1 and `threads`
    threads counts, as a roofline should be the best attainable. (numpy cannot time an
    L2-sized copy reliably -- its per-call overhead is a large part of it -- so a format that
    fits in the L2s can beat the cache roofline: fractions above 1.)
    """
    llc = llc_bytes()
    cache_buffer, dram_buffer = llc // 8, 4 * llc
    return {
        "llc_bytes": llc,
        "cache_buffer_bytes": cache_buffer,
        "dram_buffer_bytes": dram_buffer,
        "cache_gbs": _copy_gbs(cache_buffer, threads, 20 if quick else 50),
        "dram_gbs": _copy_gbs(dram_buffer, threads, 5 if quick else 10),
    }


#: Working-set sizes of the read-bandwidth curve: 16 KiB ... 1 GiB (256 MiB in a quick run), two points per octave.
def curve_sizes(quick: bool) -> list[int]:
    top = (256 << 20) if quick else (1 << 30)
    sizes, size = [], 16 << 10
    while size <= top:
        sizes += [size, size * 3 // 2] if size * 3 // 2 <= top else [size]
        size *= 2
    return sizes


#: A measured fraction of the roofline may exceed 1 by this much (timer noise) before the probe is blamed.
ROOFLINE_TOLERANCE = 0.05


def measure_read_curve(target, threads: int, quick: bool = False) -> list[dict]:
    """The read-bandwidth curve ``[{"bytes", "gbs", "threads"}, ...]`` of this machine (see the module doc)."""
    from schedules.cpu import cpu_info
    from schedules.probe import read_curve

    return read_curve(target, curve_sizes(quick), threads, cpu_info(target).lanes, repeat=5 if quick else 9)


def bandwidth_at(curve: list[dict], nbytes: int) -> float:
    """Read bandwidth (GB/s) for a working set of ``nbytes``: log-linear between the curve's neighbouring sizes
    (the end points beyond them)."""
    import math

    points = sorted((p["bytes"], p["gbs"]) for p in curve)
    if nbytes <= points[0][0]:
        return points[0][1]
    for (b0, g0), (b1, g1) in zip(points, points[1:]):
        if nbytes <= b1:
            w = (math.log(nbytes) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return g0 + w * (g1 - g0)
    return points[-1][1]


def read_roofline(working_set: int, timing: Timing, curve: list[dict]) -> dict:
    """The kernel's roofline record: ``roofline_gbs`` (the curve at its working-set size), ``roofline_fraction``
    (ideal time over the measured median, in [0, 1 + tolerance]), or ``roofline_error`` when the fraction is beyond
    that -- the kernel read faster than the probe says is possible, so the probe is wrong, not the kernel fast."""
    gbs = bandwidth_at(curve, working_set)
    ideal_us = working_set / (gbs * 1e9) * 1e6
    fraction = ideal_us / timing.median_us
    out = {"working_set_bytes": working_set, "roofline_gbs": round(gbs, 2)}
    if fraction > 1 + ROOFLINE_TOLERANCE:
        out.update(roofline_fraction=None, roofline_error=(
            f"fraction {fraction:.2f} > 1: {working_set} B in {timing.median_us:.3g} µs is "
            f"{working_set / timing.median_us / 1e3:.1f} GB/s, above the probe's {gbs:.1f} GB/s at that size; the "
            "bandwidth probe is wrong here"))
    else:
        out["roofline_fraction"] = round(fraction, 4)
    return out
