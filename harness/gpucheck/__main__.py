"""``python -m harness.gpucheck build --out DIR [--arch sm_90] [--quick] ...``: see the package docstring."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import HarnessError


def main(argv: list[str] | None = None) -> int:
    from .build import MODELS

    parser = argparse.ArgumentParser(prog="python -m harness.gpucheck",
                                     description="Build the GPU check bundle here; run it with bash DIR/run.sh on a "
                                                 "machine with an NVIDIA GPU.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="prune, compile (CUDA fatbins) and write the bundle")
    b.add_argument("--out", required=True, type=Path, help="the bundle's folder (new or empty)")
    b.add_argument("--arch", default="sm_90", help="GPU architecture (default sm_90: H100/H200)")
    b.add_argument("--quick", action="store_true", help="ffn-768 at batch 1, dense and block 16x1 at 90 %% only")
    b.add_argument("--models", help=f"comma-separated subset of {', '.join(MODELS)}")
    b.add_argument("--tvm-wheels", type=Path, help="folder holding the apache-tvm and apache-tvm-ffi wheels for the "
                   "GPU machine's Python (default: pip download them for CPython 3.12 x86-64)")
    b.add_argument("--python", default="3.12", help="the GPU machine's CPython version, for the TVM runtime's "
                   "apache-tvm-ffi wheel (default 3.12)")
    b.add_argument("--no-tvm", action="store_true", help="ship no TVM runtime (the GPU machine has one)")
    b.add_argument("--keep-build", action="store_true", help="keep the temporary build folder")
    args = parser.parse_args(argv)
    from .build import build_bundle

    try:
        manifest = build_bundle(args.out, arch=args.arch, quick=args.quick,
                                models=args.models.split(",") if args.models else None, tvm_wheels=args.tvm_wheels,
                                no_tvm=args.no_tvm, keep_build=args.keep_build, python=args.python)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: {len(manifest['artifacts'])} artifacts, {manifest['bundle_bytes'] / 2**20:.1f} MiB, built in "
          f"{manifest['build_s']:.0f} s; on the GPU machine: bash {args.out}/run.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
