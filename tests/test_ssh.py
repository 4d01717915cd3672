"""Loopback tier: the SSH transport and `--device ssh://...` against a real OpenSSH sshd on 127.0.0.1.

One sshd for the whole session (tests/sshd.py). Client processes get a HOME without keys and no agent, so every
key, known_hosts file and ssh config they use is the one a test names. If sshd cannot start, these tests fail with
the reason: skipped SSH tests would prove nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_config
from harness.errors import HarnessError
from harness.transports import SSHTransport, TransportError, make_transport
from sshd import mount_tiny_tmpfs, unmount


def cli(sshd, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``sparsebench ARGS`` as a user runs it, with the client HOME of the test sshd (no keys, no agent)."""
    script = Path(sys.executable).with_name("sparsebench")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "harness.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=sshd.home, timeout=timeout,
                          env=sshd.client_env())


def one_error(proc) -> str:
    """The CLI failed with exactly one ``sparsebench: error:`` line and no traceback; return that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.startswith("sparsebench: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def ssh_options(sshd, tmp_path: Path, *, key: Path | None = None, known_hosts: Path | None = None,
                python: str = sys.executable, url: str | None = None) -> list[str]:
    return ["--device", url or sshd.url, "--identity", str(key or sshd.user_key),
            "--known-hosts", str(known_hosts or sshd.known_hosts), "--python", python,
            "--remote-root", str(tmp_path / "remote")]


def results(db: Path, run_id: str | None = None) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    query = "SELECT * FROM results" + (" WHERE run_id=?" if run_id else "") + " ORDER BY variant_key"
    rows = [dict(r) for r in conn.execute(query, (run_id,) if run_id else ())]
    conn.close()
    return rows


def run_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    ids = [r[0] for r in conn.execute("SELECT run_id FROM runs ORDER BY created_at, run_id")]
    conn.close()
    return ids


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, small_model, sshd):
    """The small model measured once through the local transport: the reference the SSH runs are compared with."""
    folder = tmp_path_factory.mktemp("local-run")
    model, eval_set = small_model
    db = folder / "r.db"
    cfg = write_config(folder / "c.toml", model=model, eval_set=eval_set, db=db)
    proc = cli(sshd, "run", str(cfg), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return cfg, db, results(db)


# ---------------------------------------------------------------------------------------------------------------
# the transport itself


def test_put_run_get_remove(sshd, tmp_path):
    root = tmp_path / "remote"
    transport = SSHTransport(sshd.url, identity=str(sshd.user_key), known_hosts=str(sshd.known_hosts),
                             remote_root=str(root), run_name="r1")
    assert transport.device == sshd.label and transport.name == "ssh"
    assert transport._client is None  # lazy: nothing opened yet
    with transport:
        work = transport.make_workdir("small/dense@b1")
        assert work.startswith(f"{root}/r1/small_dense_b1-")
        src = tmp_path / "in.bin"
        src.write_bytes(os.urandom(300_000))
        remote = transport.put(src, work, "model.so")
        assert Path(remote).read_bytes() == src.read_bytes()  # the "device" is this machine

        # argv words and environment values reach the program verbatim: nothing is interpreted by the shell
        nasty = "it's $HOME; `id` \"x\" && rm -rf / #"
        res = transport.run([sys.executable, "-c", "import os,sys; print(os.environ['SB_X']); print(sys.argv[1]); "
                             "print(os.getcwd()); sys.stderr.write('warn\\n'); sys.exit(3)", nasty],
                            env={"SB_X": nasty}, cwd=work)
        assert res.exit_code == 3 and not res.ok and not res.timed_out
        assert res.stdout.splitlines() == [nasty, nasty, work] and res.stderr == "warn\n"
        assert res.command[0] == sys.executable
        res = transport.run(["sh", "-c", "echo partial; kill -9 $$"])  # killed by a signal: a result, not an error
        assert res.exit_code == -1 and res.stdout == "partial\n" and not res.timed_out
        with pytest.raises(TransportError, match="bad environment variable name"):
            transport.run(["true"], env={"A;B": "1"})

        # a command past its timeout is reported as timed out and stopped on the device
        pidfile = tmp_path / "pid"
        res = transport.run(["sh", "-c", f"echo $$ > {pidfile}; sleep 30"], timeout_s=0.5)
        assert res.timed_out and res.exit_code == -1
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "the timed-out command is still running"

        back = transport.get(remote, tmp_path / "back.bin")
        assert back.read_bytes() == src.read_bytes()
        with pytest.raises(FileNotFoundError):  # as the local transport: the session reports the runner's output
            transport.get(f"{work}/result.json", tmp_path / "r.json")

        # nothing outside this run's directory is written, read or deleted
        for call in (lambda: transport.put(src, str(tmp_path)), lambda: transport.put(src, f"{work}/../..", "x"),
                     lambda: transport.get("/etc/passwd", tmp_path / "p"), lambda: transport.remove(str(root)),
                     lambda: transport.remove(f"{root}/r1")):
            with pytest.raises(TransportError, match="outside this run's directory"):
                call()
        transport.remove(work)
        assert not Path(work).exists() and (root / "r1").is_dir()
    assert not (root / "r1").exists()  # close() removes the (empty) run directory

    # keep: the work files stay for inspection
    with SSHTransport(sshd.url, identity=str(sshd.user_key), known_hosts=str(sshd.known_hosts),
                      remote_root=str(root), run_name="r2", keep=True) as kept:
        work = kept.make_workdir("job")
        kept.put(src, work)
        kept.remove(work)
    assert (Path(work) / "in.bin").is_file()


def _kill_server_sessions(sshd) -> int:
    """Kill sshd's per-connection processes (children of the listener): the device dropping off the network."""
    killed = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == sshd.process.pid:
            os.kill(int(stat.parent.name), 9)
            killed += 1
    return killed


