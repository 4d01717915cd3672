"""``sparsebench``: the command line. The one place a :class:`HarnessError` becomes a message and an exit code."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

from .errors import EXIT_OK, EXIT_ROWS_ERROR, EXIT_STOPPED, EXIT_USAGE, DeviceLost, HarnessError
from .paths import DEFAULT_DB
from .transports.spec import add_device_arguments, device_spec_from_args

CONFIGS = Path(__file__).resolve().parent / "configs"

EXIT_CODES_HELP = f"""exit codes of run and demo:
  {EXIT_OK}  every planned row was measured, none is ERROR (INVALID rows are measured rows)
  {EXIT_USAGE}  bad input (command line, config, model, device check): nothing was measured
  {EXIT_ROWS_ERROR}  the run finished, but some rows are ERROR (`sparsebench results RUN_ID` shows why;
     --resume RUN_ID retries them)
  {EXIT_STOPPED}  the run stopped early (Ctrl-C, SIGTERM, SIGHUP, device lost, results store unwritable):
     the rows measured so far are kept; the same command with --resume RUN_ID measures the rest
"""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (or SIGINT) raised in the main thread as a KeyboardInterrupt, so the same cleanup runs as
    for Ctrl-C; ``signame`` names the signal."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP stop the command through :class:`Interrupted` (a KeyboardInterrupt). A signal the
    caller set to be ignored (``nohup``, a background job) stays ignored."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _raise_interrupted)


def _signame(err: KeyboardInterrupt) -> str:
    return getattr(err, "signame", "SIGINT")


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` and prove we can write there, before any measurement depends on it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".sparsebench-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise HarnessError(f"{what} {path} is not writable ({err.strerror}); choose another directory with --out") from None
    return path


class Progress:
    """Progress bars (rich) on stderr: one bar over the (variant, batch) jobs, its text the current step."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, disable=not enabled, transient=False)
        self._task = None

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        self._bar.__exit__(*exc)

    def start(self, total: int) -> None:
        self._task = self._bar.add_task("starting", total=total)

    def step(self, text: str) -> None:
        self._bar.update(self._task, description=text)

    def advance(self, key: str, row) -> None:
        """One finished :class:`harness.records.ResultRow`: printed when it is not VALID."""
        from rich.markup import escape  # messages contain "[measure]" etc., which rich would eat as markup

        if row.verdict == "ERROR":
            self.console.print(f"[red]ERROR[/red] {escape(key)}: {escape(row.error or '')}")
        elif row.verdict == "INVALID":
            self.console.print(f"[yellow]INVALID[/yellow] {escape(key)}: {escape('; '.join(row.reasons))}")
        self._bar.advance(self._task)


def _run_config(cfg, db: Path, resume: str | None, out: Path | None, kernels: str, progress: bool,
                device=None, artifacts: Path | None = None) -> int:
    """Run (or resume) one config; returns the exit code (see :data:`EXIT_CODES_HELP`). A HarnessError before the
    device passed its checks propagates (nothing was measured: a usage error); one after it, a lost device or an
    interruption stops the run with one line saying how to resume it."""
    from .bench import Benchmark, load_models, plan_jobs
    from .store import ResultStore

    run_id = None
    bench = None
    try:
        if out is not None:
            ensure_writable_dir(out, "report directory")
        store = ResultStore(db)
        bench = Benchmark(cfg, store, kernels=kernels, device=device, artifacts=artifacts)
        models = load_models(cfg)
        jobs = plan_jobs(cfg, models, log=lambda msg: print(msg, file=sys.stderr))
        run_id = bench.start(resume)
        print(f"run {run_id}: {len(jobs)} variant x batch jobs on target {cfg.target} -> {db}", file=sys.stderr)
        with Progress(progress) as bar:
            bench.progress = bar
            counts = bench.run(run_id, jobs)
    except KeyboardInterrupt as err:
        return _stopped(f"interrupted ({_signame(err)})", run_id or resume, db)
    except HarnessError as err:
        if run_id is None or not (isinstance(err, DeviceLost) or bench.preflight_done):
            raise
        return _stopped(str(err), run_id, db)
    print(f"run {run_id}: measured {counts['done']}, kept {counts['skipped']} from before, "
          f"{counts['errors']} error rows", file=sys.stderr)
    if out is not None:
        _write_report(store, run_id, out)
    store.close()
    if counts["errors"]:
        print(f"run {run_id}: {counts['errors']} row(s) are ERROR (`sparsebench results {run_id}` shows why); the "
              f"same command with --resume {run_id} retries them", file=sys.stderr)
        return EXIT_ROWS_ERROR
    return EXIT_OK


