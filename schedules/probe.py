"""A read-bandwidth probe: a TensorIR kernel that sums a buffer over and over, to measure how fast this CPU reads
a working set of a given size (L1 ... DRAM) -- the limit a memory-bound kernel's roofline must use.

numpy cannot measure it: its per-call overhead is larger than reading an L1- or L2-sized buffer, so a numpy probe
under-states the bandwidth of small working sets and kernels then "beat" the roofline. Here the passes over the
buffer run inside one compiled call, with independent vector accumulators so the adds never limit the loads.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

#: Independent vector accumulators per thread (enough to hide an FP add's latency behind the loads).
CHAINS = 4


def read_kernel(threads: int, lanes: int) -> tvm.tirx.PrimFunc:
    """``read(x, out, passes)``: ``passes`` sweeps over the float32 buffer ``x`` (its length n a multiple of
    threads * CHAINS * lanes), split in ``threads`` contiguous parts read in parallel; per-lane sums land in
    ``out`` [threads * CHAINS * lanes] so nothing is optimised away. Bytes read per call: 4 * n * passes."""
    width = CHAINS * lanes

    @T.prim_func
    def read(x_handle: T.handle, out: T.Buffer((threads * width,), "float32"), passes: T.int32):
        T.func_attr({"tirx.noalias": True, "global_symbol": "read"})
        n = T.int32()
        x = T.match_buffer(x_handle, (n,), "float32")
        for t in T.parallel(threads):
            acc = T.alloc_buffer((width,), "float32", scope="local")
            for c in T.serial(width):
                acc[c] = T.float32(0)
            for _ in T.serial(passes):
                for i in T.serial(n // threads // width):
                    for c in T.unroll(CHAINS):
                        for lane in T.vectorized(lanes):
                            acc[c * lanes + lane] = acc[c * lanes + lane] + \
                                x[t * (n // threads) + (i * CHAINS + c) * lanes + lane]
            for c in T.serial(width):
                out[t * width + c] = acc[c]

    return read


def read_curve(target: tvm.target.Target, sizes: list[int], threads: int, lanes: int,
               min_bytes_per_call: int = 64 << 20, repeat: int = 7) -> list[dict]:
    """Read bandwidth at each working-set size in ``sizes`` (bytes): ``{"bytes", "gbs", "threads"}`` each, the
    best of 1 and ``threads`` threads (a roofline is the best attainable), GB/s = bytes read / median call time.
    Each call sweeps the buffer enough times to read ``min_bytes_per_call``, so the call overhead is negligible."""
    import numpy as np

    dev = tvm.cpu(0)
    libs = {t: tvm.tirx.build(read_kernel(t, lanes), target=target) for t in sorted({1, threads})}
    curve = []
    for size in sizes:
        best = None
        for t, lib in libs.items():
            unit = t * CHAINS * lanes
            n = max(unit, size // 4 // unit * unit)
            x = tvm.runtime.tensor(np.ones(n, np.float32), dev)
            out = tvm.runtime.tensor(np.zeros(t * CHAINS * lanes, np.float32), dev)
            passes = max(1, min_bytes_per_call // (4 * n))
            seconds = lib.time_evaluator("read", dev, number=1, repeat=repeat)(x, out, passes).median
            gbs = 4 * n * passes / seconds / 1e9
            if best is None or gbs > best["gbs"]:
                best = {"bytes": 4 * n, "gbs": round(gbs, 2), "threads": t}
        curve.append(best)
    return curve
