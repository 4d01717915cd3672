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

# Storage scope of the kernels' small accumulator tiles. TVM 0.27's LowerTVMBuiltin keeps only "global"
# allocations of constant size under 1 KiB on the stack; a "local" one becomes a TVMBackendAllocWorkspace
# call (per parallel iteration) and lives in memory, so LLVM cannot promote the tile to registers: every
# FMA then also stores its accumulator. "global" + constant size = an alloca that LLVM turns into registers.
ACC_SCOPE = "global"

# Attributes of a finished kernel. "tirx.is_scheduled" keeps dlight and MetaSchedule off it.
# op_pattern 8 (kOpaque) says explicitly what AnnotateTIROpPattern infers for a loop nest
# without blocks: FuseOps must not merge neighbouring elementwise ops into it.
KERNEL_ATTRS = {"tirx.is_scheduled": True, "op_pattern": 8}


@dataclass(frozen=True)
class Epilogue:
    """What a kernel does to each output before storing it: ``+ bias[col]``, then ``max(., 0)``, then
    ``min(., ceiling)`` (ReLU6 is relu with ceiling 6, as ONNX Clip(0, 6) arrives).

    With ``bias`` the kernel takes one more argument, bias [N] float32, between its weight arrays
    and y. Fusing these into the final store saves a pass over y (and TVM's default pipeline
    would run a separate add and ReLU as unscheduled loops).
    """

    bias: bool = False
    relu: bool = False
    ceiling: float | None = None

    @property
    def activation(self) -> str | None:
        """"relu", "relu6" (relu, ceiling 6), "relu+min<c>", "min<c>" or None."""
        parts = (["relu6"] if self.relu and self.ceiling == 6.0 else
                 (["relu"] if self.relu else []) + ([f"min{self.ceiling:g}"] if self.ceiling is not None else []))
        return "+".join(parts) or None

    @property
    def suffix(self) -> str:
        """Kernel-name suffix: "", "_bias", "_relu", "_bias_relu6", ..."""
        return ("_bias" if self.bias else "") + ("_" + self.activation.replace("+", "_") if self.activation else "")


NO_EPILOGUE = Epilogue()


def epilogue(ep: Epilogue, value, bias, col):
    """`value` (a TIR expression of output column `col`) after `ep`; called from inside TVMScript kernels."""
    from tvm.script import tirx as T

    if ep.bias:
        value = value + bias[col]
    if ep.relu:
        value = T.max(value, T.float32(0))
    if ep.ceiling is not None:
        value = T.min(value, T.float32(ep.ceiling))
    return value


def finish(func, ep: Epilogue):
    """A kernel's PrimFunc ready to emit: without the ``bias`` parameter unless `ep` uses it, with KERNEL_ATTRS.

    The TVMScript kernels always declare ``bias``; a body that never reads it (no bias epilogue)
    loses the parameter here, so callers pass exactly (x, weight arrays..., [bias], y).
    """
    import tvm

    if not ep.bias:
        func = tvm.tirx.PrimFunc([p for p in func.params if p.name != "bias"], func.body, func.ret_type, func.attrs)
    return func.with_attr(KERNEL_ATTRS)


@dataclass(frozen=True)
class CpuInfo:
    """SIMD facts of an LLVM CPU target.

    Attributes:
        lanes: fp32 elements per vector register (4 for SSE/NEON, 8 for AVX2, 16 for AVX-512).
        registers: number of architectural vector registers; bounds how many accumulators a
            micro-kernel may keep live without spilling.
        isa: vector instruction set: "avx512", "avx2", "avx", "sse" (x86-64) or "neon" (Arm). Kernels use
            it for instructions LLVM does not form on its own from TensorIR (register permutes,
            gathers); anything else gets their portable form.
    """

    lanes: int
    registers: int
    isa: str = "sse"

    @property
    def accumulator_registers(self) -> int:
        """Vector registers a micro-kernel may fill with accumulators: all but SPARE_REGISTERS."""
        return self.registers - SPARE_REGISTERS


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
        return CpuInfo(lanes=4, registers=32, isa="neon")  # NEON: 32 x 128-bit
    if triple.startswith("arm"):
        return CpuInfo(lanes=4, registers=16, isa="neon")  # 32-bit NEON: 16 q-registers
    if "+avx512f" in mattr or (mcpu in _AVX512_CPUS and "-avx512f" not in mattr):
        return CpuInfo(lanes=16, registers=32, isa="avx512")
    if "+avx2" in mattr or mcpu in _AVX2_CPUS:
        return CpuInfo(lanes=8, registers=16, isa="avx2")
    if "+avx" in mattr:
        return CpuInfo(lanes=8, registers=16, isa="avx")  # 256-bit float ops, no AVX2 permutes/gathers
    return CpuInfo(lanes=4, registers=16)  # baseline x86-64: SSE2


def largest_divisor_at_most(n: int, bound: int) -> int:
    """The largest divisor of `n` that is <= `bound` (at least 1): a register tile that needs no tail."""
    return max(d for d in range(1, max(1, min(n, bound)) + 1) if n % d == 0)
