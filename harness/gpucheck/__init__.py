"""A prepared GPU check: build on this host (no GPU needed), run on a machine with an NVIDIA GPU in one command.

Host (needs TVM's compiler and a CUDA toolkit's ``nvcc`` for the fatbins; registry access unless ``--tvm-wheels``
or ``--no-tvm``)::

    python -m harness.gpucheck build --out gpucheck-bundle [--arch sm_90] [--quick] [--models ffn-768,fc-4096]

GPU machine (Python 3 with numpy; torch optional; no network, no TVM needed: the bundle carries TVM's runtime)::

    bash gpucheck-bundle/run.sh            # or: python3 gpucheck-bundle/check.py [--quick] [--out results.json]

``build`` prunes each model (``ffn-768`` of the zoo at batch 1 and 16; ``fc-4096``, one 4096x4096 layer, and
``fc-4096x16384``, one 4096->16384 layer, at batch 1) into dense, block 16x1 at 70/80/90 % and unstructured 90 %
(``harness.sparsify.make_variant``), compiles every variant for ``{"kind": "cuda", "arch": ARCH, "host":
x86-64}`` with our kernels (``kernels="ours"``) and the dense model also with TVM's default Relax CUDA pipeline
(``kernels="tvm-default"``), the kernels compiled ahead to fatbins, and writes the bundle: the artifacts, the
evaluation inputs, reference outputs (onnxruntime or onnx's reference evaluator), the pruning masks, the board
package (``sparsebench_board``: the project's runner), a runtime-only TVM (``tvm-runtime.tar.xz``), ``manifest.json``,
``check.py`` and ``run.sh``.

Size: weights dominate (4096x16384 fp32 is 256 MB), while the tool that carries the bundle to a GPU machine takes
64 MiB. Every model's weights are seeded random normals, so the bundle carries each artifact *without* the byte
ranges that hold a weight in a layout derived from the seeded weight and the shipped mask (transposed, packed
[N/32, K, 32], BSR data/indices/indptr); ``check.py`` regenerates the weights with numpy, refills those ranges and
checks the artifact's sha256 against the manifest before loading it (a mismatch is that artifact's error row,
never a silently different artifact). The torch peers use the same regenerated weights and masks.

Measured on the 2-core build host (2026-12-03): the full build (3 models, 24 artifacts, TVM runtime) takes ~4.5 min
and is 17.4 MiB (artifacts 0.9 MiB, masks/inputs/references 12 MiB, TVM runtime 4.5 MiB), against 0.78 GiB of
artifacts as built; ``--quick`` takes ~10 s. The device tool copies the repository: write the bundle inside the
checkout, ignore it in ``.git/info/exclude`` and name it in the run's ``carry``; restoring all 24 artifacts there
takes ~30 s, and a full run must fit the tool's 10 minutes per command (``check.py --models`` runs a subset).

``check.py`` exits 2 with one line when the machine has no NVIDIA GPU (no ``nvidia-smi``, torch sees no CUDA
device, or TVM's CUDA runtime sees none); otherwise it warms the GPU up, runs the runner (``python -m
sparsebench_board.runner job.json``, ``device: "cuda"``) on every artifact of each model and batch, the variants
taking turns in rounds, checks every output against the reference (max abs error over the reference's max abs
value), times torch peers by the same rules (``F.linear`` eager and as a CUDA graph -- cuBLAS -- and
``torch.sparse_csr`` matmul -- cuSPARSE -- at each sparsity; per-call p50 with ``torch.cuda.synchronize`` plus the
per-call CUDA-event time), prints one table and writes ``results.json``. Exit 0 when every output check passed,
1 otherwise.
"""
