"""The ``perflab`` command: the stack, the data, the course run, grading, labs.

    perflab stack up | down | status | env [--docker] | workers | stop-workers
    perflab stack replica up | down | status [--apply-delay-ms MS]
    perflab data build [--scale S] [--force] | status | clean
    perflab run [--scale S] [NOTEBOOK ...]
    perflab grade SUBMISSION.ipynb [--lab NN] [--out DIR] [--limit NAME=N ...]
    perflab grade --batch DIR [--lab NN] [--jobs N] [--shard I/N] [--out DIR] | --merge DIR [DIR ...] --out DIR
    perflab labs [--check]
    perflab bench [--scale S]
    perflab proxy --rtt-ms MS [--target postgres|redis]
    perflab strip [NOTEBOOK ...]
    perflab doctor [--scale S] [--seconds 20]
    perflab share [--out FILE]
    perflab class BUNDLES_DIR [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from perflab import paths
from perflab.units import format_disk


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, "") if r.get(c) is not None else "-")) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c) if row.get(c) is not None else "-").ljust(widths[c]) for c in columns))


def cmd_stack(args) -> int:
    from perflab import stack

    if args.replica_action and args.action != "replica":
        print(f"perflab: `stack {args.action}` takes no second word; did you mean `perflab stack replica "
              f"{args.replica_action}`?", file=sys.stderr)
        return 2
    if args.action == "up":
        _, messages = stack.up()
        print("\n".join(messages))
        _drop_orphans()
        from perflab.grading import isolation

        dropped = isolation.sweep_orphans()  # clones and roles of a grader that was killed
        if dropped:
            print(f"dropped {len(dropped)} grading clone(s)/role(s) left by an interrupted grader")
        print("\nPoint other tools at it with:  eval \"$(.venv/bin/perflab stack env)\"")
    elif args.action == "down":
        print("\n".join(stack.down()))
    elif args.action == "status":
        rows = stack.status()
        _print_table(rows, ["service", "health", "version", "url", "pid", "data_dir", "disk"])
        _print_disk(rows)
    elif args.action == "env":
        print("\n".join(stack.env_lines(docker=args.docker)))
    elif args.action == "workers":
        rows = stack.celery_workers()
        if rows:
            _print_table(rows, ["name", "alive", "pid", "queue", "concurrency", "acks_late", "log_file"])
        else:
            print("no Celery workers running")
    elif args.action == "stop-workers":
        print("\n".join(stack.stop_celery_workers()) or "no Celery workers running")
    elif args.action == "replica":
        return cmd_stack_replica(args)
    return 0


def _drop_orphans() -> None:
    """Copies of the data whose process ended (a killed grading, a finished notebook), half-built data."""
    from perflab import datasets

    dropped = datasets.drop_orphans()
    if dropped:
        print(f"dropped {len(dropped)} orphaned cop{'y' if len(dropped) == 1 else 'ies'} of the course data: "
              + ", ".join(dropped))


def _print_disk(rows: list[dict]) -> None:
    """The disk the course uses: .perflab/ in all, and each course database in it."""
    from perflab import datasets, stack

    print(f"\ndisk: {format_disk(stack.folder_bytes(paths.STATE_DIR))} in {paths.STATE_DIR}")
    if rows and rows[0].get("health") == "healthy":
        for name, size in datasets.disk_usage().items():
            print(f"  {format_disk(size):>10}  {name}")


def cmd_stack_replica(args) -> int:
    """`perflab stack replica up|down|status [--apply-delay-ms MS]`: the read replica of the course server."""
    from perflab import stack

    what = args.replica_action or "status"
    if what == "up":
        replica, messages = stack.replica_up(args.apply_delay_ms)
        print("\n".join(messages))
        print(f"\nread from it with:  {replica.service.masked_url}")
    elif what == "down":
        print(stack.replica_down())
    else:
        row = stack.replica_status()
        for key, value in row.items():
            print(f"{key:>18}: {'-' if value is None else value}")
    return 0


def cmd_data(args) -> int:
    from perflab import datasets, stack

    if args.action == "build":
        stack.ensure()
        report = datasets.build(args.scale, force=args.force)
        print(report)
    elif args.action == "status":
        stack.ensure()
        _print_table(datasets.describe(), ["scale", "orders", "built", "current", "size", "purpose"])
    elif args.action == "clean":
        stack.ensure()
        dropped = datasets.drop_clones()
        _drop_orphans()
        print(f"dropped {len(dropped)} copies of the course data" + (": " + ", ".join(dropped) if dropped else ""))
    return 0


def cmd_run(args) -> int:
    from perflab import datasets, report, stack

    if args.scale:
        os.environ["PERFLAB_SCALE"] = args.scale
    scale = paths.current_scale()
    started = time.perf_counter()
    print("== stack")
    _, messages = stack.up()
    print("\n".join(messages))
    _drop_orphans()
    print(f"== course data ({scale})")
    print(datasets.ensure(scale))
    print("== notebooks")
    notebooks = [Path(n) for n in args.notebooks] or None
    try:
        failures = report.run_course(scale=scale, notebooks=notebooks)
    finally:
        # Each notebook's copy is recreated when it runs again: those of ended kernels go (also on Ctrl-C).
        _drop_orphans()
        # Topic 11's replica is a full copy of the server: made again from a base backup when next needed.
        removed = stack.replica_remove()
        if removed:
            print(removed)
        print(f".perflab/ holds {format_disk(stack.folder_bytes(paths.STATE_DIR))}")
        if (Path(paths.BUILD_DIR) / "summary.json").exists():
            report.refresh_summary()  # the report's disk figures: what stays after this clean-up
    print(f"== done in {time.perf_counter() - started:.0f} s: open {paths.BUILD_DIR / 'index.html'}")
    return 1 if failures else 0


def cmd_grade(args) -> int:
    from perflab.grading import grader

    if args.batch or args.merge:
        return cmd_grade_batch(args)
    if not args.submission:
        print("perflab grade: name a SUBMISSION.ipynb, or --batch DIR, or --merge DIR ...", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else paths.BUILD_DIR / "grades" / Path(args.submission).stem
    try:
        limits = dict(_limit(item) for item in args.limit or [])
    except ValueError as exc:
        print(f"perflab grade: {exc}", file=sys.stderr)
        return 2
    result = grader.grade(Path(args.submission), lab=args.lab, out_dir=out_dir, limit_overrides=limits)
    print(result.text())
    return result.exit_code


def _limit(item: str) -> tuple[str, int]:
    """``--limit address_space_mb=2048`` → ("address_space_mb", 2048)."""
    from dataclasses import fields

    from perflab.grading.jail import Limits

    name, _, value = item.partition("=")
    known = [f.name for f in fields(Limits)]
    if name not in known or not value.isdigit():
        raise ValueError(f"--limit takes NAME=NUMBER with NAME one of {', '.join(known)}; got {item!r}")
    return name, int(value)


def cmd_grade_batch(args) -> int:
    """`perflab grade --batch DIR` / `--merge DIR ...`: a class at once (perflab/grading/batch.py)."""
    from perflab.grading import batch

    out = Path(args.out) if args.out else paths.BUILD_DIR / "grades" / "batch"
    try:
        if args.merge:
            result = batch.merge(args.merge, out)
        else:
            result = batch.grade_batch(args.batch, out_dir=out, lab=args.lab, jobs=args.jobs, shard=args.shard)
    except (FileNotFoundError, ValueError) as exc:
        print(f"perflab grade: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return result.exit_code


def cmd_labs(args) -> int:
    from perflab import labgen

    if args.check:
        stale = labgen.stale_labs()
        if stale:
            print("labs/ is out of date with solutions/: " + ", ".join(stale) + "\nFix: run `make labs`.")
            return 1
        print("labs/ matches solutions/")
        return 0
    for path in labgen.write_all():
        print(f"wrote {path.relative_to(paths.ROOT)}")
    return 0


def cmd_bench(args) -> int:
    """The data build rate, then topic 1 executed at that scale and its recorded ratios."""
    import json

    from perflab import datasets, report, stack

    scale = args.scale or paths.current_scale()
    os.environ["PERFLAB_SCALE"] = scale
    # Its own folder, so a benchmark at another scale does not mix into the course report in build/.
    paths.use_build_dir(paths.BUILD_DIR / f"bench-{scale}")
    if args.preset:
        os.environ["PERFLAB_PRESET"] = args.preset
    stack.ensure()
    print(datasets.build(scale, force=True))
    topic = sorted(paths.NOTEBOOKS_DIR.glob("01_*.ipynb"))
    failures = report.run_course(scale=scale, notebooks=topic)
    for result in sorted(paths.RESULTS_DIR.glob("01_*.json")):
        data = json.loads(result.read_text())
        ratio = (data.get("result") or {}).get("ratio") or {}
        if ratio:
            print(f"{data.get('name', result.stem):<40} {ratio.get('text', ratio)}")
    return 1 if failures else 0


def cmd_proxy(args) -> int:
    from perflab import stack

    with stack.latency_proxy(args.rtt_ms, target=args.target) as proxy:
        print(f"{args.target} with +{args.rtt_ms} ms round trip: {stack.mask_password(proxy.url)}")
        print("export " + ("DATABASE_URL" if args.target == "postgres" else "REDIS_URL") + f"='{proxy.url}'")
        print("Ctrl-C to stop.")
        try:
            proxy.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_strip(args) -> int:
    from perflab import notebooks  # noqa: F401  # first: nbformat without a 1.5 s detour
    import nbformat

    def strip_outputs(path: Path) -> bool:
        notebook = nbformat.read(path, as_version=4)
        changed = False
        for cell in notebook.cells:
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
                cell.outputs, cell.execution_count, changed = [], None, True
        if changed:
            nbformat.write(notebook, path)
        return changed

    targets = [Path(p) for p in args.notebooks] or sorted(
        p for folder in (paths.NOTEBOOKS_DIR, paths.SOLUTIONS_DIR, paths.LABS_DIR) for p in folder.glob("*.ipynb"))
    changed = [p for p in targets if strip_outputs(p)]
    print(f"stripped outputs from {len(changed)} notebook(s)" + "".join(f"\n  {p}" for p in changed))
    return 0


def cmd_doctor(args) -> int:
    """Is this machine ready for the course? A table of checks, each red line with its fix."""
    from perflab import doctor

    started = time.perf_counter()
    lines = doctor.run(args.scale, seconds=args.seconds)
    print(doctor.render(lines, colour=sys.stdout.isatty()))
    print(f"(doctor took {time.perf_counter() - started:.0f} s)")
    return doctor.exit_code(lines)


def cmd_share(args) -> int:
    """An anonymous bundle of this machine's measurements for the instructor's class view."""
    from perflab import classview

    try:
        path = classview.share(args.out)
    except FileNotFoundError as exc:
        print(f"perflab share: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size:,} bytes, no name, host or path in it): send it to your instructor")
    return 0


def cmd_class(args) -> int:
    """A folder of shared bundles -> one page with, per claim, the distribution across the room."""
    from perflab import classview

    try:
        path = classview.class_page(args.folder, args.out)
    except FileNotFoundError as exc:
        print(f"perflab class: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perflab", description="Backend performance, measured live.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="start, stop and inspect the PostgreSQL/Redis servers")
    p.add_argument("action", choices=["up", "down", "status", "env", "workers", "stop-workers", "replica"])
    p.add_argument("replica_action", nargs="?", choices=["up", "down", "status"],
                   help="with replica: start, stop or inspect the read replica (default: status)")
    p.add_argument("--apply-delay-ms", type=int, default=None,
                   help="with replica up: the replica's recovery_min_apply_delay")
    p.add_argument("--docker", action="store_true", help="with env: the docker-compose stack's URLs")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("data", help="build or inspect the course data")
    p.add_argument("action", choices=["build", "status", "clean"])
    p.add_argument("--scale", choices=paths.SCALES)
    p.add_argument("--force", action="store_true", help="rebuild even if the current build is up to date")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("run", help="start the stack, build the data, execute the course, write the report")
    p.add_argument("--scale", choices=paths.SCALES)
    p.add_argument("notebooks", nargs="*")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("grade", help="grade a lab submission")
    p.add_argument("submission", nargs="?")
    p.add_argument("--lab", help="lab number, e.g. 01 (default: from the file name)")
    p.add_argument("--out", help="folder for results.json (default: build/grades/)")
    p.add_argument("--limit", action="append", metavar="NAME=N",
                   help="override a sandbox limit, e.g. address_space_mb=2048, cpu_seconds=300 (repeatable)")
    p.add_argument("--batch", metavar="DIR", help="grade every notebook under DIR: gradebook.csv, junit.xml, "
                   "feedback per submission (default --out: build/grades/batch)")
    p.add_argument("--jobs", type=int, default=None,
                   help="with --batch: submissions graded at once (default: one per two cores, fair to timed checks)")
    p.add_argument("--shard", metavar="I/N", help="with --batch: grade only every N-th submission from the I-th")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="merge the --out folders of batch shards into --out")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("labs", help="generate labs/ from solutions/")
    p.add_argument("--check", action="store_true", help="only check that labs/ is up to date")
    p.set_defaults(func=cmd_labs)

    p = sub.add_parser("bench", help="data build rate and topic 1's ratios at a scale")
    p.add_argument("--scale", choices=paths.SCALES)
    p.add_argument("--preset", default=None, choices=["fast", "default", "rigorous"])
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("proxy", help="run a latency proxy in front of a server until Ctrl-C")
    p.add_argument("--rtt-ms", type=float, required=True)
    p.add_argument("--target", choices=["postgres", "redis"], default="postgres")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("strip", help="remove outputs from notebooks before committing")
    p.add_argument("notebooks", nargs="*")
    p.set_defaults(func=cmd_strip)

    p = sub.add_parser("doctor", help="check this machine for the course: a green/red table with fixes")
    p.add_argument("--scale", choices=paths.SCALES, help="the scale whose disk need is checked (default: current)")
    p.add_argument("--seconds", type=float, default=20.0, help="calibration time (0: skip it)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("share", help="an anonymous bundle of your measurements for the class view")
    p.add_argument("--out", help="the bundle's file (default: build/share/perflab-share-<id>.json)")
    p.set_defaults(func=cmd_share)

    p = sub.add_parser("class", help="a folder of shared bundles -> a page with the room's distributions")
    p.add_argument("folder")
    p.add_argument("--out", help="the page (default: FOLDER/class.html)")
    p.set_defaults(func=cmd_class)
    return parser


def main(argv: list[str] | None = None) -> int:
    from perflab.datasets import DatasetError
    from perflab.stack import StackError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StackError, DatasetError) as exc:
        print(f"perflab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perflab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
