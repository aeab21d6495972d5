"""``synthset``: a thin command-line shell over the job spec, the runner and the models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from models.families import family_names
from pipeline.spec import SpecError, load_spec, parse_date, today_utc

log = logging.getLogger("synthset")


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job spec YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a spec field (repeatable)")
    p.add_argument("--date", type=_date, help="run date for {date}/{run_id} in paths and the "
                   "name (YYYY-MM-DD; default: today, UTC)")


def _date(text: str) -> str:
    try:
        return parse_date(text)
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.runner import make_plan

    plan = make_plan(load_spec(args.job, args.overrides, args.date))
    s = plan.summary()
    source = "a template" if plan.spec.input.template else f"{s['files']} file(s)"
    print(f"{args.job}: {source}, {s['prompts']} prompts, {s['images']} images, "
          f"{s['shards']} shards of {s['shard_size']} -> {plan.spec.output.path} "
          f"(fingerprint {s['fingerprint']})")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.executor.submit import SubmitError, prepare_driver
    from pipeline.runner import run_job

    spec = load_spec(args.job, args.overrides, args.date)
    try:
        prepare_driver(args.address)  # a secured cluster's token, found the way Ray does
    except SubmitError as e:
        print(f"synthset run: {e}", file=sys.stderr)
        return 2
    # Pod deletion and `synthset stop` send SIGTERM: unwind so the run lock is released.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        manifest = run_job(spec, overwrite=args.overwrite, address=args.address,
                           show_progress=not args.quiet, retry_failed=args.retry_failed,
                           repair=args.repair)
    finally:
        signal.signal(signal.SIGTERM, previous)
    from pipeline.output.formats import get_format
    from pipeline.output.manifest import read_entries, shards_committed
    from pipeline.runner import open_output

    out = spec.output.path.rstrip("/")
    print(f"done: {manifest['successes']} images, {manifest['failed']} failed, "
          f"{shards_committed(manifest)} shards in {out}")
    if manifest.get("repaired"):
        print(f"  repaired: {len(manifest['repaired'])} shard(s) regenerated "
              f"({', '.join(manifest['repaired'][:10])})")
    if not shards_committed(manifest):
        print(f"  the input had no rows (input.allow_empty): {out}/_SUCCESS lists no shards")
        return 0
    first = read_entries(open_output(spec), manifest, ("shard_name",))[0]["shard_name"]
    print(f"  look at: {get_format(spec.output.format).look_at(out, first)};\n"
          f"  synthset status {out}; synthset report {out} (writes {out}/report.html)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.output.progress import format_status, read_status
    from pipeline.output.storage import OutputFolder

    options = json.loads(args.storage_options) if args.storage_options else {}
    status = read_status(OutputFolder(args.output, options))
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.output.storage import OutputFolder
    from pipeline.output.verify import verify_output

    options = json.loads(args.storage_options) if args.storage_options else {}
    report = verify_output(OutputFolder(args.output, options))
    print(report.format())
    return 0 if report.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.output.storage import OutputFolder
    from pipeline.report.write import write_report

    options = json.loads(args.storage_options) if args.storage_options else {}
    page, sheet = write_report(OutputFolder(args.output, options), args.out, options)
    print(f"report: {page}\ncontact sheet: {sheet}")
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    from pipeline.output.dedup import rerun_dedup
    from pipeline.output.storage import OutputFolder

    options = json.loads(args.storage_options) if args.storage_options else {}
    summary = rerun_dedup(OutputFolder(args.output, options), args.threshold, args.bands)
    how = (f"{summary.get('signature') or 'phash'} within {summary['threshold']} bits"
           if summary["phash"] else "no hash columns: exact copies only")
    print(f"{summary['groups']} duplicate groups, {summary['images']} images in them, of "
          f"{summary['rows']} ({how}) -> {args.output.rstrip('/')}/_duplicates.pq")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pipeline.executor.submit import SubmitError, default_working_dir, follow_logs, submit

    working_dir = None if args.no_working_dir else (args.working_dir or default_working_dir())
    try:
        job_id = submit(args.job, args.address, args.overrides, args.date or today_utc(),
                        working_dir)
        print(job_id)
        if not args.wait:
            print(f"  follow it: synthset logs {job_id} --follow; stop it: synthset stop "
                  f"{job_id}", file=sys.stderr)
            return 0
        state = follow_logs(job_id, args.address, lambda t: print(t, end="", flush=True))
    except SubmitError as e:
        print(f"synthset submit: {e}", file=sys.stderr)
        return 2
    print(f"job {job_id}: {state}", file=sys.stderr)
    return 0 if state == "SUCCEEDED" else 1


def cmd_logs(args: argparse.Namespace) -> int:
    from pipeline.executor.submit import SubmitError, follow_logs

    try:
        state = follow_logs(args.job_id, args.address, lambda t: print(t, end="", flush=True),
                            follow=args.follow)
    except SubmitError as e:
        print(f"synthset logs: {e}", file=sys.stderr)
        return 2
    print(f"job {args.job_id}: {state}", file=sys.stderr)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from pipeline.executor.submit import SubmitError, stop

    try:
        stopped = stop(args.job_id, args.address)
    except SubmitError as e:
        print(f"synthset stop: {e}", file=sys.stderr)
        return 2
    print(f"job {args.job_id}: {'stopping' if stopped else 'already finished'}")
    return 0


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray dashboard URL, e.g. http://HEAD:8265 "
                   "(default: $RAY_ADDRESS)")


def _cluster_commands(sub) -> None:
    p = sub.add_parser("submit", help="submit a job to a Ray cluster (Ray Jobs API)")
    _spec_args(p)
    _cluster_args(p)
    p.add_argument("--working-dir", help="folder shipped with the job (default: this checkout)")
    p.add_argument("--no-working-dir", action="store_true",
                   help="ship nothing: the cluster image already has the project")
    p.add_argument("--wait", action="store_true", help="follow the logs; exit 0 on success")
    p.set_defaults(fn=cmd_submit)
    for name, fn, text in (("logs", cmd_logs, "print a submitted job's logs"),
                           ("stop", cmd_stop, "stop a submitted job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id", help="the id printed by synthset submit")
        _cluster_args(p)
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="stream until it ends")
        p.set_defaults(fn=fn)


def cmd_train(args: argparse.Namespace) -> int:
    from models.train import load_train_config, run_training

    export = run_training(load_train_config(args.config, args.overrides))
    print(f"exported model: {export}  (use it with --set model.path={export})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from models.evaluate import main as evaluate_main

    evaluate_main(args.rest)
    return 0


def cmd_formats(args: argparse.Namespace) -> int:
    print(formats_table())
    return 0


def formats_table() -> str:
    """The output formats and model families there are, as the docs' Markdown tables."""
    from models.families import FAMILIES
    from pipeline.output.formats import BUILT_IN

    lines = ["| `output.format` | what it writes |", "|---|---|"]
    lines += [f"| `{w.format}` | {w.description} |" for w in BUILT_IN]
    lines += ["", "| `model.family` | what it is | batch size (auto) | shipped weights |",
              "|---|---|---|---|"]
    lines += [f"| `{f.name}` | {f.description} | {f.batch_size} | {f.weights or '-'} |"
              for f in FAMILIES.values()]
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.device_table:
        from pipeline.bench_device import device_table

        print(device_table(args))
        return 0
    if args.markers:
        from pipeline.scale import scale_report

        print(scale_report(args.markers, args.workdir, args.markers_on))
        return 0
    from pipeline.bench import run_bench

    print(run_bench(args))
    return 0


