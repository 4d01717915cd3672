#!/usr/bin/env python3
"""sparsebench GPU check, device side: run it in the bundle ``python -m harness.gpucheck build`` wrote.

    bash run.sh [--quick] [--out results.json] [--keep]

Needs Python 3 with numpy and an NVIDIA GPU with its driver; torch is optional (the torch peers are then
"unavailable: torch not installed"); TVM comes with the bundle (runtime only, ``TVM_USE_RUNTIME_LIB=1``) unless the
bundle was built with ``--no-tvm``. Imports nothing from sparsebench but the bundled board package (the runner).

Steps: (1) no NVIDIA GPU -> one line, exit 2; (2) unpack the TVM runtime, restore every artifact (the seeded weights
regenerated into the byte ranges the bundle left out, then its sha256 checked); (3) warm the GPU up; (4) per model
and batch, the project's runner times every artifact (interleaved rounds, per-call p50 incl. device sync) and
evaluates it; (5) torch peers timed by the same rules; (6) one table, ``results.json``. Exit 0 when every output
check passed, else 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMAT = 1


def no_gpu(reason: str) -> None:
    print(f"no NVIDIA GPU: {reason}", flush=True)
    sys.exit(2)


def log(msg: str) -> None:
    print(f"[check] {msg}", file=sys.stderr, flush=True)


def nvidia_smi_gpus() -> list:
    """The GPUs ``nvidia-smi -L`` lists; exits 2 (one line) when there is no nvidia-smi or no GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        no_gpu("nvidia-smi not found (this check needs a machine with an NVIDIA GPU and its driver)")
    try:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        no_gpu(f"nvidia-smi -L failed ({err})")
    gpus = [line.strip() for line in proc.stdout.splitlines() if line.startswith("GPU ")]
    if proc.returncode != 0 or not gpus:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        no_gpu(f"nvidia-smi -L lists none ({tail[-1] if tail else f'exit {proc.returncode}'})")
    return gpus


def smi_query(fields: str) -> str | None:
    """The first GPU's ``nvidia-smi --query-gpu=FIELDS`` as one CSV line, or None."""
    smi = shutil.which("nvidia-smi")
    try:
        out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.TimeoutExpired, TypeError):
        return None


def gpu_clocks() -> str | None:
    return smi_query("clocks.sm,clocks.max.sm,temperature.gpu,power.draw")


# ---------------------------------------------------------------------------------------------------------------
# the seeded weights and their layouts (build.py imports these: one copy for the host and the GPU machine)


def generate(recipe: dict):
    import numpy as np

    rng = np.random.default_rng(recipe["seed"])
    layers = []
    for n, k in recipe["layers"]:
        w = rng.normal(0, 1 / np.sqrt(k), (n, k))
        b = rng.normal(0, recipe["bias_std"], n)
        layers.append((np.ascontiguousarray(w, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)))
    x = rng.normal(0, 1, (recipe["eval_rows"], recipe["layers"][0][1])).astype(np.float32)
    return layers, x


