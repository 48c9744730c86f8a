"""The research subcommands of ``fedgma`` (:mod:`fedgma.cli`): experiment grids, their reports,
the colour probe, the toy figure, benchmarks and the demo.

::

    fedgma grid run full            # run (or resume) a named grid
    fedgma grid status full         # which runs are finished
    fedgma grid reproduce full --runs A,B   # rerun committed runs elsewhere; compare their metrics
    fedgma probe results/full       # what its 10-class models learned: shape or colour
    fedgma report results/full --readme README.md --readme docs/experiments.md --figures docs/figures
    fedgma report results/when --readme README.md --readme docs/experiments.md --figures docs/figures
    fedgma toy docs/figures/sewn-optima.png
    fedgma bench --parts imports --before 35abdab
    fedgma demo --rounds 10
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedgma.app.config import check_device
from fedgma.app.settings import ConfigError, parse_run_config
from fedgma.deployment.app_folder import AppFolderNotFound, app_defaults, app_dir, parse_override
from fedgma.deployment.flower import RAY_ADDRESS_ENV, HostSettings, SimulationResources

from .bench_parts import BENCH_PARTS, QUICK_PARTS, README_BLOCKS
from .experiments.grids import GRID_SUMMARIES

# What the research tools need beyond the core (flwr, NumPy): the app and lab extras ...
LAB_MODULES = ("torch", "torchvision", "flwr_datasets", "matplotlib", "scipy")
# ... and, for the commands that run this repository's Flower app, its folder (``--app``, else a clone).
NEEDS_APP_FOLDER = frozenset({"grid", "bench", "probe", "demo", "settings"})
COMMANDS = ("grid", "report", "probe", "toy", "bench", "demo", "settings")


def missing_requirement(command: str, app: Path | None = None) -> str | None:
    """What ``fedgma <command>`` needs and this installation lacks, in one line; None if nothing."""
    missing = [name for name in LAB_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return f"needs {', '.join(missing)}, which the core install leaves out: pip install 'fedgma[lab]'"
    if command in NEEDS_APP_FOLDER:
        try:
            app_dir(app)
        except AppFolderNotFound as err:
            return str(err)
    return None

if TYPE_CHECKING:
    from .experiments.runner import GridRunner


def _grid(args: argparse.Namespace) -> int:
    from .experiments.grids import grid_by_name
    from .experiments.runner import GridMismatch, GridRunner

    try:
        grid = grid_by_name(args.name)
        grid = grid.uncut() if args.uncut else grid
    except KeyError as err:
        print(f"fedgma grid: {err.args[0]}", file=sys.stderr)
        return 2
    results_dir = args.results_dir or Path("results") / grid.name
    overrides = dict(args.overrides)
    only = None
    if args.runs and args.action != "reproduce":  # reproduce reads --runs itself
        names = [spec.name for spec in grid.runs]
        only = names if args.runs == "all" else [n for n in args.runs.split(",") if n]
        unknown = [n for n in only if n not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=3)
            print(f"fedgma grid: grid {grid.name} has no run {', '.join(unknown)}"
                  f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}; "
                  f"fedgma grid status {grid.name} --runs all lists them", file=sys.stderr)
            return 2
    try:
        device = None if args.device is None else check_device(args.device, where="--device")
        data = HostSettings(data_dir=args.data_dir, download=False if args.no_download else None, device=device)
        address = args.ray_address if args.ray_address is not None else os.environ.get(RAY_ADDRESS_ENV) or "local"
        resources = SimulationResources(ray_address=address,
                                        client_cpus=args.client_cpus, client_gpus=args.client_gpus)
        runner = GridRunner(grid, results_dir, overrides, run_timeout=args.run_timeout, data=data, app=args.app,
                            jobs=args.jobs, resources=resources)
    except (ValueError, ConfigError) as err:
        print(f"fedgma grid: {err}", file=sys.stderr)
        return 2
    try:
        if args.action == "status":
            status = runner.status()
            if only is not None:
                for spec, finished in status:
                    if spec.name in only:
                        print(f"{'done' if finished else '    '}  {spec.name}")
            else:  # one line per setting: a grid may hold hundreds of runs (--runs names them)
                by_setting: dict[str, list[bool]] = {}
                for spec, finished in status:
                    by_setting.setdefault(spec.setting, []).append(finished)
                width = max(map(len, by_setting))
                for setting, flags in by_setting.items():
                    print(f"  {setting:<{width}}  {sum(flags):>3}/{len(flags)} finished")
            done = sum(finished for _, finished in status)
            where = "" if runner.results_dir.is_dir() else " (a folder that does not exist: nothing has run there)"
            print(f"grid {grid.name}: {done}/{len(status)} runs finished in {runner.results_dir}{where}")
            if grid.cut:
                print(f"grid {grid.name}: {len(grid.cut)} more runs were planned and cut to fit the grid's budget "
                      "of machine time (docs/experiments.md says which; --uncut counts and runs them too)")
            left = runner.time_left(status)
            if left is not None and left.runs:
                print(f"grid {grid.name}: {left.format()}")
            return 0
        if args.action == "reproduce":
            return _reproduce(args, runner)
        return 1 if runner.run(only) else 0
    except (ConfigError, GridMismatch) as err:
        print(f"fedgma grid: {err}", file=sys.stderr)
        return 2


def _reproduce(args: argparse.Namespace, committed: GridRunner) -> int:
    """Rerun the named finished runs into a scratch folder with this code; 0 if every one's
    metrics equal the committed ones (timing columns aside)."""
    import dataclasses
    import tempfile

    from .experiments.runner import GridRunner, metrics_differences

    names = [n for n in (args.runs or "").split(",") if n]
    known = {spec.name: spec for spec in committed.grid.runs}
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        print(f"fedgma grid reproduce: name finished runs of grid {committed.grid.name} with --runs "
              f"(unknown: {', '.join(unknown) or 'none given'})", file=sys.stderr)
        return 2
    if not all(committed.is_finished(known[n]) for n in names):
        print(f"fedgma grid reproduce: not every run named is finished in {committed.results_dir}", file=sys.stderr)
        return 2
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="fedgma-reproduce-"))
    subset = dataclasses.replace(committed.grid, runs=tuple(known[n] for n in names))
    rerun = GridRunner(subset, scratch, committed.overrides, run_timeout=committed.run_timeout,
                       data=committed.host, app=committed.app, jobs=committed.jobs, resources=committed.resources)
    if rerun.run():
        return 1
    failed = 0
    for name in names:
        differences = metrics_differences(committed.folder(known[name]), rerun.folder(known[name]))
        failed += bool(differences)
        verdict = "identical (every column but the timings)" if not differences else "DIFFERS"
        print(f"{name}: {verdict}")
        for line in differences[:10]:
            print(f"    {line}")
    print(f"grid {committed.grid.name}: {len(names) - failed} of {len(names)} runs reproduced in {scratch}")
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from .experiments.report import write_report

    if not args.results_dir.is_dir():
        print(f"fedgma report: {args.results_dir} is not a folder of grid results (fedgma grid run NAME "
              "makes results/NAME)", file=sys.stderr)
        return 2

    try:
        write_report(args.results_dir, figures_dir=args.figures, readme=args.readme, markdown=args.markdown)
    except (OSError, ValueError) as err:  # e.g. a --readme without the blocks to replace
        print(f"fedgma report: {err}", file=sys.stderr)
        return 2
    return 0


def _probe(args: argparse.Namespace) -> int:
    from fedgma.app.config import data_source

    from .experiments.colour_probe import probe_grid

    environ = HostSettings(data_dir=args.data_dir, download=False if args.no_download else None).environment()
    source = data_source(environ={**os.environ, **environ})
    probed = probe_grid(args.results_dir, source, app=args.app, reruns=args.reruns)
    print(f"fedgma probe: {probed} 10-class runs with a final model probed in {args.results_dir}")
    return 0 if probed else 1


def _toy(args: argparse.Namespace) -> int:
    from .experiments.toy import main as toy_main

    return toy_main(args.output)


def _bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    parts = tuple(p.strip() for p in args.parts.split(",")) if args.parts else None
    return bench_main(None if args.no_write else args.output, quick=args.quick, parts=parts,
                      readme=None if args.no_write else args.readme, before=args.before, app=args.app)


def _settings(args: argparse.Namespace) -> int:
    from .settings_files import write_settings_files

    stale = write_settings_files(app_dir(args.app), check=args.check)
    for path in stale:
        print(f"fedgma settings: {path} {'is stale' if args.check else 'rewritten'}")
    return 1 if args.check and stale else 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args)


APP_HELP = "the Flower app folder to run (default: the source checkout, else the current directory)"


def configure(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the research subcommands to ``fedgma``'s parser."""

    grid = commands.add_parser("grid", help="run or inspect a named experiment grid")
    grid.add_argument("action", choices=("run", "status", "reproduce"),
                      help="run: make the grid's missing runs (an interrupted run resumes) | status: finished runs "
                           "per setting and the time left | reproduce: rerun finished runs, compare their metrics")
    grid.add_argument("name", help=" | ".join(f"{name} ({what})" for name, what in GRID_SUMMARIES.items()))
    grid.add_argument("--results-dir", type=Path, help="default: results/<name>")
    grid.add_argument("--run-timeout", type=float, default=3600.0, help="seconds allowed per run")
    grid.add_argument("--data-dir", type=Path, help="data sets and cached partitions "
                      "(default: $FEDGMA_DATA_DIR, else ~/.cache/fedgma)")
    grid.add_argument("--no-download", action="store_true", help="never download a missing data set")
    grid.add_argument("--runs", help="comma-separated run names (or all): run, or show the status of, only "
                      "these; reproduce: the finished runs to rerun")
    grid.add_argument("--uncut", action="store_true", help="run or count the whole plan, with the runs cut to "
                      "fit the grid's budget of machine time (docs/experiments.md names them)")
    grid.add_argument("--scratch", type=Path, help="reproduce: where the reruns go (default: a new temp folder)")
    grid.add_argument("--jobs", type=int, default=1,
                      help="run: runs at once, each its own simulation; the machine's cores are split between them "
                           "(a private Ray per run only; default: 1)")
    grid.add_argument("--ray-address", help="run: the Ray that runs the clients: local (a private Ray per run), auto "
                      "(Ray's own search: the cluster `ray start` recorded here, else any Ray running here, another "
                      "user's too; prefer HOST:PORT) or HOST:PORT of a cluster's head (default: $RAY_ADDRESS, "
                      "else local)")
    grid.add_argument("--client-cpus", type=int, default=1,
                      help="run: CPUs each simulated client reserves (default: 1)")
    grid.add_argument("--client-gpus", type=float, default=0.0,
                      help="run: GPUs (or a fraction of one) each simulated client reserves; 0: none")
    grid.add_argument("--device", help="run: where the clients of a private Ray train: auto | cpu | cuda | cuda:N "
                      "(default: $FEDGMA_DEVICE, else auto: CUDA when the client was given a GPU); on a cluster, "
                      "each host's `ray start` environment sets it")
    grid.add_argument("--app", type=Path, help=APP_HELP)
    grid.add_argument("overrides", nargs="*", type=parse_override, metavar="key=value",
                      help="run settings for every run, e.g. dataset=mnist")
    grid.set_defaults(func=_grid)

    report = commands.add_parser(
        "report", help="tables and plots from a grid's results.csv",
        description="Write a grid's report (markdown tables, verdicts, figures) from its finished runs. "
                    "By default it rewrites <results_dir>/report.md and <results_dir>/figures: for the "
                    "committed results/full and results/when, that regenerates tracked files (unchanged "
                    "if the runs are); --markdown and --figures write elsewhere.")
    report.add_argument("results_dir", type=Path, help="a grid's results folder (e.g. results/when): its "
                        "grid.json, results.csv and runs/")
    report.add_argument("--figures", type=Path, help="PNG directory (default: <results_dir>/figures)")
    report.add_argument("--readme", type=Path, action="append",
                        help="replace the grid's generated blocks of this markdown file (repeatable)")
    report.add_argument("--markdown", type=Path, help="markdown file (default: <results_dir>/report.md)")
    report.set_defaults(func=_report)

    probe = commands.add_parser("probe", help="shape or colour: the 10-class final models on test images "
                                              "painted in another class's training colours")
    probe.add_argument("results_dir", type=Path, help="a grid's results folder whose 10-class runs kept "
                       "their final model")
    probe.add_argument("--data-dir", type=Path, help="data sets (default: $FEDGMA_DATA_DIR, else ~/.cache/fedgma)")
    probe.add_argument("--no-download", action="store_true", help="never download a missing data set")
    probe.add_argument("--app", type=Path, help="the Flower app folder whose default settings complete old "
                       "runs' config.json (default: the source checkout, else the current directory)")
    probe.add_argument("--reruns", type=Path, help="a `fedgma grid reproduce --scratch` folder: its final models "
                       "stand in for missing ones where its metrics equal the run's (the same model)")
    probe.set_defaults(func=_probe)

    toy = commands.add_parser("toy", help="the 'sewn optima' toy figure (FedAvg vs FedGMA on 2-D losses)")
    toy.add_argument("output", type=Path, nargs="?", default=Path("docs/figures/sewn-optima.png"),
                     help="the figure to write (default: docs/figures/sewn-optima.png)")
    toy.set_defaults(func=_toy)

    # key=value settings may also follow the options (argparse stops at them otherwise).
    bench = commands.add_parser("bench", help="aggregation time, memory and payload against FedAvg; round "
                                              "times simulated and deployed")
    bench.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"),
                       help="the file whose tables are rewritten (default: docs/benchmarks.md)")
    bench.add_argument("--no-write", action="store_true", help="print only")
    bench.add_argument("--readme", type=Path, help=f"also rewrite the {', '.join(README_BLOCKS)} tables of this "
                                                   "README (where it has their markers)")
    bench.add_argument("--quick", action="store_true",
                       help=f"{', '.join(QUICK_PARTS)}; P = 1M, K in {{10, 50}}")
    bench.add_argument("--parts", help=f"comma-separated subset of: {', '.join(BENCH_PARTS)} (default: all; "
                                       "only their tables are rewritten)")
    # The revision docs/benchmarks.md's imports table was measured against (scripts/bench.sh
    # passes it): the last commit before the round loop polled for replies itself and the
    # library packages imported lazily.
    bench.add_argument("--before", metavar="REVISION",
                       help="imports: also measure this git revision of the checkout (e.g. 35abdab)")
    bench.add_argument("--app", type=Path, help=APP_HELP)
    bench.set_defaults(func=_bench)

    settings = commands.add_parser("settings", help="write (or --check) the files made from the settings table: "
                                                    "pyproject.toml's [tool.flwr.app.config] and docs/settings.md")
    settings.add_argument("--check", action="store_true", help="only say which file is stale (exit 1 if any)")
    settings.add_argument("--app", type=Path, help="the source checkout (default: this one, else the current "
                                                   "directory)")
    settings.set_defaults(func=_settings)

    demo = commands.add_parser("demo", help="FedGMA against FedAvg on Flower's simulation runtime (the main job)")
    from .demo import configure as configure_demo

    configure_demo(demo)
    demo.add_argument("--app", type=Path, help=APP_HELP)
    demo.set_defaults(func=_demo)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    """Check what ``args.command`` needs, then run it (``extra``: grid's trailing key=value)."""

    problem = missing_requirement(args.command, getattr(args, "app", None))
    if problem is not None:
        print(f"fedgma {args.command}: {problem}", file=sys.stderr)
        return 2
    if args.command == "grid":
        args.overrides = list(args.overrides) + [parse_override(e) for e in extra]
        try:  # a bad key=value is reported before anything starts
            parse_run_config({**app_defaults(app_dir(args.app)), **dict(args.overrides)})
        except ConfigError as err:
            print(f"fedgma grid: {err}", file=sys.stderr)
            return 2
    return int(args.func(args))
