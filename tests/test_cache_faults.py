"""Artifact cache integrity: a damaged entry (truncated or altered library, unreadable or wrong build record) is a
miss that rebuilds and says so once -- never a crash, never a SIGBUS on every run; writes are atomic and
concurrent builders of one key do not corrupt each other. The kernel-selection caches likewise."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_small_model
from harness.compile.cache import ArtifactCache

KEY = "ab" * 32


def _entry(root: Path, data: bytes = b"\x7fELF" + bytes(range(256)) * 40) -> tuple[ArtifactCache, list[str]]:
    """A cache entry made the way a build makes it (library written to its temp path, then stored)."""
    said: list[str] = []
    cache = ArtifactCache(root, log=said.append)
    tmp = cache.temp_path(KEY)
    tmp.write_bytes(data)
    cache.store(KEY, 1.5, [{"layer": "fc1"}], "0.27", {"toolchain": "native"}, built=tmp)
    return cache, said


def _truncate(lib: Path, meta: Path) -> None:
    with open(lib, "r+b") as f:
        f.truncate(lib.stat().st_size // 2)


def _flip(lib: Path, meta: Path) -> None:
    data = bytearray(lib.read_bytes())
    data[100] ^= 0xFF
    lib.write_bytes(bytes(data))


def _record(change):
    def damage(lib: Path, meta: Path) -> None:
        record = json.loads(meta.read_text())
        change(record)
        meta.write_text(json.dumps(record))
    return damage


DAMAGES = {
    "truncated library": (_truncate, "truncated or replaced"),
    "altered library, same size": (_flip, "does not match the sha256"),
    "library missing": (lambda lib, meta: lib.unlink(), "model.so is missing"),
    "record missing": (lambda lib, meta: meta.unlink(), "build.json is missing"),
    "record not JSON": (lambda lib, meta: meta.write_bytes(b'{"key": "ab'), "not valid JSON"),
    "record not UTF-8": (lambda lib, meta: meta.write_bytes(b"\xff\xfe\x00garbage"), "not valid JSON"),
    "record a list": (lambda lib, meta: meta.write_text("[1, 2]"), "not a JSON object"),
    "record without checksum": (_record(lambda r: r.pop("sha256")), "has no 'sha256'"),
    "size of the wrong type": (_record(lambda r: r.update(size="123")), "'size' has the wrong type"),
    "compile_s of the wrong type": (_record(lambda r: r.update(compile_s=None)), "'compile_s' has the wrong type"),
    "record of another key": (_record(lambda r: r.update(key="cd" * 32)), "another build key"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_entry_is_a_miss_said_once(tmp_path, damage):
    cache, said = _entry(tmp_path)
    hit = cache.lookup(KEY)
    assert hit is not None and hit.cached and hit.artifact_bytes == hit.artifact.stat().st_size
    assert hit.layers == ({"layer": "fc1"},) and hit.compile_s == 1.5 and said == []
    folder = tmp_path / KEY[:32]
    change, words = DAMAGES[damage]
    change(folder / "model.so", folder / "build.json")
    assert cache.lookup(KEY) is None  # a miss: the caller rebuilds
    assert cache.lookup(KEY) is None
    assert len(said) == 1, said  # said once, however often it is looked up
    assert said[0].startswith(f"artifact cache: {folder}: ") and words in said[0] and said[0].endswith("rebuilding it")
    assert "\n" not in said[0]


def test_record_holds_sha256_and_size_written_atomically(tmp_path):
    data = os.urandom(50_000)
    cache, _ = _entry(tmp_path, data)
    folder = tmp_path / KEY[:32]
    record = json.loads((folder / "build.json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".lock")) == ["build.json", "model.so"]
    a, b = cache.temp_path(KEY), cache.temp_path(KEY)
    assert a != b and a.parent == b.parent == folder  # each builder its own temp file, next to the entry


def _builder(root: str, n: int, data: bytes) -> None:
    cache = ArtifactCache(Path(root), log=lambda msg: None)
    for _ in range(n):
        tmp = cache.temp_path(KEY)
        with open(tmp, "wb") as f:  # written slowly, in pieces: a reader must never see it half done
            for i in range(0, len(data), 4096):
                f.write(data[i:i + 4096])
        cache.store(KEY, 1.0, [], "0.27", built=tmp)


def _reader(root: str, stop, contents: set, results) -> None:
    cache = ArtifactCache(Path(root), log=lambda msg: None)
    hits, bad = 0, []
    while not stop.is_set():
        hit = cache.lookup(KEY)
        if hit is not None:
            hits += 1
            digest = hashlib.sha256(hit.artifact.read_bytes()).hexdigest()
            if digest not in contents:
                bad.append(digest)
    results.put((hits, bad))


def test_concurrent_builders_of_one_key_never_show_a_partial_library(tmp_path):
    """Four processes build (store) the same key over and over, each with its own bytes, while two read it: every
    hit is a whole library of one of the builders, and the entry left is consistent."""
    ctx = multiprocessing.get_context("fork")
    contents = [os.urandom(200_000 + 10_000 * i) for i in range(4)]
    digests = {hashlib.sha256(c).hexdigest() for c in contents}
    stop, results = ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(str(tmp_path), stop, digests, results)) for _ in range(2)]
    builders = [ctx.Process(target=_builder, args=(str(tmp_path), 15, c)) for c in contents]
    for proc in readers + builders:
        proc.start()
    for proc in builders:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    stop.set()
    outcomes = [results.get(timeout=60) for _ in readers]
    for proc in readers:
        proc.join()
    assert all(bad == [] for _, bad in outcomes), outcomes
    assert sum(hits for hits, _ in outcomes) > 0
    hit = ArtifactCache(tmp_path).lookup(KEY)
    assert hit is not None and hashlib.sha256(hit.artifact.read_bytes()).hexdigest() in digests
    assert not list((tmp_path / KEY[:32]).glob("*.tmp*"))  # no temp file left behind


# a real compile ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_request(tmp_path_factory):
    from harness.compile.cache import BuildRequest
    from harness.config import load_target
    from harness.models.inputs import InputSpec

    folder = tmp_path_factory.mktemp("cache-faults")
    model, eval_set = make_small_model(folder)
    profile = load_target("local")
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    req = BuildRequest(model, sha, (InputSpec("x", "float32", (1, 48)),), profile.tvm_target, "tvm-default",
                       profile.toolchain)
    return req, np.load(eval_set)["x"][:1]


def _run(artifact: Path, x: np.ndarray, tmp: Path) -> np.ndarray:
    """Load and run a copy of ``artifact``: a library mapped into this process must not be truncated later."""
    import shutil

    import tvm
    from tvm import relax

    copy = tmp / f"run-{len(list(tmp.glob('run-*')))}.so"
    shutil.copyfile(artifact, copy)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(copy)), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def test_truncated_or_unreadable_cached_build_is_rebuilt_once(tmp_path, small_request):
    """A real TVM build; its cached .so truncated (the SIGBUS of every later run and resume, before), then its
    build record corrupted: each time the next build rebuilds it, says so once, and the library loads and runs."""
    from harness.compile.tvm_adapter import build

    req, x = small_request
    said: list[str] = []
    cache = ArtifactCache(tmp_path / "artifacts", log=said.append)
    first = build(req, cache)
    assert first.error is None and not first.cached
    expected = _run(first.artifact, x, tmp_path)
    assert build(req, cache).cached  # a sound entry is a hit

    with open(first.artifact, "r+b") as f:
        f.truncate(first.artifact.stat().st_size // 3)
    rebuilt = build(req, cache)
    assert rebuilt.error is None and not rebuilt.cached and rebuilt.artifact == first.artifact
    assert len(said) == 1 and "model.so has" in said[0] and "truncated" in said[0]
    np.testing.assert_allclose(_run(rebuilt.artifact, x, tmp_path), expected, rtol=1e-5, atol=1e-5)
    again = build(req, cache)
    assert again.cached and len(said) == 1  # the rebuilt entry is trusted again: no repeated failure

    (first.artifact.parent / "build.json").write_text('{"key": "' + again.key + '", "compile_s": ')  # torn
    fresh = ArtifactCache(tmp_path / "artifacts", log=said.append)  # a later run
    rebuilt = build(req, fresh)
    assert rebuilt.error is None and not rebuilt.cached
    assert len(said) == 2 and "build.json is not valid JSON" in said[1]
    assert build(req, fresh).cached
    np.testing.assert_allclose(_run(rebuilt.artifact, x, tmp_path), expected, rtol=1e-5, atol=1e-5)


# the kernel-selection caches ---------------------------------------------------------------------------------------

def test_damaged_survey_and_timing_caches_are_a_miss(tmp_path, small_request, monkeypatch):
    from dataclasses import replace

    from harness.compile import select

    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path))
    req = replace(small_request[0], kernels="ours")
    layers, _ = select._survey(req)
    assert layers
    path = select._survey_cache(req).path
    for damage in ({"format": select.CACHE_FORMAT, "layers": [{"key": 1}]},  # a valid JSON file of the wrong shape
                   {"format": select.CACHE_FORMAT, "layers": "x"},
                   {"format": select.CACHE_FORMAT}):
        path.write_text(json.dumps(damage))
        again, weights = select._survey(req)  # surveyed again (weights: the model was imported), not a crash
        assert [x.key for x in again] == [x.key for x in layers] and weights
        assert json.loads(path.read_text())["layers"][0]["key"] == layers[0].key  # and the cache repaired
    good = {"k1": {"median_us": 1.5}, "k2": {"error": "did not run"}}
    assert select._valid_times({**good, "k3": 7, "k4": {"median_us": "fast"}, "k5": [1]}) == good
    assert select._valid_times([1, 2]) == {} and select._valid_times(None) == {}


@pytest.mark.slow
def test_run_after_a_truncated_cached_library_rebuilds_it(tmp_path, small_model):
    """`sparsebench run`, its cached .so truncated, `sparsebench run` again: the second run rebuilds it, says so in
    one line, and measures (before, every run and resume of it died with SIGBUS in the runner)."""
    import sqlite3

    from conftest import sparsebench, write_config

    model, eval_set = small_model
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0,), methods=(),
                       batch=(3,))
    first = sparsebench("run", str(cfg), "--no-progress")
    assert first.returncode == 0, first.stderr
    (key,) = [r[0] for r in sqlite3.connect(db).execute("SELECT artifact_key FROM results")]
    lib = ArtifactCache().root / key[:32] / "model.so"
    with open(lib, "r+b") as f:
        f.truncate(lib.stat().st_size // 2)
    second = sparsebench("run", str(cfg), "--no-progress")
    assert second.returncode == 0, second.stderr
    said = [line for line in second.stderr.splitlines() if line.startswith("artifact cache:")]
    assert len(said) == 1 and str(lib.parent) in said[0] and "truncated" in said[0], second.stderr
    rows = sqlite3.connect(db).execute("SELECT verdict, error, overhead_json FROM results ORDER BY id").fetchall()
    assert len(rows) == 2 and all(r[0] != "ERROR" for r in rows), rows
    assert json.loads(rows[1][2])["compile_cached"] is False  # rebuilt
