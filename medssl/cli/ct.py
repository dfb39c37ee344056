"""run / report / --dry-run of a CT suite (``track: ct``, medssl/run/ct.py): one device, fp32, its own plan,
records and tables; the image track's scale-out options are refused in one line."""

from __future__ import annotations

import time
from pathlib import Path

from medssl.cli.inputs import check_writable, reports_folder, resolve_data_roots, resolve_device
from medssl.cli.output import check_report_has_records, log_run, report_failures
from medssl.record.store import ResultStore
from medssl.report.ct import write_ct_reports
from medssl.run.checks import check_data
from medssl.run.ct import build_ct_plan, run_ct_plan
from medssl.runtime.options import RunOptions
from medssl.runtime.progress import check_logger
from medssl.suite.protocol import ConfigError


def refuse_image_options(args, name: str) -> None:
    """--encoder, export and the scale-out options belong to the image track."""
    if args.encoder:
        raise ConfigError(
            f"--encoder brings 2D ResNet encoders; suite {name} is a CT suite, whose rows are FPN3d encoders it pretrains (or initialises at random)"
        )
    if args.command == "export":
        raise ConfigError(
            f"'export' writes the ResNet encoders of image suites; the FPN3d encoders of CT suite {name} are OUT/checkpoints/<key>/encoder.pt (SHA-256 in encoder.json)"
        )
    refused = [
        option
        for option, given in (
            ("--shard", getattr(args, "shard", None)),
            ("--devices", getattr(args, "devices", 1) != 1),
            ("--nodes", getattr(args, "nodes", 1) != 1),
            ("--compile", getattr(args, "compile", False)),
            ("--precision bf16", getattr(args, "precision", "auto") == "bf16"),
        )
        if given
    ]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)}: CT suite {name} trains on one device in fp32, as the official vox2vec code; leave {'them' if len(refused) > 1 else 'it'} out"
        )


def ct_command(args, argv, full_suite, suite, tag: str) -> int:
    name = suite["name"]
    refuse_image_options(args, name)
    plan = build_ct_plan(suite)
    out_dir = Path(args.out or "results")
    reports_root = reports_folder(args, out_dir)
    store = ResultStore(out_dir / name)
    # a narrowed report (--methods, --seeds, ...) or a changed suite (--set) never replaces the suite's own tables
    narrowed = bool(tag) and (args.command == "report" or bool(args.settings))
    report_plan, report_dir = (
        (plan, reports_root / f"{name}--{tag}") if narrowed else (build_ct_plan(full_suite), reports_root / name)
    )
    if args.command == "report":
        if not store.files():
            raise ConfigError(
                f"no stored results in {store.directory}; run 'python run_benchmark.py --suite {args.suite}' first"
            )
        check_report_has_records([key for job in report_plan.eval_jobs for key in job.record_keys], store, name)
        check_writable(reports_root)
        for path in write_ct_reports(report_plan, store, report_dir):
            print(f"wrote {path}")
        return 0
    if args.dry_run:
        return ct_dry_run(args, plan, store, out_dir)
    check_logger(args.logger)
    device = resolve_device(args.device)
    data_root = resolve_data_roots(args)
    check_writable(store.directory, out_dir / "checkpoints", *data_root.folders(), reports_root)
    started = time.time()
    options = RunOptions(
        device=device, progress=not args.no_progress, logger=args.logger, keep_checkpoints=args.keep_checkpoints
    )
    with store.lock():
        summary = run_ct_plan(plan, data_root, out_dir, options, store=store)
    for path in write_ct_reports(report_plan, store, report_dir):
        print(f"wrote {path}")
    log_run(store.directory, argv, summary, device, time.time() - started, "32")
    print(
        f"done: {summary['ran']} evaluations run, {summary['skipped']} reused from {store.directory} ({(time.time() - started) / 60:.1f} min)"
    )
    return report_failures(summary)


def ct_dry_run(args, plan, store: ResultStore, out_dir: Path) -> int:
    """Every job with its status, then the up-front data check of the pending ones."""
    done = store.keys()
    print(
        f"Suite {plan.suite['name']} (CT): {len(plan.pretrain_jobs)} pretraining jobs, {len(plan.eval_jobs)} evaluation jobs"
    )
    for job in plan.pretrain_jobs:
        print(f"  {job.key:<40} seed={job.seed}")
    for job in plan.eval_jobs:
        print(f"  {job.key}  {job.describe()} [{'done' if all(k in done for k in job.record_keys) else 'pending'}]")
    check_data(
        [job for job in plan.eval_jobs if not all(k in done for k in job.record_keys)],
        plan.eval_jobs,
        resolve_data_roots(args, create=False),
        store,
        out_dir / "checkpoints",
    )
    return 0
