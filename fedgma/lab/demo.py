"""The main job: FedGMA against FedAvg on Flower's simulation runtime.

``fedgma demo`` runs each strategy as a real ``flwr run`` of this app
(binary colored task, non-IID, 10 clients, 5 rounds by default) and prints the
out-of-distribution (OOD) and in-distribution (ID) accuracy per strategy.
Extra ``key=value`` arguments override run settings of ``pyproject.toml``; where the
data lives (``--data-dir``, ``--no-download``) and where outputs go (``--output-dir``)
are this machine's settings, given to the runtime, not run settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from fedgma.app.run_folder import RunFolder
from fedgma.app.settings import ConfigError, parse_run_config
from fedgma.deployment.app_folder import app_defaults, app_dir, parse_override, positive_count, positive_seconds
from fedgma.deployment.flower import HostSettings, SimulationRuntime

DEFAULT_ROUNDS = 5
CONTENDERS = {
    "FedGMA (ws)": {"strategy": "fedgma", "variant": "ws"},
    "FedAvg": {"strategy": "fedavg"},
}


def run_folder(output_root: Path, app: Path, run_config: dict[str, object]) -> RunFolder:
    """Where the ServerApp puts a run of ``app`` with ``run_config``:
    ``<output root>/<output-dir>/<run-name>`` (``output-dir``: the app's default unless set)."""
    return RunFolder.of_run(output_root, {"output-dir": app_defaults(app).get("output-dir", ""), **run_config})


def _run_name(strategy: dict[str, str]) -> str:
    return strategy["strategy"] + (f"-{strategy['variant']}" if "variant" in strategy else "")


def configure(parser: argparse.ArgumentParser) -> None:
    """``fedgma demo``'s options."""
    parser.add_argument("--clients", type=positive_count, default=10, help="simulated SuperNodes (default 10)")
    parser.add_argument("--rounds", type=positive_count, help=f"server rounds (default {DEFAULT_ROUNDS}; "
                        "num-server-rounds=N says the same)")
    parser.add_argument("--output-dir", type=Path, help="this machine's output root (default: outputs in the "
                        "app folder)")
    parser.add_argument("--data-dir", type=Path, help="data sets and cached partitions "
                        "(default: $FEDGMA_DATA_DIR, else ~/.cache/fedgma)")
    parser.add_argument("--no-download", action="store_true", help="never download a missing data set")
    parser.add_argument("--timeout", type=positive_seconds, default=1800, help="seconds allowed per run")
    parser.add_argument("overrides", nargs="*", type=parse_override, metavar="key=value",
                        help="run settings for both runs, e.g. partitioning=iid (docs/settings.md)")


def main(args: argparse.Namespace) -> int:
    """Run FedGMA and FedAvg, print their accuracies; 0 when both completed."""
    app = app_dir(getattr(args, "app", None))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    batch_dir = ((args.output_dir or app / "outputs") / f"demo-{stamp}").resolve()
    given = dict(args.overrides).get("num-server-rounds")
    if given is not None and args.rounds is not None and given != args.rounds:
        print(f"fedgma demo: num-server-rounds={given} and --rounds {args.rounds} disagree: give the rounds once",
              file=sys.stderr)
        return 2
    rounds = args.rounds if args.rounds is not None else given if given is not None else DEFAULT_ROUNDS
    settings = {
        "num-server-rounds": rounds,
        "min-nodes": min(2, args.clients),
        "task": "binary",
        "partitioning": "non-iid",
        **dict(args.overrides),
    }
    for strategy in CONTENDERS.values():  # a bad setting fails here, naming it, before any runtime starts
        try:
            parse_run_config({**app_defaults(app), **settings, **strategy})
        except ConfigError as err:
            print(f"fedgma demo: {err}", file=sys.stderr)
            return 2
    host = HostSettings(output_root=batch_dir, data_dir=args.data_dir,
                        download=False if args.no_download else None)
    print(f"FedGMA vs FedAvg: {args.clients} simulated clients, {rounds} rounds; "
          f"outputs in {batch_dir}", flush=True)
    summaries = {}
    with SimulationRuntime(batch_dir / "runtime", host) as runtime:
        for label, strategy in CONTENDERS.items():
            run_config = {**settings, **strategy, "run-name": _run_name(strategy)}
            folder = run_folder(batch_dir, app, run_config)
            shown = [0]

            def progress(label: str = label, folder: RunFolder = folder, shown: list[int] = shown) -> None:
                rows = folder.rows()
                for row in rows[shown[0]:]:
                    print(f"  {label:<12} round {row['round']:>3}/{rounds}: "
                          f"OOD acc {float(row['ood-accuracy']):.4f}  ID acc {float(row['id-accuracy']):.4f}  "
                          f"({float(row['wall-seconds']):.0f} s)", flush=True)
                shown[0] = len(rows)

            started = time.monotonic()
            run_id = runtime.cli.submit(
                app, run_config, f"num-supernodes={args.clients} client-resources-num-cpus=1"
            )
            print(f"{label}: run {run_id} started", flush=True)
            try:
                outcome = runtime.cli.wait(run_id, args.timeout, on_poll=progress)
            except TimeoutError as err:
                runtime.cli.stop_run(run_id)
                print(f"fedgma demo: {label}: {err} (--timeout {args.timeout:g}); stopped. SuperLink log: "
                      f"{runtime.workdir / 'superlink.log'}", file=sys.stderr)
                return 1
            progress()
            if not outcome.completed:
                print(f"{label}: run {run_id} ended {outcome.status} ({outcome.details}); "
                      f"SuperLink log: {runtime.workdir / 'superlink.log'}", file=sys.stderr)
                return 1
            summary = folder.read_summary()
            summary["seconds"] = time.monotonic() - started
            summaries[label] = summary
            dataset = folder.read_config()["dataset"]

    print()
    print(f"Colored {dataset}, {settings['task']} task, {settings['partitioning']} split, "
          f"{args.clients} clients, {rounds} rounds")
    print(f"{'strategy':<12} {'final OOD acc':>13} {'peak OOD acc':>12} {'final ID acc':>12} {'wall s':>7}")
    for label, s in summaries.items():
        print(f"{label:<12} {s['final-ood-accuracy']:>13.4f} {s['peak-ood-accuracy']:>12.4f} "
              f"{s['final-id-accuracy']:>12.4f} {s['seconds']:>7.1f}")
    folders = [run_folder(batch_dir, app, {**settings, **s, "run-name": _run_name(s)}).path
               for s in CONTENDERS.values()]
    print(f"Per-round metrics: {' and '.join(str(f / 'metrics.csv') for f in folders)}")
    return 0
