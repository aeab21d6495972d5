"""``synthset``: a thin command-line shell over the job spec, the runner and the models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from pipeline.spec import SpecError, load_spec

log = logging.getLogger("synthset")


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job spec YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a spec field (repeatable)")


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.runner import make_plan

    plan = make_plan(load_spec(args.job, args.overrides))
    s = plan.summary()
    print(f"{args.job}: {s['files']} file(s), {s['prompts']} prompts, {s['images']} images, "
          f"{s['shards']} shards of {s['shard_size']} -> {plan.spec.output.path} "
          f"(fingerprint {s['fingerprint']})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import run_job

    spec = load_spec(args.job, args.overrides)
    manifest = run_job(spec, overwrite=args.overwrite, address=args.address,
                       show_progress=not args.quiet)
    print(f"done: {manifest['successes']} images, {manifest['failed']} failed, "
          f"{len(manifest['shards'])} shards in {spec.output.path}")
    print(f"  look at: {spec.output.path}/00000/  (images), {spec.output.path}/00000.parquet "
          f"(metadata), synthset status {spec.output.path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.progress import format_status, read_status
    from pipeline.storage import OutputFolder

    options = json.loads(args.storage_options) if args.storage_options else {}
    status = read_status(OutputFolder(args.output, options))
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models.train import load_train_config, run_training

    export = run_training(load_train_config(args.config, args.overrides))
    print(f"exported model: {export}  (use it with --set model.path={export})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from models.evaluate import evaluate, format_table

    rows = [evaluate(path, n=args.n, seed=args.seed, family=args.family)
            for path in args.models]
    print(format_table(rows))
    return 0


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
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("status", help="progress of a job, read from its output")
    p.add_argument("output", help="the job's output.path (any fsspec URL)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--storage-options", help="JSON dict passed to fsspec")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("train", help="train or fine-tune a gan/autoregressive model")
    p.add_argument("config", help="training config YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("eval", help="prompt fidelity of scene models on held-out prompts")
    p.add_argument("models", nargs="+", help="model folders")
    p.add_argument("--family", default="gan", choices=["gan", "autoregressive"])
    p.add_argument("-n", type=int, default=2, help="images per held-out combination")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from pipeline.runner import JobFailed
    from pipeline.sources import InputError
    from pipeline.storage import StorageError

    try:
        return args.fn(args)
    except (SpecError, InputError, StorageError, FileNotFoundError) as e:
        print(f"synthset {args.command}: {e}", file=sys.stderr)
        return 2
    except JobFailed as e:
        print(f"synthset {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; committed shards are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