def test_dropped_connection_is_a_clear_error_then_reconnects(sshd, tmp_path):
    import threading

    with SSHTransport(sshd.url, identity=str(sshd.user_key), known_hosts=str(sshd.known_hosts),
                      remote_root=str(tmp_path / "remote")) as transport:
        first = transport.connect_s
        killer = threading.Timer(0.5, _kill_server_sessions, (sshd,))
        killer.start()
        with pytest.raises(TransportError) as info:
            transport.run(["sleep", "20"], timeout_s=30)
        killer.join()
        assert info.value.step == "run" and f"device {sshd.label}: lost the connection" in str(info.value)
        res = transport.run(["echo", "back"])  # the next use reconnects
        assert res.stdout.strip() == "back" and transport.connect_s > first


def test_default_remote_root_is_under_home_and_python_tilde(sshd, tmp_path):
    with SSHTransport(sshd.url, identity=str(sshd.user_key), known_hosts=str(sshd.known_hosts)) as transport:
        work = transport.make_workdir("job")
        try:
            assert work.startswith(f"{transport.home}/.cache/sparsebench/{transport.run_name}/")
            relative = os.path.relpath(sys.executable, transport.home)  # "~/<relative>" is this interpreter
            res = transport.run(["~/" + relative, "-c", "print(1)"])
            assert res.ok and res.stdout.strip() == "1"
        finally:
            transport.remove(work)


