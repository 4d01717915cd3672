"""Compile without running: ``sparsebench compile CONFIG --out DIR`` and ``sparsebench run CONFIG --artifacts DIR``.

What a farm or an offline lab needs: every variant of a config compiled for a profile (its CPU target, its CUDA
target or both) on a build machine, then measured elsewhere without a compiler in the loop. DIR holds::

    manifest.json                  what was built: profile, TVM version, and per accelerator and job the artifact
    cpu/<job>.so, cuda/<job>.so    the artifacts (CUDA kernels as a fatbin when nvcc is here: the build record says)

The kernels of an offline build are chosen by the rule (there is no device to time them on), and each layer's record
says so. A run with ``--artifacts`` uses DIR's artifact for each job (its checksum checked), and compiles nothing:
a job DIR lacks becomes an ERROR row naming the command that builds it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import HarnessError
from ..records import BuildRecord

MANIFEST = "manifest.json"
FORMAT = 1
#: the layer records' note for kernels chosen without a device
OFFLINE = "compiled offline: no device to time the candidate kernels on"


def _file_name(key: str) -> str:
    """A job key (``digits-mlp/block-16x1/0.9@b1``) as a file name."""
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", key) + ".so"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def compile_config(cfg, out: Path, *, accelerators: tuple[str, ...], kernels: str = "ours",
                   log=lambda msg: print(msg, file=sys.stderr)) -> int:
    """Compile every job of ``cfg`` for each of ``accelerators`` into ``out``; returns the number that failed
    (each named on stderr and in the manifest)."""
    from ..bench import accelerator_target, config_hash, load_models, plan_jobs
    from ..config import load_target
    from ..bench import FORCED_DENSE
    from .cache import ArtifactCache, BuildRequest
    from .plan import forced_plan
    from .toolchains import find_toolchain
    from .tvm_adapter import build, tvm_version

    profile = load_target(cfg.target)
    find_toolchain(profile.toolchain)  # one line naming the missing linker, before anything is compiled
    targets = {acc: accelerator_target(profile, acc) for acc in accelerators}
    models = load_models(cfg)
    out.mkdir(parents=True, exist_ok=True)
    cache = ArtifactCache()
    manifest = {"format": FORMAT, "config": cfg.name, "profile": profile.name, "tvm_version": tvm_version(),
                "kernels": kernels, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "accelerators": {}}
    failed = 0
    for acc in accelerators:
        acc_cfg = replace(cfg, accelerator=acc)
        jobs = [j for j in plan_jobs(acc_cfg, models) if not j.peer]
        section = {"target": targets[acc], "config_hash": config_hash(acc_cfg), "jobs": {}}
        (out / acc).mkdir(exist_ok=True)
        for i, job in enumerate(jobs, 1):
            req = BuildRequest(job.variant.onnx_path, job.variant.sha256, job.model.shapes_for_batch(job.batch),
                               targets[acc], job.kernels or kernels, profile.toolchain)
            if job.force_dense:  # the dense row of an as-is model: its own weights through our dense kernel
                req = replace(req, plan=forced_plan(req, lambda _w: ("dense", None), FORCED_DENSE, device=OFFLINE))
            built = build(req, cache)
            entry = {"variant_sha256": job.variant.sha256, "build": asdict(BuildRecord.from_result(built)),
                     "layers": [dict(layer) for layer in built.layers], "notes": list(built.notes)}
            if built.error:
                failed += 1
                entry["error"] = built.error
                log(f"[{acc} {i}/{len(jobs)}] {job.key}: {built.error.splitlines()[0][:300]}")
            else:
                name = f"{acc}/{_file_name(job.key)}"
                shutil.copyfile(built.artifact, out / name)
                entry.update(file=name, sha256=_sha256(out / name))
                log(f"[{acc} {i}/{len(jobs)}] {job.key}: {built.artifact_bytes / 1e6:.2f} MB "
                    f"({'cached' if built.cached else f'{built.compile_s:.1f} s'})")
            section["jobs"][job.key] = entry
        manifest["accelerators"][acc] = section
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return failed


@dataclass(frozen=True)
class Prebuilt:
    """The artifacts of ``sparsebench compile`` for one profile and accelerator (``run --artifacts DIR``)."""

    root: Path
    jobs: dict  # job key -> manifest entry
    tvm_version: str

    @classmethod
    def open(cls, root: Path, *, profile: str, accelerator: str, target: dict, kernels: str) -> Prebuilt:
        """DIR's section for this run; one line naming what does not match, and the command that rebuilds it."""
        rebuild = f"rebuild with `sparsebench compile CONFIG --out {root} --accelerator {accelerator}`"
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError:
            raise HarnessError(f"--artifacts {root}: no {MANIFEST} there; {rebuild}") from None
        except (OSError, ValueError) as err:
            raise HarnessError(f"--artifacts {root}: cannot read {MANIFEST} ({err}); {rebuild}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise HarnessError(f"--artifacts {root}: {MANIFEST} is not a sparsebench compile manifest (format "
                               f"{FORMAT}); {rebuild}")
        if manifest.get("profile") != profile:
            raise HarnessError(f"--artifacts {root} was compiled for profile {manifest.get('profile')!r}, not "
                               f"{profile!r}; {rebuild} for the run's target")
        section = (manifest.get("accelerators") or {}).get(accelerator)
        if not section:
            raise HarnessError(f"--artifacts {root} has no {accelerator} artifacts (it has "
                               f"{', '.join(manifest.get('accelerators') or {}) or 'none'}); {rebuild}")
        if section.get("target") != target:
            raise HarnessError(f"--artifacts {root}: its {accelerator} target {json.dumps(section.get('target'))} is "
                               f"not the profile's {json.dumps(target)}; {rebuild}")
        if manifest.get("kernels") != kernels:
            raise HarnessError(f"--artifacts {root} was built with --kernels {manifest.get('kernels')}, this run "
                               f"asks for {kernels}; {rebuild} --kernels {kernels}")
        from .tvm_adapter import tvm_version

        if manifest.get("tvm_version") != tvm_version():
            raise HarnessError(f"--artifacts {root} was compiled by TVM {manifest.get('tvm_version')}, this host has "
                               f"TVM {tvm_version()} (the device's runtime is checked against it); {rebuild}")
        return cls(root, dict(section.get("jobs") or {}), manifest["tvm_version"])

    def lookup(self, key: str, variant_sha256: str) -> tuple[Path | None, dict, str | None]:
        """(the artifact of job ``key``, its manifest entry, None) or (None, entry, why not: the row's error)."""
        entry = self.jobs.get(key)
        if entry is None:
            return None, {}, (f"compile: {self.root} has no artifact for {key}; compile the config again with "
                              f"`sparsebench compile CONFIG --out {self.root}`")
        if entry.get("error"):
            return None, entry, entry["error"]
        if entry.get("variant_sha256") != variant_sha256:
            return None, entry, (f"compile: {self.root}'s artifact for {key} was built from another version of the "
                                 "model; compile the config again")
        path = self.root / entry["file"]
        try:
            ok = _sha256(path) == entry.get("sha256")
        except OSError as err:
            return None, entry, f"compile: cannot read {path} ({err.strerror}); compile the config again"
        if not ok:
            return None, entry, f"compile: {path} does not match its checksum in {MANIFEST}; compile the config again"
        return path, entry, None

    @staticmethod
    def build_record(entry: dict) -> BuildRecord:
        return BuildRecord(**{k: v for k, v in (entry.get("build") or {}).items()
                              if k in BuildRecord.__dataclass_fields__})