def _bench_command(sub) -> None:
    p = sub.add_parser("bench", help="pipeline vs raw model loop vs Ray Data, side by side")
    p.add_argument("--family", default="diffusers", choices=family_names())
    p.add_argument("--model", help="model folder (diffusers: required; make bench builds a "
                   "tiny Stable Diffusion)")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--size", type=int, default=64, help="width = height")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--image-format", default="png", choices=["png", "jpeg", "webp"])
    p.add_argument("--format", default="parquet", choices=["files", "webdataset", "parquet"],
                   help="output.format; parquet matches what the Ray Data baseline writes")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--workdir", help="where inputs and outputs go (default: a temp folder)")
    p.add_argument("--skip-s3", action="store_true")
    p.add_argument("--skip-ray-data", action="store_true")
    p.add_argument("--skip-invariant", action="store_true",
                   help="no 'invariant' row (the raw loop drawing each image alone)")
    p.add_argument("--quality", action="store_true", help="also run the pipeline with the "
                   "phash and scene scorers on (mode 'quality'), to compare with 'local'")
    p.add_argument("--deterministic", type=lambda v: v.split(","), metavar="auto,true,false",
                   help="also run the pipeline with runtime.deterministic set to each value "
                   "(modes det-auto, det-true, det-false), beside 'local' at its default")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="rounds over all modes (interleaved); each mode reports its best")
    p.add_argument("--encode-size", type=int, default=512, metavar="PX",
                   help="also time image encoding at PX² on threads vs processes (0: skip)")
    p.add_argument("--plan-rows", type=int, metavar="N",
                   help="instead: time planning an N-prompt Parquet, with driver memory")
    p.add_argument("--device-table", action="store_true",
                   help="instead: a simulated device (null family) at 8/32/128 images/s for "
                   "PNG, JPEG and WebP against its limit and Ray Data (use --size 512)")
    p.add_argument("--device-seconds", type=float, default=10, metavar="S",
                   help="--device-table: seconds per cell (images = S x the cell's expected "
                   "rate, min(device, encode capacity))")
    p.add_argument("--device-actors", type=int, default=0, metavar="N",
                   help="--device-table: also N actors on the node, each its own simulated "
                   "device at --device-actor-rate images/s (per-actor and node totals)")
    p.add_argument("--device-actor-rate", type=float, default=8, metavar="R")
    p.add_argument("--capacity-seconds", type=float, default=5, metavar="S",
                   help="--device-table: seconds of encoding per capacity measurement")
    p.add_argument("--markers", type=int, metavar="N",
                   help="instead: write N committed markers and time resume, status, verify's "
                   "planning and the _SUCCESS write (the driver at N shards)")
    p.add_argument("--markers-on", default="local", choices=["local", "s3", "both"],
                   help="where --markers writes: a local folder, moto S3, or both")
    p.set_defaults(fn=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthset", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="validate a job and its input; allocates nothing")
    _spec_args(p)
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("run", help="run (or resume) a job")
    _spec_args(p)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an existing output that holds a different job")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--retry-failed", action="store_true",
                   help="also regenerate the failed samples (status=error) of committed shards")
    p.add_argument("--repair", action="store_true",
                   help="verify every committed shard and regenerate those whose data is "
                   "missing or fails its checksums")
    p.set_defaults(fn=cmd_run)
    _cluster_commands(sub)
    p = sub.add_parser("status", help="progress of a job, read from its output")
    p.add_argument("output", help="the job's output.path (any fsspec URL)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--storage-options", help="JSON dict passed to fsspec")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("verify", help="check an output against its markers and checksums")
    p.add_argument("output", help="the job's output.path (any fsspec URL)")
    p.add_argument("--storage-options", help="JSON dict passed to fsspec")
    p.set_defaults(fn=cmd_verify)
    p = sub.add_parser("report", help="write an HTML report and a PNG contact sheet of a run")
    p.add_argument("output", help="the job's output.path (any fsspec URL)")
    p.add_argument("--out", help="HTML file to write (default: OUTPUT/report.html; the PNG "
                   "goes beside it)")
    p.add_argument("--storage-options", help="JSON dict passed to fsspec")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("dedup", help="group near-duplicate and identical images of a "
                       "committed output into OUTPUT/_duplicates.pq")
    p.add_argument("output", help="the job's output.path (any fsspec URL)")
    p.add_argument("--threshold", type=int, help="max Hamming distance of two average "
                   "hashes (default: the job's quality.dedup_threshold)")
    p.add_argument("--bands", type=int, help="LSH bands (default: quality.dedup_bands)")
    p.add_argument("--storage-options", help="JSON dict passed to fsspec")
    p.set_defaults(fn=cmd_dedup)
    p = sub.add_parser("train", help="train or fine-tune a gan/autoregressive model")
    p.add_argument("config", help="training config YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("eval", help="prompt fidelity of scene models on held-out prompts",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="MODEL [--per-combo N] [--split heldout|train] [--renders] ...")
    p.set_defaults(fn=cmd_eval)  # add_help=False: `synthset eval --help` is eval's own help
    p = sub.add_parser("formats", help="the output formats and model families, as tables")
    p.set_defaults(fn=cmd_formats)
    _bench_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from models.train.config import TrainConfigError
    from pipeline.input.sources import InputError
    from pipeline.output.lock import LockHeld, LockLost
    from pipeline.output.storage import StorageError
    from pipeline.runner import JobFailed

    try:
        return args.fn(args)
    except (SpecError, TrainConfigError, InputError, StorageError, FileNotFoundError) as e:
        print(f"synthset {args.command}: {e}", file=sys.stderr)
        return 2
    except LockHeld as e:
        print(f"synthset {args.command}: {e}", file=sys.stderr)
        return 3
    except (JobFailed, LockLost) as e:
        print(f"synthset {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; committed shards are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