def _stopped(why: str, run_id: str | None, db: Path) -> int:
    """The one line of a run that stopped early; :data:`EXIT_STOPPED`."""
    if run_id is None:
        print(f"sparsebench: stopped before the run started: {why}; nothing was measured", file=sys.stderr)
    else:
        print(f"sparsebench: run {run_id} stopped: {why}; the rows measured so far are kept in {db}; the same "
              f"command with --resume {run_id} measures the rest", file=sys.stderr)
    return EXIT_STOPPED


def _write_report(store, run_id: str, out: Path) -> None:
    from .report import write_report

    rows = store.results(run_id)
    samples = {r.variant_key: [v / 1e6 for v in store.samples(r.id)] for r in rows if r.verdict != "ERROR"}
    run = store.get_run(run_id)
    run_info = {"run_id": run_id, "name": run["name"], "created_at": run["created_at"], "target": run["target"],
                "accelerator": next((r.accelerator for r in rows if r.accelerator), "cpu"),
                "tvm_target": run["target_json"]}
    device_meta = next((r.device_meta for r in rows if r.device_meta), None)
    if device_meta:
        run_info["device"] = device_meta.to_json()
    paths = write_report(rows, out, title=f"sparsebench report — run {run_id}", samples=samples, run_info=run_info,
                         notes=store.notes(run_id))
    print(f"report: {paths['html']}", file=sys.stderr)


def add_accelerator_argument(p) -> None:
    from .config import ACCELERATORS

    p.add_argument("--accelerator", choices=ACCELERATORS, default=None,
                   help="what runs the models: the profile's CPU target or its [tvm].cuda GPU (default: the "
                        "config's [run].accelerator, else cpu)")


def _overrides(cfg, args):
    """Command-line settings that replace the config's."""
    import dataclasses

    if args.sensor_root:
        if not args.sensor_root.startswith("/"):
            raise HarnessError(f"--sensor-root {args.sensor_root!r} must be an absolute path on the device")
        cfg = dataclasses.replace(cfg, measure=dataclasses.replace(cfg.measure, sensor_root=args.sensor_root))
    if getattr(args, "accelerator", None):
        cfg = dataclasses.replace(cfg, accelerator=args.accelerator)
    return cfg


def cmd_demo(args) -> int:
    from .config import load_config

    cfg = _overrides(load_config(CONFIGS / ("demo-quick.toml" if args.quick else "demo.toml")), args)
    return _run_config(cfg, args.db, args.resume, args.out, "ours", not args.no_progress,
                       device_spec_from_args(args))


def cmd_run(args) -> int:
    from .config import load_config

    cfg = _overrides(load_config(args.config), args)
    if args.farm is not None or args.boards or args.tag or args.replicas != 1:  # a farm of boards (harness.farm.run)
        from .farm.run import cmd_run_farm
        return cmd_run_farm(args, cfg)
    return _run_config(cfg, args.db or cfg.db, args.resume, args.out, args.kernels, not args.no_progress,
                       device_spec_from_args(args), artifacts=args.artifacts)