def sha256(data) -> str:
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def pack_weight(weight, vn: int):
    import numpy as np

    n, k = weight.shape
    blocks = -(-n // vn)
    padded = np.zeros((blocks * vn, k), dtype=np.float32)
    padded[:n] = weight
    return np.ascontiguousarray(padded.reshape(blocks, vn, k).transpose(0, 2, 1))


def block_mask(weight, block):
    import numpy as np

    r, c = block
    n, k = weight.shape
    rows, cols = -(-n // r), -(-k // c)
    padded = np.zeros((rows * r, cols * c), dtype=bool)
    padded[:n, :k] = weight != 0
    return padded.reshape(rows, r, cols, c).any(axis=(1, 3))


def to_bsr(weight, block):
    import numpy as np

    r, c = block
    n, k = weight.shape
    rows = -(-n // r)
    padded = np.zeros((rows * r, k), dtype=np.float32)
    padded[:n] = weight
    blocks = padded.reshape(rows, r, k // c, c).transpose(0, 2, 3, 1)
    mask = block_mask(weight, block)
    block_rows, block_cols = np.nonzero(mask)
    indptr = np.zeros(rows + 1, dtype=np.int32)
    indptr[1:] = np.cumsum(mask.sum(axis=1))
    data = np.ascontiguousarray(blocks[block_rows, block_cols], dtype=np.float32)
    return data, block_cols.astype(np.int32), indptr


def layout(weight, form: dict):
    import numpy as np

    kind = form["form"]
    if kind == "raw":
        return np.ascontiguousarray(weight)
    if kind == "T":
        return np.ascontiguousarray(weight.T)
    if kind == "pack":
        return pack_weight(weight, form["vn"])
    if kind == "bsr":
        data, indices, indptr = to_bsr(weight, tuple(form["block"]))
        return {"data": data, "indices": indices, "indptr": indptr}[form["part"]]
    raise ValueError(f"unknown layout {kind!r}")


class ModelData:
    """One model of the bundle: regenerated weights (checked against the manifest's sha256), masks, inputs, refs."""

    def __init__(self, name: str, info: dict, bundle: Path):
        import numpy as np

        self.name, self.info = name, info
        self.layers, x = generate(info["recipe"])
        for i, (w, b) in enumerate(self.layers):
            if sha256(w) != info["weight_sha256"][i] or sha256(b) != info["bias_sha256"][i]:
                raise RuntimeError(f"{name}: numpy {np.__version__} regenerated layer {i} differently from the "
                                   "build host (its random stream changed?)")
        with np.load(bundle / info["inputs"]) as data:
            self.inputs = [np.ascontiguousarray(data[f"arr_{i}"]) for i in range(len(info["input_names"]))]
        if sha256(self.inputs[0]) != info["inputs_sha256"] or not np.array_equal(self.inputs[0], x):
            raise RuntimeError(f"{name}: the shipped inputs differ from the seeded ones")
        with np.load(bundle / info["refs"]) as data:
            self.refs = {k: data[k] for k in data.files}
        with np.load(bundle / info["masks"]) as data:
            self.masks = {k: data[k] for k in data.files}
        self.variants = {v["label"]: v for v in info["variants"]}
        self._pruned = {}

    def weights(self, label: str) -> list:
        """The variant's [N, K] weights: the seeded weight where its block mask is set."""
        import numpy as np

        if label not in self._pruned:
            self._pruned = {}  # one variant's at a time: a 4096x16384 layer is 256 MB
            block = self.variants[label]["block"]
            out = []
            for i, (w, _b) in enumerate(self.layers):
                if block is None:
                    out.append(w)
                    continue
                r, c = block
                rows, cols = -(-w.shape[0] // r), -(-w.shape[1] // c)
                bits = np.unpackbits(self.masks[f"{label}/{i}"])[:rows * cols].reshape(rows, cols).astype(bool)
                full = np.repeat(np.repeat(bits, r, 0), c, 1)[:w.shape[0], :w.shape[1]]
                out.append(np.where(full, w, np.float32(0)))
            self._pruned[label] = out
        return self._pruned[label]


def restore(entry: dict, model: ModelData, bundle: Path, dest: Path) -> Path:
    """The artifact as built: its shipped bytes with the weight ranges refilled; sha256 checked."""
    stripped = lzma.decompress((bundle / entry["file"]).read_bytes())
    out = bytearray(entry["bytes"])
    weights = model.weights(entry["variant"])
    at_s = at_o = 0
    for hole in entry["holes"]:
        seg = hole["offset"] - at_o
        out[at_o:hole["offset"]] = stripped[at_s:at_s + seg]
        at_s += seg
        form = {k: v for k, v in hole.items() if k not in ("offset", "length", "layer")}
        data = layout(weights[hole["layer"]], form).tobytes()
        if len(data) != hole["length"]:
            raise RuntimeError(f"{entry['name']}: layer {hole['layer']} {form} is {len(data)} bytes, "
                               f"the artifact had {hole['length']}")
        out[hole["offset"]:hole["offset"] + len(data)] = data
        at_o = hole["offset"] + len(data)
    out[at_o:] = stripped[at_s:]
    if sha256(out) != entry["sha256"]:
        raise RuntimeError(f"{entry['name']}: the restored artifact's sha256 differs from the build's")
    path = dest / f"{entry['name']}.so"
    path.write_bytes(out)
    return path


# ---------------------------------------------------------------------------------------------------------------
# statistics (the board package's, so every row's CI means the same)


def p50_ci(samples_ns: list):
    """(p50, [lo, hi] 95 % CI of the median or None), µs."""
    sys.path.insert(0, str(HERE))
    from sparsebench_board import rounds

    ordered = sorted(samples_ns)
    if not ordered:
        return None, None
    mid = rounds.median(ordered) / 1e3
    ranks = rounds.quantile_ci_ranks(len(ordered), 0.5)
    ci = [ordered[ranks[0] - 1] / 1e3, ordered[ranks[1] - 1] / 1e3] if ranks else None
    return mid, ci


def output_check(got, ref, tolerance: float) -> dict:
    import numpy as np

    got = np.asarray(got, dtype=np.float64).reshape(ref.shape)
    scale = float(np.max(np.abs(ref))) or 1.0
    err = float(np.max(np.abs(got - ref))) / scale
    return {"ok": bool(err <= tolerance), "rel_err": err}


def batches(arrays: list, batch: int):
    """The runner's own ``as_batches`` (the bundled board package): chunks of exactly ``batch`` rows, the last padded
    with its last row, so the peers see the inputs the runner does."""
    sys.path.insert(0, str(HERE))
    from sparsebench_board.runner import as_batches

    return as_batches(arrays, batch)


# ---------------------------------------------------------------------------------------------------------------
# TVM through the project's runner


def tvm_env(runtime: Path | None) -> dict:
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1", PYTHONUNBUFFERED="1")
    paths = ([str(runtime)] if runtime else []) + [str(HERE)]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def unpack_runtime(manifest: dict) -> Path | None:
    info = manifest.get("tvm_runtime")
    if not info:
        return None
    dest = HERE / ".tvm-runtime"
    stamp = dest / ".unpacked"
    if not stamp.exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        with tarfile.open(HERE / info["file"]) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12 (and 3.8.17+): no links out of dest
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)
        stamp.write_text(json.dumps(info))
    return dest


PROBE = """
import json, sys
try:
    import tvm
except Exception as err:
    print(json.dumps({"error": f"import tvm: {type(err).__name__}: {err}"})); sys.exit(0)
from sparsebench_board.runner import tvm_device
try:
    dev = tvm_device(tvm, "cuda")
    exist = bool(dev.exist)
except Exception as err:
    print(json.dumps({"error": f"TVM CUDA runtime: {type(err).__name__}: {err}", "tvm": tvm.__version__}))
    sys.exit(0)
print(json.dumps({"tvm": tvm.__version__, "exist": exist, "name": dev.device_name if exist else None,
                  "compute": dev.compute_version if exist else None, "file": tvm.__file__}))
"""


def probe_tvm(env: dict) -> dict:
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=HERE,
                              timeout=300)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as err:
        return {"error": f"TVM probe failed: {err}"}


def run_runner(group: list, model: ModelData, batch: int, paths: dict, rules: dict, env: dict, work: Path,
               device: str = "cuda") -> dict:
    """One runner job for the artifacts of one model and batch; returns ``{artifact name: result}`` (and
    ``"_device_meta"``). ``device``: the job's (``"cpu"`` only for the tests of a GPU-less host)."""
    jobdir = work / f"{model.name}_b{batch}"
    shutil.rmtree(jobdir, ignore_errors=True)
    jobdir.mkdir(parents=True)
    job = {"models": [{"id": e["name"], "artifact": str(paths[e["name"]]), "engine": "tvm"} for e in group],
           "eval_inputs": str(HERE / model.info["inputs"]), "input_names": model.info["input_names"],
           "batch": batch, "device": device, "cpus": [], **rules}
    (jobdir / "job.json").write_text(json.dumps(job))
    cmd = [sys.executable, "-m", "sparsebench_board.runner", str(jobdir / "job.json")]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE, timeout=420)
        tail = proc.stderr.strip().splitlines()[-3:]
    except subprocess.TimeoutExpired:
        return {e["name"]: {"error": "runner timed out after 420 s"} for e in group}
    try:
        result = json.loads((jobdir / "result.json").read_text())
    except (OSError, ValueError):
        why = f"runner left no result (exit {proc.returncode}): {' | '.join(tail)[-400:]}"
        return {e["name"]: {"error": why} for e in group}
    log(f"runner {model.name} batch {batch}: {len(group)} artifacts in {time.perf_counter() - start:.0f} s")
    if not result.get("ok"):
        return {e["name"]: {"error": f"runner: {result.get('error')}"} for e in group}
    out = {}
    for got in result["models"]:
        if not got["ok"]:
            out[got["id"]] = {"error": got.get("error") or "runner failed"}
            continue
        import numpy as np

        times = got.get("model_time_ms") or []
        out[got["id"]] = {"latencies_ns": got["latencies_ns"], "outputs": np.load(jobdir / got["outputs"]),
                          "rounds": len(got["rounds"]), "unsettled": got["unsettled"],
                          "dev_us": sorted(times)[len(times) // 2] * 1e3 if times else None,
                          "dev_note": "TVM time_evaluator" if times else got.get("model_time_error")}
    out["_device_meta"] = result.get("device_meta")
    return out


# ---------------------------------------------------------------------------------------------------------------
# torch peers


def torch_peers(torch, model: ModelData, batch: int, labels: list, device: str = "cuda") -> list:
    """(variant, engine, run, outputs_fn) per peer: dense F.linear eager and as a CUDA graph (cuBLAS), CSR matmul
    (cuSPARSE) per sparse variant; every one computes the whole model (ReLU between layers). ``device="cpu"``
    (the tests of a GPU-less host) leaves out the CUDA graph."""
    import warnings

    import torch.nn.functional as F

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    dev = torch.device(device)
    dense = [(torch.from_numpy(w).to(dev), torch.from_numpy(b).to(dev)) for w, b in model.layers]
    last = len(dense) - 1
    lib = " (cuBLAS)" if device == "cuda" else ""

    def eager(x):
        for i, (w, b) in enumerate(dense):
            x = F.linear(x, w, b)
            if i != last:
                x = torch.relu(x)
        return x

    first = torch.from_numpy(next(batches(model.inputs, batch))[0][0]).to(dev)
    peers = [("dense", f"torch-eager{lib}", lambda: eager(first), eager)]
    if device == "cuda":
        peers.append(("dense", f"torch-graph{lib}", *cuda_graph(torch, eager, first)))
    for label in labels:
        if model.variants[label]["block"] is None:
            continue
        csr = [(torch.from_numpy(w).to(dev).to_sparse_csr(), b[:, None])
               for w, (_d, b) in zip(model.weights(label), dense)]

        def sparse(x, csr=csr):
            h = x.t().contiguous()  # y^T = W_csr @ x^T: cuSPARSE SpMM with the sparse matrix on the left
            for i, (w, b) in enumerate(csr):
                h = torch.mm(w, h) + b
                if i != last:
                    h = torch.relu(h)
            return h.t()

        peers.append((label, "torch-csr" + (" (cuSPARSE)" if device == "cuda" else ""),
                      lambda s=sparse: s(first), sparse))
    return peers


def cuda_graph(torch, fn, first):
    """(replay, outputs_fn): ``fn`` on a static input captured as one CUDA graph (warmed up on a side stream)."""
    static_x = first.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = fn(static_x)

    def graph_out(chunk):
        static_x.copy_(chunk)
        graph.replay()
        return static_y

    return graph.replay, graph_out


def time_torch(torch, peers: list, rules: dict, events: int, device: str = "cuda") -> list:
    """The runner's rules for the peers: a settling round, then ``rounds`` rounds taking turns, each with a fresh
    warm-up and every call timed on its own (perf_counter_ns around the call + torch.cuda.synchronize); then
    ``events`` calls each between two CUDA events (the GPU's time for one call)."""
    n_rounds = max(1, int(rules["rounds"]))
    per = {"min_runs": -(-int(rules["min_runs"]) // n_rounds), "min_s": float(rules["min_s"]) / n_rounds,
           "max_runs": max(1, int(rules["max_runs"]) // n_rounds)}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = time.perf_counter_ns

    def one_round(run) -> list:
        warm, start = 0, time.perf_counter()
        while warm < rules["warmup_runs"] or time.perf_counter() - start < rules["warmup_s"]:
            run()
            sync()
            warm += 1
        samples, start = [], time.perf_counter()
        while (len(samples) < per["min_runs"] or time.perf_counter() - start < per["min_s"]) \
                and len(samples) < per["max_runs"]:
            t = clock()
            run()
            sync()
            samples.append(clock() - t)
        return samples

    samples = [[] for _ in peers]
    errors = [None for _ in peers]
    for r in range(n_rounds + 1):  # round 0 settles and is discarded
        for i, peer in enumerate(peers):
            if errors[i]:
                continue
            try:
                got = one_round(peer[2])
            except Exception as err:
                errors[i] = f"{type(err).__name__}: {err}"
                continue
            if r:
                samples[i] += got
    out = []
    for i, peer in enumerate(peers):
        dev_us = None
        if not errors[i] and events and device == "cuda":
            try:
                marks = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                         for _ in range(events)]
                for s, e in marks:
                    s.record()
                    peer[2]()
                    e.record()
                sync()
                ms = sorted(s.elapsed_time(e) for s, e in marks)
                dev_us = ms[len(ms) // 2] * 1e3
            except Exception as err:
                errors[i] = f"CUDA events: {type(err).__name__}: {err}"
        out.append({"latencies_ns": samples[i], "error": errors[i], "dev_us": dev_us})
    return out


def tvm_rows(group: list, got: dict, errors: dict, model: ModelData, batch: int, tolerance: float) -> list:
    """The table rows of one runner job's artifacts (timing, CI, the output check against the reference)."""
    rows = []
    for entry in group:
        row = {"model": model.name, "batch": batch, "variant": entry["variant"],
               "engine": "tvm-default" if entry["kernels"] == "tvm-default" else "tvm-ours",
               "artifact": entry["name"], "kernels": [l["kernel"] for l in entry["layers"]]}
        res = got.get(entry["name"], {"error": errors.get(entry["name"], "not run")})
        if res.get("error"):
            row["error"] = res["error"]
        else:
            row["p50_us"], row["ci_us"] = p50_ci(res["latencies_ns"])
            row.update(n=len(res["latencies_ns"]), rounds=res["rounds"], unsettled=res["unsettled"],
                       dev_us=res["dev_us"], dev_note=res["dev_note"])
            row["check"] = output_check(res["outputs"], model.refs[entry["variant"]], tolerance)
        rows.append(row)
    return rows


def torch_rows(torch, model: ModelData, batch: int, labels: list, rules: dict, events: int, tolerance: float,
               device: str = "cuda") -> list:
    """The torch peers' rows: timed (:func:`time_torch`), then evaluated on every evaluation row."""
    import numpy as np

    try:
        peers = torch_peers(torch, model, batch, labels, device)
        timed = time_torch(torch, peers, rules, events, device)
    except Exception as err:
        return [{"model": model.name, "batch": batch, "variant": "dense", "engine": "torch",
                 "error": f"{type(err).__name__}: {err}"}]
    rows = []
    for (label, engine, _run, outputs), res in zip(peers, timed):
        row = {"model": model.name, "batch": batch, "variant": label, "engine": engine}
        if res["error"]:
            row["error"] = res["error"]
        else:
            row["p50_us"], row["ci_us"] = p50_ci(res["latencies_ns"])
            row.update(n=len(res["latencies_ns"]), dev_us=res["dev_us"],
                       dev_note="CUDA events" if res["dev_us"] is not None else None)
            try:
                outs = []
                for chunks, real in batches(model.inputs, batch):
                    y = outputs(torch.from_numpy(chunks[0]).to(device))
                    outs.append(y.float().cpu().numpy()[:real])
                row["check"] = output_check(np.concatenate(outs), model.refs[label], tolerance)
            except Exception as err:
                row["error"] = f"evaluate: {type(err).__name__}: {err}"
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# the table


def fmt_row(row: dict) -> list:
    def num(v):
        return "-" if v is None else (f"{v:.1f}" if v < 1000 else f"{v:.0f}")

    if row.get("error"):
        check = row["error"]
    elif row.get("check"):
        check = f"{'ok' if row['check']['ok'] else 'FAIL'} {row['check']['rel_err']:.1e}"
    else:
        check = "-"
    ci = row.get("ci_us")
    return [row["model"], str(row["batch"]), row["variant"], row["engine"], num(row.get("p50_us")),
            f"{num(ci[0])}-{num(ci[1])}" if ci else "-", num(row.get("dev_us")),
            f"{row['speedup']:.2f}x" if row.get("speedup") else "-", check]


HEAD = ["model", "batch", "variant", "engine", "p50 µs", "95% CI µs", "device µs", "vs TVM dense", "output check"]


def print_table(rows: list) -> None:
    cells = [HEAD] + [fmt_row(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEAD) - 1)]
    for n, c in enumerate(cells):
        print("  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(c[:-1], widths)))
              + "  " + c[-1])
        if n == 0:
            print("-" * (sum(widths) + 2 * len(widths) + 12))


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="sparsebench GPU check (run in the bundle)")
    parser.add_argument("--quick", action="store_true", help="shorter timing windows")
    parser.add_argument("--out", type=Path, default=HERE / "results.json", help="results file (default: bundle)")
    parser.add_argument("--warmup-s", type=float, default=None, help="GPU warm-up before timing (default 3 s)")
    parser.add_argument("--events", type=int, default=200, help="CUDA-event timed calls per torch peer")
    parser.add_argument("--models", help="comma-separated subset of the bundle's models (default: all)")
    args = parser.parse_args(argv)
    wall = time.perf_counter()

    gpus = nvidia_smi_gpus()  # exits 2 without a GPU
    import importlib.util

    if importlib.util.find_spec("numpy") is None:
        print("numpy is not installed for this Python: the runner and this check need it", flush=True)
        return 1
    manifest = json.loads((HERE / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        print(f"manifest format {manifest.get('format')} is not this check's ({FORMAT}): rebuild the bundle")
        return 1
    try:
        import torch

        torch_error = None
    except Exception as err:  # not installed (or broken): the peers are unavailable, TVM still runs
        torch, torch_error = None, ("torch not installed" if isinstance(err, ModuleNotFoundError)
                                    else f"import torch: {type(err).__name__}: {err}")
    if torch is not None and not torch.cuda.is_available():
        no_gpu(f"torch {torch.__version__} sees no CUDA device (nvidia-smi: {gpus[0]})")
    runtime = unpack_runtime(manifest)
    env = tvm_env(runtime)
    tvm = probe_tvm(env)
    if tvm.get("exist") is False:
        no_gpu(f"TVM {tvm.get('tvm')}'s CUDA runtime sees no device (nvidia-smi: {gpus[0]})")
    tvm_error = tvm.get("error")
    if tvm_error and manifest.get("tvm_runtime"):
        # the bundle brought TVM: that it does not work here is a failure, not a missing optional peer
        built_for = manifest["tvm_runtime"].get("python", "?")
        tvm_error = (f"bundled TVM runtime (for CPython {built_for}; this is {sys.version_info[0]}."
                     f"{sys.version_info[1]}: rebuild with --python): {tvm_error}")
    elif tvm_error:
        tvm_error = f"unavailable: {tvm_error} (the bundle was built with --no-tvm)"
    log(f"{gpus[0]}; TVM {tvm.get('tvm', '-')} ({tvm_error or tvm.get('name')}); "
        f"torch {torch.__version__ if torch else torch_error}")

    rules = dict(manifest["measure"])
    if args.quick:
        rules.update(min_runs=min(rules["min_runs"], 60), min_s=min(rules["min_s"], 0.3), extend_s=0.0,
                     max_rounds=rules["rounds"])
    events = 50 if args.quick else args.events
    warm_s = args.warmup_s if args.warmup_s is not None else (1.0 if args.quick else 3.0)
    clocks = {"idle": gpu_clocks()}
    if torch is not None:
        a = torch.randn(8192, 8192, device="cuda")
        start = time.perf_counter()
        while time.perf_counter() - start < warm_s:
            for _ in range(4):
                a = torch.tanh(a @ a * 1e-4)
            torch.cuda.synchronize()
        del a
        clocks["after_warmup"] = gpu_clocks()
        log(f"warm-up {warm_s:g} s: clocks (sm, max sm, temp, power) idle {clocks['idle']} -> {clocks['after_warmup']}")
    else:
        log("no torch for a warm-up: the runner's settling round and per-round warm-ups only")

    work = HERE / "work"
    work.mkdir(exist_ok=True)
    rows, device_meta = [], None
    tolerance = manifest["tolerance"]
    chosen = args.models.split(",") if args.models else list(manifest["models"])
    unknown = [m for m in chosen if m not in manifest["models"]]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; the bundle has {', '.join(manifest['models'])}")
        return 1
    for name in chosen:
        info = manifest["models"][name]
        try:
            model = ModelData(name, info, HERE)
        except Exception as err:
            for entry in (e for e in manifest["artifacts"] if e["model"] == name):
                rows.append({"model": name, "batch": entry["batch"], "variant": entry["variant"],
                             "engine": f"tvm-{entry['kernels']}", "error": f"{type(err).__name__}: {err}"})
            continue
        for batch in info["batches"]:
            group = [e for e in manifest["artifacts"] if e["model"] == name and e["batch"] == batch]
            paths, errors = {}, {}
            for entry in group:
                if tvm_error:
                    errors[entry["name"]] = tvm_error
                    continue
                try:
                    paths[entry["name"]] = restore(entry, model, HERE, work)
                except Exception as err:
                    errors[entry["name"]] = f"restore: {err}"
            got = run_runner([e for e in group if e["name"] in paths], model, batch, paths, rules, env, work) \
                if paths else {}
            device_meta = got.pop("_device_meta", None) or device_meta
            group_rows = tvm_rows(group, got, errors, model, batch, tolerance)
            labels = [v["label"] for v in info["variants"]]
            if torch is None:
                group_rows += [{"model": name, "batch": batch, "variant": label, "engine": engine,
                                "error": f"unavailable: {torch_error}"} for label, engine in
                               [("dense", "torch-eager (cuBLAS)"), ("dense", "torch-graph (cuBLAS)")] +
                               [(l, "torch-csr (cuSPARSE)") for l in labels if model.variants[l]["block"]]]
            else:
                group_rows += torch_rows(torch, model, batch, labels, rules, events, tolerance)
                torch.cuda.empty_cache()
            base = next((r.get("p50_us") for r in group_rows
                         if r["engine"] == "tvm-default" and r["variant"] == "dense"), None)
            for row in group_rows:
                if base and row.get("p50_us"):
                    row["speedup"] = base / row["p50_us"]
            rows += group_rows
            # partial results on disk after every group: a run stopped by a time limit keeps what it measured
            args.out.write_text(json.dumps({"partial": True, "rows": rows}, indent=1, default=float))
            log(f"{name} batch {batch}: done ({time.perf_counter() - wall:.0f} s)")
        for entry in (e for e in manifest["artifacts"] if e["model"] == name):
            (work / f"{entry['name']}.so").unlink(missing_ok=True)

    print_table(rows)
    failed = [r for r in rows if (r.get("check") and not r["check"]["ok"])
              or (r.get("error") and not r["error"].startswith("unavailable"))]
    result = {"gpus": gpus, "gpu": smi_query("name,driver_version,memory.total,pstate"), "clocks": clocks, "tvm": tvm, "torch": torch.__version__ if torch else torch_error,
              "device_meta": device_meta, "tolerance": tolerance, "rules": rules,
              "bundle": {k: manifest.get(k) for k in ("created", "arch", "tvm_version", "nvcc", "quick")},
              "rows": rows, "failed": len(failed), "wall_s": round(time.perf_counter() - wall, 1)}
    args.out.write_text(json.dumps(result, indent=1, default=float))
    evaluator = next(iter(manifest["models"].values()))["evaluator"]
    print(f"{len(rows)} rows, {len(failed)} failed; p50 per call incl. sync; 'device µs': TVM's time_evaluator or "
          f"CUDA events; check: max|out-ref|/max|ref| <= {tolerance:g} (ref: {evaluator}); {args.out}; "
          f"{result['wall_s']:.0f} s")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
