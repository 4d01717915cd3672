"""What the kernels need to know about a CPU target (SIMD width, registers) and the conventions
they share (register budget, attributes of a finished kernel)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm

# LLVM CPU names that imply AVX-512F. `mattr` flags win over these when present.
_AVX512_CPUS = frozenset(
    {
        "x86-64-v4",
        "skylake-avx512",
        "cascadelake",
        "cooperlake",
        "cannonlake",
        "icelake-client",
        "icelake-server",
        "tigerlake",
        "rocketlake",
        "sapphirerapids",
        "emeraldrapids",
        "graniterapids",
        "znver4",
        "znver5",
    }
)
# LLVM CPU names that imply AVX2 (and at least 256-bit vectors).
_AVX2_CPUS = frozenset(
    {
        "x86-64-v3",
        "haswell",
        "broadwell",
        "skylake",
        "alderlake",
        "raptorlake",
        "meteorlake",
        "znver1",
        "znver2",
        "znver3",
    }
)


# Live accumulators that hide FMA latency (about 4 cycles x 2 FMA ports on current cores).
TARGET_CHAINS = 8
# Vector registers kept free of accumulators: operands in flight and the broadcast value.
SPARE_REGISTERS = 4

# Attributes of a finished kernel. "tirx.is_scheduled" keeps dlight and MetaSchedule off it.
# op_pattern 8 (kOpaque) says explicitly what AnnotateTIROpPattern infers for a loop nest
# without blocks: FuseOps must not merge neighbouring elementwise ops into it.
KERNEL_ATTRS = {"tirx.is_scheduled": True, "op_pattern": 8}


@dataclass(frozen=True)
class CpuInfo:
    """SIMD facts of an LLVM CPU target.

    Attributes:
        lanes: fp32 elements per vector register (4 for SSE/NEON, 8 for AVX2, 16 for AVX-512).
        registers: number of architectural vector registers; bounds how many accumulators a
            micro-kernel may keep live without spilling.
    """

    lanes: int
    registers: int


def is_llvm_cpu(target: tvm.target.Target) -> bool:
    """Whether our TensorIR kernels can serve `target` (they are written for LLVM CPU targets)."""
    return target.kind.name == "llvm"


def cpu_info(target: tvm.target.Target) -> CpuInfo:
    """Derive vector width and register count from the target's mtriple, mcpu and mattr.

    We read the target, never the host: the kernels may be cross-compiled, and LLVM's host
    detection is unreliable inside VMs.
    """
    triple = str(target.attrs.get("mtriple", ""))
    mcpu = str(target.attrs.get("mcpu", ""))
    mattr = {str(a) for a in target.attrs.get("mattr", [])}
    if triple.startswith(("aarch64", "arm64")):
        return CpuInfo(lanes=4, registers=32)  # NEON: 32 x 128-bit
    if triple.startswith("arm"):
        return CpuInfo(lanes=4, registers=16)  # 32-bit NEON: 16 q-registers
    if "+avx512f" in mattr or (mcpu in _AVX512_CPUS and "-avx512f" not in mattr):
        return CpuInfo(lanes=16, registers=32)
    if mattr & {"+avx2", "+avx"} or mcpu in _AVX2_CPUS:
        return CpuInfo(lanes=8, registers=16)
    return CpuInfo(lanes=4, registers=16)  # baseline x86-64: SSE2


def largest_divisor_at_most(n: int, bound: int) -> int:
    """The largest divisor of `n` that is <= `bound` (at least 1): a register tile that needs no tail."""
    return max(d for d in range(1, max(1, min(n, bound)) + 1) if n % d == 0)