def cmd_compile(args) -> int:
    """``sparsebench compile CONFIG --out DIR``: every variant compiled for the profile, nothing run."""
    from .compile.offline import OFFLINE, compile_config
    from .config import ACCELERATORS, load_config, load_target

    cfg = _overrides(load_config(args.config), args)
    if args.target:
        load_target(args.target)  # an unknown name: one line with the known ones
        cfg = dataclasses.replace(cfg, target=args.target)
    if args.accelerator == "all":
        profile = load_target(cfg.target)
        accelerators = tuple(a for a in ACCELERATORS if a in profile.tvm_targets)
    else:
        accelerators = (args.accelerator or cfg.accelerator,)
    ensure_writable_dir(args.out, "artifacts directory")
    print(f"compile {cfg.name}: target {cfg.target}, {' and '.join(accelerators)} -> {args.out} ({OFFLINE}: the "
          "rule chooses each layer's kernel)", file=sys.stderr)
    failed = compile_config(cfg, args.out, accelerators=accelerators, kernels=args.kernels)
    print(f"{args.out / 'manifest.json'}: " + ("every variant compiled" if not failed else
                                                f"{failed} variant(s) did not compile (named above)"),
          file=sys.stderr)
    return EXIT_ROWS_ERROR if failed else EXIT_OK


def _existing_store(db: Path):
    from .store import ResultStore

    if not db.is_file():
        raise HarnessError(f"no results store at {db}; run `sparsebench demo` first or pass --db")
    return ResultStore(db)


def cmd_report(args) -> int:
    store = _existing_store(args.db)
    run_id = store.resolve_run(args.run_id)
    ensure_writable_dir(args.out, "report directory")
    _write_report(store, run_id, args.out)
    return 0


def cmd_results(args) -> int:
    store = _existing_store(args.db)
    if args.run_id is None and args.csv is None:
        from rich.console import Console
        from rich.table import Table

        table = Table("run", "name", "created", "target", "results", "valid", "invalid", "error")
        for r in store.list_runs():
            table.add_row(r["run_id"], r["name"], r["created_at"], r["target"], str(r["n_results"]),
                          str(r["n_valid"] or 0), str(r["n_invalid"] or 0), str(r["n_error"] or 0))
        Console().print(table)
        return 0
    from .report import write_csv, write_csv_stream

    run_id = store.resolve_run(args.run_id)
    rows = store.results(run_id)
    if args.csv:
        try:
            write_csv(rows, args.csv)
        except OSError as err:
            raise HarnessError(f"cannot write {args.csv}: {err.strerror}; choose another path") from None
        print(f"{len(rows)} rows of run {run_id} -> {args.csv}", file=sys.stderr)
    else:
        write_csv_stream(rows, sys.stdout)
    return 0


def cmd_targets(args) -> int:
    import json

    from .config import known_targets, load_target

    for name in known_targets():
        profile = load_target(name)
        print(f"{name:12s} {profile.description}\n{'':12s} transport={profile.transport} "
              f"target={json.dumps(profile.tvm_target)}")
        extra = {role: t for role, t in profile.tvm_targets.items() if role != "cpu"}
        if extra:
            print(f"{'':12s} " + " ".join(f"{role}={json.dumps({k: v for k, v in t.items() if k != 'host'})}"
                                           for role, t in extra.items()))
        for role, why in profile.unresolved.items():
            print(f"{'':12s} {role}: not here ({why.split(';')[0]})")
        if profile.transport != "local":
            print(f"{'':12s} toolchain={profile.toolchain} energy={','.join(profile.energy) or 'none'} "
                  f"port={profile.port} python={profile.python or 'python3'}")
    return 0


def cmd_verify(args) -> int:
    from .emulate import verify_artifact

    result = verify_artifact(args.artifact, arch=args.emulate, inputs=args.inputs, reference=args.reference,
                             batch=args.batch, rtol=args.rtol, log=lambda msg: print(msg, file=sys.stderr))
    print(result.summary())
    return 0 if result.ok else 1


def cmd_doctor(args) -> int:
    from .doctor import doctor

    return doctor(device_spec_from_args(args), target=args.target, as_json=args.json)


def cmd_energy(args) -> int:
    from . import energy

    if args.source == "tegrastats":
        return energy.main_tegrastats(args.file, json=args.json, start=args.start, end=args.end,
                                      interval_s=args.interval)
    return energy.main_pmic(args.file, json=args.json)


