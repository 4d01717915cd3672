"""The rpc transport against a real TVM tracker and real rpc_servers on 127.0.0.1 (tests/rpcfarm.py): a run end to
end, the one-line errors, the tracker as the lease, and a server killed in the middle of a group."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, write_config
from rpcfarm import RpcFarm, free_port

from harness.errors import EXIT_OK, EXIT_STOPPED, EXIT_USAGE


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """One tracker; key "a": two servers (run, lease, kill-and-retry); key "c": one server (kill-and-stop)."""
    with RpcFarm(tmp_path_factory.mktemp("rpcfarm")) as farm:
        farm.start_tracker()
        for key in ("a", "a", "c"):  # started together: each imports TVM twice
            farm.add_server(key, wait=False)
        farm.wait_free("a", 2, timeout_s=60)
        farm.wait_free("c", 1, timeout_s=60)
        yield farm


def _config(tmp_path: Path, small_model, *, batch=(1,)) -> Path:
    model, eval_set = small_model
    return write_config(tmp_path / "run.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db",
                        levels=(0, 0.9), methods=("unstructured",), batch=batch)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def _rows(db: Path):
    from harness.store import ResultStore

    store = ResultStore(db)
    try:
        run_id = store.list_runs()[0]["run_id"]
        return run_id, store.results(run_id)
    finally:
        store.close()


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    return lines[-1]


@pytest.mark.slow
def test_run_over_rpc_end_to_end(farm, small_model, tmp_path):
    cfg = _config(tmp_path, small_model)
    res = subprocess.run(_cli("run", str(cfg), "--device", farm.url("a")), capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == EXIT_OK, res.stderr
    assert "candidate kernels timed there" in res.stderr  # kernel selection measured on the board
    _, rows = _rows(tmp_path / "r.db")
    assert len(rows) == 2
    for row in rows:
        assert row.verdict in ("VALID", "INVALID"), (row.verdict, row.error)
        assert row.device == farm.url("a") and row.transport == "rpc"
        assert row.energy_status == "unavailable: rpc transport"
        assert row.ref_max_abs_err is not None and row.ref_max_abs_err < 1e-4  # outputs match the reference
        assert row.latency_p50_ms > 0 and row.device_meta.extra["rpc_key"] == "a"
    dense = next(r for r in rows if r.method == "dense")
    assert dense.max_abs_err < 1e-5  # the dense row against itself: the outputs came back whole


def test_tracker_unreachable_is_one_line(small_model, tmp_path):
    cfg = _config(tmp_path, small_model)
    port = free_port()
    res = subprocess.run(_cli("run", str(cfg), "--device", f"rpc://127.0.0.1:{port}/a"), capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert res.returncode == EXIT_USAGE, res.stderr
    line = _one_line(res.stderr)
    assert f"tracker 127.0.0.1:{port} unreachable" in line and "python -m tvm.exec.rpc_tracker" in line


def test_no_server_for_the_key_is_one_line_at_once(farm, small_model, tmp_path):
    cfg = _config(tmp_path, small_model)
    res = subprocess.run(_cli("run", str(cfg), "--device", farm.url("nobody"), "--connect-timeout", "30"),
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == EXIT_USAGE, res.stderr
    line = _one_line(res.stderr)
    assert "no server with key nobody registered" in line and "keys: a, c" in line, line
    assert "--key nobody" in line


def test_the_tracker_is_the_lease(farm):
    from harness.transports import TransportError, make_transport

    first, second = make_transport(farm.url("a")), make_transport(farm.url("a"), request_timeout_s=1.0)
    third = make_transport(farm.url("a"), request_timeout_s=1.0)
    try:
        first.connect()
        second.connect()
        assert farm.free("a") == 0  # two sessions, two servers: each is held by one client
        start = time.monotonic()
        # (on a loaded machine the tracker may also reset the 1-s request: "gave no working server with key a")
        with pytest.raises(TransportError, match=r"no free board with key a on tracker .* within 1 s|gave no working "
                                                 r"server with key a"):
            third.connect()
        assert time.monotonic() - start < 5
        probe = first.probe()
        assert probe["rpc"].endswith("/a") and probe["tvm"] is None
        first.close()  # the server goes back to the tracker: the waiting client gets it
        third.request_timeout_s = 20.0
        third.connect()
        assert third.session is not None
    finally:
        for transport in (first, second, third):
            transport.close()
    farm.wait_free("a", 2, timeout_s=20)


def test_doctor_over_rpc_reports_what_the_server_tells(farm):
    res = subprocess.run(_cli("doctor", farm.url("a"), "--target", "local"), capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0 and "Traceback" not in res.stderr, (res.stdout, res.stderr)
    assert f"doctor: {farm.url('a')} (rpc)" in res.stdout and "registered for the key" in res.stdout, res.stdout
    assert "unavailable: rpc transport" in res.stdout, res.stdout
    res = subprocess.run(_cli("doctor", farm.url("a"), "--target", "rpi5"), capture_output=True, text=True,
                         timeout=120, cwd=ROOT)  # this machine's server reports x86_64: not a Pi 5
    assert res.returncode == 1 and "but profile rpi5 targets aarch64" in res.stdout, (res.stdout, res.stderr)
    farm.wait_free("a", 2, timeout_s=20)


def _kill_when_loading(farm: RpcFarm, proc: subprocess.Popen, key: str, timeout_s: float = 240) -> str:
    """Wait until a server of ``key`` loads the first model of a group, then kill it; its name."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        for name, (_, server_key) in list(farm.servers.items()):
            if server_key == key and "-model0.so" in farm.log(name):
                farm.kill_server(name)
                return name
        time.sleep(0.05)
    raise AssertionError(f"no server of {key} loaded a model; {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
def test_a_server_killed_mid_run_retries_on_another(farm, small_model, tmp_path):
    cfg = _config(tmp_path, small_model, batch=(1, 2))  # two groups: the second one needs the session surely
    proc = subprocess.Popen(_cli("run", str(cfg), "--device", farm.url("a")), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    killed = _kill_when_loading(farm, proc, "a")
    survivor = next(name for name, (_, key) in farm.servers.items() if key == "a")
    seen = len(farm.log(survivor))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_OK, err
    assert killed != survivor and "-model0.so" in farm.log(survivor)[seen:]  # the group ran again there
    _, rows = _rows(tmp_path / "r.db")
    assert len(rows) == 4 and all(r.verdict != "ERROR" for r in rows), [(r.variant_key, r.error) for r in rows]


@pytest.mark.slow
def test_the_only_server_killed_stops_the_run_for_resume(farm, small_model, tmp_path):
    cfg = _config(tmp_path, small_model, batch=(1, 2))
    proc = subprocess.Popen(_cli("run", str(cfg), "--device", farm.url("c"), "--connect-timeout", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _kill_when_loading(farm, proc, "c")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STOPPED, err
    line = _one_line(err)
    assert "device rpc://127.0.0.1:" in line and "/c lost" in line and "--resume" in line, line


def test_rpc_urls_and_options(tmp_path):
    from harness.errors import HarnessError
    from harness.transports import RpcTransport, make_transport
    from harness.transports.spec import DeviceSpec

    transport = make_transport("rpc://10.0.0.5:9190/rpi5")
    assert isinstance(transport, RpcTransport) and transport.device == "rpc://10.0.0.5:9190/rpi5"
    assert transport.exclusive and transport.name == "rpc"
    spec = DeviceSpec(device="rpc://10.0.0.5:9190/rpi5", connect_timeout_s=7)
    assert spec.transport_name() == "rpc" and spec.transport().request_timeout_s == 7
    with pytest.raises(HarnessError, match="--identity only apply to ssh devices"):
        DeviceSpec(device="rpc://10.0.0.5:9190/rpi5", identity=("k",)).transport()
    for bad in ("rpc://10.0.0.5/rpi5", "rpc://10.0.0.5:x/rpi5", "rpc://10.0.0.5:9190/"):
        with pytest.raises(HarnessError, match="rpc://TRACKER_HOST:PORT/KEY"):
            make_transport(bad)
    with pytest.raises(HarnessError, match="cannot run commands"):
        transport.run(["true"])
