"""Memory bandwidth of this machine (numpy copies in and out of cache) and the roofline it sets for a kernel."""

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


def roofline(nbytes: int, timing: Timing, bandwidth: dict) -> tuple[float, str]:
    """(fraction, level): time to stream `nbytes` at the bandwidth of the level it fits in, over the measured median.

    A format whose bytes fit in half the LLC is compared with the cache copy bandwidth, a larger
    one with DRAM's. Above 1.0 means faster than that copy (the data sat in a closer cache).
    """
    level = "cache" if nbytes <= bandwidth["llc_bytes"] // 2 else "dram"
    ideal_us = nbytes / (bandwidth[f"{level}_gbs"] * 1e9) * 1e6
    return ideal_us / timing.median_us, level