def cmd_kernels(args) -> int:
    from .kernelbench import FULL, QUICK, format_table, kernel_suite, write_json

    from .config import load_target

    ensure_writable_dir(args.json.parent, "output directory")
    from .kernelbench.plot import plot_roofline

    doc = kernel_suite(QUICK if args.quick else FULL, load_target("local").tvm_target)
    write_json(doc, args.json)
    figure = plot_roofline(doc, args.json.with_name(args.json.stem + "-roofline.png"))
    print(format_table(doc))
    print(f"{len(doc['records'])} records -> {args.json}" + (f"; roofline plot -> {figure}" if figure else ""),
          file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from .kernelbench import write_json
    from .modelbench import FULL, QUICK, format_table, model_suite, pick

    models = pick(args.models)  # an unknown name fails here, before anything is exported or compiled
    ensure_writable_dir(args.json.parent, "output directory")
    doc = model_suite(models, QUICK if args.quick else FULL)
    write_json(doc, args.json)
    print(format_table(doc))
    print(f"{len(doc['models'])} models -> {args.json}", file=sys.stderr)
    return 0


def cmd_recovery(args) -> int:
    """``sparsebench recovery --json OUT``: one-shot vs recovered accuracy of the labelled zoo models, training time,
    the targets; exit 1 when a target is missed."""
    from .kernelbench import write_json
    from .sparsify.recoverybench import FULL, QUICK, format_table, recovery_suite

    ensure_writable_dir(args.json.parent, "output directory")
    doc = recovery_suite(QUICK if args.quick else FULL, log=lambda msg: print(msg, file=sys.stderr))
    write_json(doc, args.json)
    print(format_table(doc))
    print(f"{len(doc['records'])} variants in {doc['total_s']:.0f} s -> {args.json}; targets "
          f"{'all met' if doc['all_pass'] else 'MISSED'}", file=sys.stderr)
    return EXIT_OK if doc["all_pass"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsebench",
                                     description="Measure what weight sparsity buys a pruned network on your hardware.",
                                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_db(p):
        p.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results store (default {DEFAULT_DB})")

    p = sub.add_parser("demo", help="built-in models on this machine, then the report", epilog=EXIT_CODES_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer variants and shorter timing (< 3 min on 2 cores)")
    p.add_argument("--out", type=Path, default=Path("results") / "demo", help="report directory (default results/demo)")
    p.add_argument("--resume", metavar="RUN_ID", help="finish an interrupted demo run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_db(p)
    add_device_arguments(p)
    p.add_argument("--sensor-root", metavar="DIR", help="where the device's /sys is (default /)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run a benchmark config (TOML)", epilog=EXIT_CODES_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--resume", metavar="RUN_ID", help="measure only what run RUN_ID is missing")
    p.add_argument("--out", type=Path, help="also write the report into this directory")
    p.add_argument("--db", type=Path, default=None, help="results store (default: the config's, else results/results.db)")
    p.add_argument("--kernels", choices=("ours", "tvm-default"), default="ours",
                   help="ours: schedules/ kernels (default); tvm-default: TVM's default pipeline only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_accelerator_argument(p)
    p.add_argument("--artifacts", type=Path, metavar="DIR",
                   help="use the artifacts `sparsebench compile` wrote into DIR (nothing is compiled here)")
    add_device_arguments(p)
    p.add_argument("--sensor-root", metavar="DIR", help="where the device's /sys is (default: the config's, /)")
    from .farm.run import add_farm_run_arguments
    add_farm_run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="compile every variant of a config for its profile without running them",
                       epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--out", type=Path, required=True, help="artifacts directory (then: run CONFIG --artifacts DIR)")
    p.add_argument("--target", metavar="PROFILE", help="profile to compile for (default: the config's [run] target)")
    from .config import ACCELERATORS
    p.add_argument("--accelerator", choices=(*ACCELERATORS, "all"), default=None,
                   help="the profile's CPU target, its CUDA target, or every one it has (default: the config's)")
    p.add_argument("--kernels", choices=("ours", "tvm-default"), default="ours",
                   help="ours: schedules/ kernels (default); tvm-default: TVM's default pipeline only")
    p.set_defaults(func=cmd_compile, sensor_root=None)

    p = sub.add_parser("report", help="write the HTML/Markdown/CSV report of a run")
    p.add_argument("run_id", nargs="?", help="run to report (default: the latest)")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    add_db(p)
    p.set_defaults(func=cmd_report)

    from .report.compare import add_parser as add_compare_parser
    add_compare_parser(sub, add_db)

    p = sub.add_parser("results", help="list runs, or print / export one run's results")
    p.add_argument("run_id", nargs="?", help="run to show (default: list runs; with --csv: the latest)")
    p.add_argument("--csv", type=Path, help="write the run's results.csv here")
    add_db(p)
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("energy", help="energy from logs you already have: tegrastats logs, Pi 5 PMIC output")
    p.add_argument("source", choices=("tegrastats", "pmic"), help="what FILE holds")
    p.add_argument("file", type=Path, help="tegrastats log, or saved `vcgencmd pmic_read_adc` output")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.add_argument("--start", help="tegrastats: window start (seconds from the first line, or HH:MM:SS)")
    p.add_argument("--end", help="tegrastats: window end (seconds from the first line, or HH:MM:SS)")
    p.add_argument("--interval", type=float, help="tegrastats: seconds between lines (JetPack 4 logs have no clock)")
    p.set_defaults(func=cmd_energy)

    p = sub.add_parser("kernels", help="time our kernels against numpy, onnxruntime, scipy and TVM's default build")
    p.add_argument("--quick", action="store_true", help="sparsities 0.5 and 0.9 only, shorter timing (< 5 min on 2 cores)")
    p.add_argument("--json", type=Path, default=Path("results") / "kernels.json", metavar="OUT",
                   help="write every measurement here (default results/kernels.json)")
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("models", help="whole models (zoo, torch and skl2onnx exports) dense and 90 %% sparse against "
                                      "onnxruntime on this machine")
    p.add_argument("--quick", action="store_true", help="fewer and shorter timing rounds")
    p.add_argument("--models", metavar="NAME,...", help="only these models (default: all; an unknown name lists them)")
    p.add_argument("--json", type=Path, default=Path("results") / "models.json", metavar="OUT",
                   help="write every measurement here (default results/models.json)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recovery", help="one-shot vs fine-tuned accuracy of the digits models at 50/80/90 %% "
                                        "(unstructured, 16x1 blocks), training time, the accuracy targets")
    p.add_argument("--quick", action="store_true", help="digits-mlp at 90 %% only (the two targets)")
    p.add_argument("--json", type=Path, default=Path("results") / "recovery.json", metavar="OUT",
                   help="write every record and the targets here (default results/recovery.json)")
    p.set_defaults(func=cmd_recovery)

    p = sub.add_parser("targets", help="list device profiles")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("doctor", help="check a device: OS, Python, TVM runtime, governor, power sensors, and the fixes")
    add_device_arguments(p, positional=True)
    p.add_argument("--target", metavar="PROFILE", help="compare with this device profile (and use its defaults)")
    p.add_argument("--json", action="store_true", help="print the probe's raw JSON instead of the report")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("verify", help="run a cross-built artifact under emulation; compare with the host build")
    p.add_argument("artifact", help="model.so, its folder, or an artifact key (`sparsebench results` column)")
    p.add_argument("--emulate", choices=("aarch64",), required=True,
                   help="run under qemu-user on a Debian sysroot built and cached on first use (~1 min)")
    p.add_argument("--inputs", type=Path, metavar="X.npy",
                   help="input rows: an .npy (one input) or an .npz of arrays by input name (default: 32 seeded "
                        "random rows of the recorded inputs)")
    p.add_argument("--reference", metavar="HOST_MODEL.so", help="host build to compare with (default: build it)")
    p.add_argument("--batch", type=int, help="batch of the artifact (default: from its build.json)")
    p.add_argument("--rtol", type=float, default=1e-4, help="tolerance relative to the output scale (default 1e-4)")
    p.set_defaults(func=cmd_verify)

    from .farm.simulate import add_simulate_parser
    from .farm.status import add_farm_parser
    add_simulate_parser(add_farm_parser(sub))  # `farm status`, `farm simulate`
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_signal_handlers()
    try:
        return args.func(args)
    except HarnessError as err:
        print(f"sparsebench: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        print(f"sparsebench: interrupted ({_signame(err)})", file=sys.stderr)
        return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