def test_ssh_config_alias_identity_file_and_proxyjump(sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(f"""
Host sbdev
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
    IdentityFile {sshd.user_key}
    IdentitiesOnly yes
Host sbjumped
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
    IdentityFile {sshd.user_key}
    ProxyJump sbdev
""")
    common = {"ssh_config": str(config), "known_hosts": str(sshd.known_hosts)}
    for alias in ("sbdev", "sbjumped"):
        with make_transport(alias, **common) as transport:  # a bare Host alias is a device
            assert transport.device == sshd.label
            assert transport.run(["echo", "via", alias]).stdout.strip() == f"via {alias}"
            if alias == "sbjumped":
                assert len(transport._hops) == 1
    with pytest.raises(HarnessError, match=r"unknown device 'nosuchbox'.*not a Host in"):
        make_transport("nosuchbox", **common)
    with pytest.raises(HarnessError, match="not an ssh URL"):
        make_transport("ssh://user@host:notaport")
    with pytest.raises(HarnessError, match="unknown device scheme 'adb'"):
        make_transport("adb://phone")


# ---------------------------------------------------------------------------------------------------------------
# the pipeline over SSH


def test_pipeline_over_ssh_matches_local(sshd, local_run, tmp_path):
    cfg, db_local, local_rows = local_run
    db = tmp_path / "ssh.db"
    out = tmp_path / "report"
    proc = cli(sshd, "run", str(cfg), "--db", str(db), "--out", str(out), "--no-progress",
               *ssh_options(sshd, tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = results(db)
    key = lambda r: (r["method"], r["sparsity_target"], r["block"], r["batch"])  # noqa: E731
    assert sorted(map(key, rows)) == sorted(map(key, local_rows))
    local = {key(r): r for r in local_rows}
    for r in rows:
        assert r["device"] == sshd.label and r["transport"] == "ssh", r
        assert r["verdict"] != "ERROR" and local[key(r)]["verdict"] != "ERROR", r
        # same verdict on what the transport cannot change (correctness against the reference); latency noise on
        # a shared 2-core machine can flip a timing verdict (CV, outliers) between two runs, so those are not compared
        untimed = lambda row: [x for x in json.loads(row["reasons_json"]) if "reference" in x]  # noqa: E731
        assert untimed(r) == untimed(local[key(r)]) == [], r
        assert r["accuracy"] == pytest.approx(local[key(r)]["accuracy"])
        assert r["top1_agreement"] == pytest.approx(local[key(r)]["top1_agreement"])
        assert r["sparsity_actual"] == pytest.approx(local[key(r)]["sparsity_actual"])
        overhead = json.loads(r["overhead_json"])
        assert {"connect_s", "prepare_s", "upload_s", "run_s", "fetch_s", "clean_s"} <= set(overhead)
        meta = json.loads(r["device_meta_json"])
        assert meta["tvm_runtime_only"] is True
    csv_text = (out / "results.csv").read_text()
    assert sshd.label in csv_text and ",ssh," in csv_text
    assert list((tmp_path / "remote").iterdir()) == []  # every work directory cleaned up


# ---------------------------------------------------------------------------------------------------------------
# failures: one clear line naming the device and the step; nothing stored is lost


def test_connection_failures_are_one_clear_error_and_keep_results(sshd, local_run, tmp_path, small_model):
    cfg, db_local, local_rows = local_run
    db = tmp_path / "r.db"
    shutil.copy(db_local, db)
    before = results(db)
    assert len(before) == 5

    # wrong key
    line = one_error(cli(sshd, "run", str(cfg), "--db", str(db), "--no-progress",
                         *ssh_options(sshd, tmp_path, key=sshd.wrong_key)))
    assert f"connect: device {sshd.label}: authentication as '{sshd.user}' failed" in line
    assert "ssh-copy-id" in line and "--identity" in line

    # unknown host key: refused, with the fingerprint and the way to trust it; nothing written to known_hosts
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    line = one_error(cli(sshd, "run", str(cfg), "--db", str(db), "--no-progress",
                         *ssh_options(sshd, tmp_path, known_hosts=empty)))
    assert f"connect: device {sshd.label}: unknown host key for [127.0.0.1]:{sshd.port}" in line
    assert "SHA256:" in line and "--trust-new-host" in line and "ssh-keyscan" in line
    assert empty.read_text() == ""

    # closed port
    from sshd import free_port

    port = free_port()
    line = one_error(cli(sshd, "run", str(cfg), "--db", str(db), "--no-progress",
                         *ssh_options(sshd, tmp_path, url=f"ssh://{sshd.user}@127.0.0.1:{port}")))
    assert f"connect: device {sshd.user}@127.0.0.1:{port}: connection refused" in line

    # a remote Python without numpy and the TVM runtime (a bare venv): the fix names the install
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    line = one_error(cli(sshd, "run", str(cfg), "--db", str(db), "--no-progress",
                         *ssh_options(sshd, tmp_path, python=str(bare / "bin" / "python"))))
    assert f"prepare: device {sshd.label}: the remote Python {bare}/bin/python" in line
    assert "No module named 'tvm'" in line and "pip install numpy apache-tvm==0.27.0.post1" in line
    assert "--python ~/sb-venv/bin/python" in line

    # a Python that does not exist at all
    line = one_error(cli(sshd, "run", str(cfg), "--db", str(db), "--no-progress",
                         *ssh_options(sshd, tmp_path, python="/nonexistent/python3")))
    assert f"prepare: device {sshd.label}: no Python at '/nonexistent/python3'" in line

    # every row stored before is still there, untouched
    assert results(db) == before


def test_unknown_host_trusted_and_recorded_and_changed_key_refused(sshd, tmp_path):
    known = tmp_path / "kh"
    known.write_text("")
    base = [sshd.url, "-i", str(sshd.user_key), "--known-hosts", str(known), "--python", sys.executable,
            "--remote-root", str(tmp_path / "remote")]
    line = one_error(cli(sshd, "doctor", *base))
    assert "unknown host key" in line and "--trust-new-host" in line
    proc = cli(sshd, "doctor", *base, "--trust-new-host")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert known.read_text() == sshd.host_key_line()  # recorded, in known_hosts format
    proc = cli(sshd, "doctor", *base)  # now known: accepted without the flag
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # a different key recorded for this host: refused even with --trust-new-host
    other = sshd.wrong_key.with_suffix(".pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    line = one_error(cli(sshd, "doctor", *base, "--trust-new-host"))
    assert f"connect: device {sshd.label}: the host key of [127.0.0.1]:{sshd.port} CHANGED" in line
    assert "ssh-keygen -R" in line


@pytest.fixture
def full_disk(sshd, tmp_path):
    """A remote root on a disk that fills up: a 64 kB tmpfs when mounting is permitted (root), else an
    RLIMIT_FSIZE of 64 kB on the server's sftp-server (writes then fail with EFBIG, as they would at a quota)."""
    path = tmp_path / "tiny"
    if mount_tiny_tmpfs(path, "64k"):
        yield path, "tmpfs"
        unmount(path)
    else:
        limit = sshd.folder / "fsize_limit"
        limit.write_text("128\n")  # 512-byte blocks
        path.mkdir(exist_ok=True)
        yield path, "rlimit"
        limit.unlink()


def test_remote_disk_full_during_upload(sshd, local_run, tmp_path, full_disk):
    root, how = full_disk
    # the transport: a clear upload error naming the device, the file and the disk; no partial file left behind
    with SSHTransport(sshd.url, identity=str(sshd.user_key), known_hosts=str(sshd.known_hosts),
                      remote_root=str(root), run_name="t") as transport:
        work = transport.make_workdir("job")
        big = tmp_path / "model.so"
        big.write_bytes(os.urandom(200_000))
        with pytest.raises(TransportError) as info:
            transport.put(big, work)
        err = info.value
        assert err.step == "upload" and str(err).startswith(f"upload: device {sshd.label}: writing model.so")
        assert ("disk is full" in str(err)) if how == "tmpfs" else ("ulimit -f" in str(err))
        assert not (Path(work) / "model.so").exists()
        transport.remove(work)

    # the pipeline: every job's row says so, the run finishes, rows stored before stay; --resume on a disk with
    # room then measures exactly those jobs
    cfg, db_local, local_rows = local_run
    db = tmp_path / "r.db"
    shutil.copy(db_local, db)
    before = results(db)
    options = ssh_options(sshd, tmp_path)
    options[options.index("--remote-root") + 1] = str(root)
    proc = cli(sshd, "run", str(cfg), "--db", str(db), "--no-progress", *options)
    assert proc.returncode == 3, proc.stderr  # EXIT_ROWS_ERROR: the run finished with ERROR rows
    run_id = run_ids(db)[-1]
    failed = results(db, run_id)
    assert len(failed) == 5 and all(r["verdict"] == "ERROR" for r in failed)
    for r in failed:
        assert r["error"].startswith(f"upload: device {sshd.label}: writing model"), r["error"]
    assert "5 error rows" in proc.stderr
    assert [r for r in results(db) if r["run_id"] != run_id] == before

    if how == "tmpfs":
        unmount(root)  # room again
    else:
        (sshd.folder / "fsize_limit").unlink()
        (sshd.folder / "fsize_limit").write_text("unlimited\n")
    proc = cli(sshd, "run", str(cfg), "--db", str(db), "--no-progress", "--resume", run_id,
               *ssh_options(sshd, tmp_path))
    assert proc.returncode == 0, proc.stderr
    resumed = results(db, run_id)
    assert len(resumed) == 5 and all(r["verdict"] != "ERROR" for r in resumed), resumed


# ---------------------------------------------------------------------------------------------------------------
# doctor


def test_doctor_over_ssh(sshd, tmp_path):
    proc = cli(sshd, "doctor", sshd.url, "-i", str(sshd.user_key), "--known-hosts", str(sshd.known_hosts),
               "--python", sys.executable, "--remote-root", str(tmp_path / "remote"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = proc.stdout
    assert report.startswith(f"sparsebench doctor: {sshd.label} (ssh)")
    for item in ("os", "cpu", "governor", "memory", "disk", "python", "numpy", "tvm runtime", "power sensor",
                 "temperature"):
        assert any(line.split()[1:2] == item.split()[:1] for line in report.splitlines()[1:]), (item, report)
    assert "glibc" in report and "tvm 0.27" in report and "result: ready to benchmark" in report
    assert list((tmp_path / "remote").iterdir()) == []  # the probe cleaned up after itself

    # a Python without the runtime: NOT READY, and the exact install command
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    proc = cli(sshd, "doctor", sshd.url, "-i", str(sshd.user_key), "--known-hosts", str(sshd.known_hosts),
               "--python", str(bare / "bin" / "python"), "--remote-root", str(tmp_path / "remote"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MISSING  tvm runtime" in proc.stdout and "No module named 'tvm'" in proc.stdout
    assert f"{bare}/bin/python -m pip install numpy apache-tvm==0.27.0.post1" in proc.stdout  # it is a venv
    assert "result: NOT READY" in proc.stdout

    proc = cli(sshd, "doctor", sshd.url, "-i", str(sshd.user_key), "--known-hosts", str(sshd.known_hosts),
               "--python", sys.executable, "--remote-root", str(tmp_path / "remote"), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["runtimes"][0]["tvm"].startswith("0.27")


def test_device_options_need_an_ssh_device(sshd, tmp_path, small_model):
    model, eval_set = small_model
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db")
    line = one_error(cli(sshd, "run", str(cfg), "--identity", str(sshd.user_key)))
    assert "--identity only apply to ssh devices" in line
    cfg = write_config(tmp_path / "p.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db", target="rpi5")
    line = one_error(cli(sshd, "run", str(cfg)))
    assert "target 'rpi5' is reached over ssh" in line and "--device ssh://" in line
