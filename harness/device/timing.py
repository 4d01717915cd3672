"""Host side of the board's kernel timer (``harness/board/timer.py``): ship, run, fetch, as named steps.

Used by kernel selection (``harness/compile/select.py``): first to learn the device's fingerprint (what decides
kernel timings there), then to time a bundle of candidate kernels. Failures raise :class:`TransportError` with
the step that failed; the selection step turns that into a plan decided by the rule, saying why.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..transports import Transport, TransportError
from .ship import board_command, upload_board


def _run_timer(transport: Transport, python: str, job: dict, files: dict[str, Path], timeout_s: float) -> dict:
    """Run the timer on ``job`` with ``files`` (job key -> local file, uploaded and replaced by the device path)."""
    python = python or transport.default_python()
    workdir = transport.make_workdir("select-kernels")
    try:
        upload_board(transport, workdir)
        with tempfile.TemporaryDirectory(prefix="sparsebench-timer-") as tmp:
            tmp = Path(tmp)
            for key, path in files.items():
                job[key] = transport.put(path, workdir)
            (tmp / "job.json").write_text(json.dumps(job))
            remote_job = transport.put(tmp / "job.json", workdir)
            cmd = transport.run(board_command(python, "timer", remote_job), env={"TVM_USE_RUNTIME_LIB": "1"},
                                timeout_s=timeout_s, cwd=workdir)
            if cmd.timed_out:
                raise TransportError("select", f"the kernel timer on {transport.device} did not finish within "
                                               f"{timeout_s:g} s; raise [measure].timeout_s", cmd)
            try:
                transport.get(f"{workdir}/result.json", tmp / "result.json")
                result = json.loads((tmp / "result.json").read_text())
            except (OSError, ValueError) as err:
                raise TransportError("select", f"the kernel timer on {transport.device} produced no result "
                                               f"({err}); {cmd.tail(3)}", cmd) from None
    finally:
        transport.remove(workdir)
    if not result.get("ok"):
        raise TransportError("select", f"the kernel timer on {transport.device} failed: {result.get('error')}")
    return result


def board_fingerprint(transport: Transport, python: str, *, timeout_s: float = 300) -> dict:
    """What decides kernel timings on the device, as its board-side code reports it (no kernels are run)."""
    return dict(_run_timer(transport, python, {"kernels": []}, {}, timeout_s)["fingerprint"])


def time_kernels(transport: Transport, python: str, library: Path, arrays: Path, specs: list[dict], *,
                 repeat: int, min_repeat_ms: int, timeout_s: float, device: str = "cpu") -> dict[str, dict]:
    """Time every kernel of ``library`` on the device's ``device`` ("cpu", or "cuda" for a CUDA target's bundle):
    ``{id: {"median_us", "results_us"} | {"error"}}``."""
    job = {"device": device, "threads": None, "number": 1, "repeat": repeat, "min_repeat_ms": min_repeat_ms,
           "kernels": specs}
    result = _run_timer(transport, python, job, {"library": library, "arrays": arrays}, timeout_s)
    times = result.get("times") or {}
    return {spec["id"]: times.get(spec["id"], {"error": "the timer returned nothing for it"}) for spec in specs}
