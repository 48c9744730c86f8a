"""The compose file's one-shot services: register the SuperNodes' keys, then submit a run.

``fedgma compose register --superlink 127.0.0.1:8000 --ca /certs/ca.crt --keys /keys
--supernodes 3`` waits for the SuperLink and registers ``/keys/supernode-I.pub`` for I < N (a key
that is already registered is fine). ``fedgma compose run --superlink 127.0.0.1:8000
--ca /certs/ca.crt --outputs /app/outputs --run-config "num-server-rounds=3"`` submits this app
with ``flwr run`` under a fixed ``run-name`` (``deploy-<UTC time>`` unless the run config names
one), follows it until ``finished:*``, prints the run's summary and exits 0 only if it completed.

A run whose ServerApp went away with the SuperLink (killed, e.g. at its memory limit, and
restarted with its ``--database``) ends ``finished:failed`` with Flower's "No heartbeat received
from the task"; ``run`` then waits for the SuperLink to answer again and submits the run once
more with ``resume=<run-name>``, which continues after its last checkpointed round, at most
``--max-resumes`` times, each attempt printed. A run that failed for its own reasons (a bad
setting, :class:`fedgma.loop.RunFailed`: Flower's "ServerApp failed with exception", or a failure
recorded in its checkpoint) is not retried. ``--outputs`` is the SuperLink's output root as this
process sees it (read-only is enough): with it, the checkpoint decides between resuming and
starting over and vetoes a retry of a run that recorded its own failure.

Both run inside the SuperLink's network namespace, so they reach its Control API on
127.0.0.1, which is not published anywhere (see the README's "Trust model").
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedgma.loop.atomic import atomic_write

from .app_folder import AppFolderNotFound, app_defaults, app_dir, parse_overrides, positive_seconds
from .flower import FlowerCli, flower_env, write_connection
from .processes import wait_for_http
from .resume import Attempt, checkpoint_state, decide

CONNECTION = "deployment"


def connect(args: argparse.Namespace) -> FlowerCli:
    """A ``flwr`` CLI for the SuperLink, once its Control API answers."""
    env = flower_env(args.flwr_home)
    write_connection(args.flwr_home, CONNECTION, args.superlink, args.ca)
    print(f"deploy: waiting for the SuperLink at {args.superlink}", flush=True)
    wait_for_http(health_url(args), 300, ca_file=args.ca)
    return FlowerCli(env, CONNECTION)


def health_url(args: argparse.Namespace) -> str:
    """The SuperLink's ``/health`` on its Control API."""
    return f"https://{args.superlink}/health"


def register(args: argparse.Namespace) -> int:
    """Register every SuperNode's public key (``supernode-I.pub`` holds partition I); 0 when all
    are registered. With ``--bindings``, write the node id each key got and its partition there
    (the ServerApp's ``FEDGMA_PARTITION_BINDINGS``): a key registered before keeps the binding
    the file has for it, and one the file does not know is an error."""
    cli = connect(args)
    known = read_bindings(args.bindings)
    bindings: dict[int, int] = {}
    for i in range(args.supernodes):
        key = args.keys / f"supernode-{i}.pub"
        for attempt in range(1, 7):  # the Control API may answer /health before it takes requests
            result = subprocess.run(cli.command("supernode", "register", str(key), CONNECTION),
                                    env=cli.env, capture_output=True, text=True, errors="replace")
            output = (result.stdout + result.stderr).strip()
            registered = REGISTERED.search(output)
            if registered or "already" in output.lower():
                print(f"deploy: registered {key}", flush=True)
                break
            print(f"deploy: registering {key} failed (attempt {attempt}): {output}", flush=True)
            time.sleep(5)
        else:
            print(f"deploy: could not register {key}", flush=True)
            return 1
        node = int(registered.group(1)) if registered else next((n for n, p in known.items() if p == i), None)
        if node is None and args.bindings is not None:
            print(f"deploy: {key} was registered before, and {args.bindings} does not say which node id it "
                  "got: its partition cannot be bound (remove the SuperLink's state to register afresh)", flush=True)
            return 1
        if node is not None:
            bindings[node] = i
    if args.bindings is not None:
        args.bindings.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.bindings, lambda f: f.write(json.dumps(
            {str(node): partition for node, partition in sorted(bindings.items())}, indent=1).encode()))
        print(f"deploy: node-to-partition bindings in {args.bindings}: {bindings}", flush=True)
    return 0


REGISTERED = re.compile(r"SuperNode (\d+) registered successfully")


def read_bindings(path: Path | None) -> dict[int, int]:
    """The bindings a previous ``register`` wrote (node id -> partition); empty if none."""
    if path is None or not path.is_file():
        return {}
    return {int(node): int(partition) for node, partition in json.loads(path.read_text()).items()}


def submit(cli: FlowerCli, app: Path, settings: dict[str, Any], tries: int = 6) -> int | None:
    """``flwr run`` of the app folder ``app`` with ``settings``; the run id, or None after
    ``tries`` refusals."""
    for attempt in range(1, tries + 1):
        try:
            return cli.submit(app, settings)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            print(f"deploy: submitting the run failed (try {attempt}): {err}", flush=True)
            time.sleep(5)
    return None


def follow(cli: FlowerCli, run_id: int, args: argparse.Namespace, deadline: float) -> Attempt:
    """Poll ``flwr ls`` until the run is ``finished:*``; while the SuperLink does not answer,
    wait for it (``--superlink-wait`` seconds at most).

    Raises
    ------
    TimeoutError
        When ``deadline`` (``time.monotonic()``) passes, or the SuperLink stays away.
    """
    lost, failures = False, 0
    while True:
        try:
            record = cli.status(run_id)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            failures += 1
            if lost and failures > 3 and "knows no run" in str(err):  # restarted without its --database
                return Attempt(run_id, "finished:failed", f"the restarted SuperLink does not know run {run_id}",
                               lost_contact=True)
            lost = True
            print(f"deploy: flwr ls failed ({' '.join(str(err).split())[:160]}); waiting up to "
                  f"{args.superlink_wait:.0f} s for the SuperLink to answer", flush=True)
            wait_for_http(health_url(args), args.superlink_wait, ca_file=args.ca)
            print("deploy: the SuperLink answers", flush=True)
            time.sleep(args.poll)
            continue
        failures = 0
        status = str(record.get("status", ""))
        if status.startswith("finished:"):
            return Attempt(run_id, status, str(record.get("status-details", "")), lost)
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {status} after --timeout {args.timeout:.0f} s")
        time.sleep(args.poll)


def default_run_name() -> str:
    """``deploy-<UTC time>``: the run's folder, fixed before the first submission so that a
    resume finds it."""
    return "deploy-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def run(args: argparse.Namespace) -> int:
    """Submit one run and follow it, resuming it after a lost SuperLink; 0 when it completed."""
    try:
        app = app_dir(args.app)
    except AppFolderNotFound as err:
        print(f"fedgma compose run: {err}", file=sys.stderr)
        return 2
    settings = dict(args.run_config)
    settings.setdefault("run-name", default_run_name())
    # Where the ServerApp puts the run: output-dir absent is the app's default.
    folder_settings = {"output-dir": app_defaults(app).get("output-dir", ""), **settings}
    cli = connect(args)
    deadline = time.monotonic() + args.timeout
    attempts = args.max_resumes + 1
    for number in range(1, attempts + 1):
        run_id = submit(cli, app, settings)
        if run_id is None:
            print("deploy: the SuperLink refused the run; giving up", flush=True)
            return 1
        print(f"deploy: attempt {number} of {attempts}: run {run_id} submitted with {settings}", flush=True)
        try:
            attempt = follow(cli, run_id, args, deadline)
        except TimeoutError as err:
            print(f"deploy: {err}; giving up", flush=True)
            return 1
        print(f"deploy: run {run_id} {attempt.status} {attempt.details}", flush=True)
        step = decide(attempt, checkpoint_state(args.outputs, {**folder_settings, **settings}), attempts - number)
        print(f"deploy: {step.reason}", flush=True)
        if step.action == "done":
            summarize(cli, run_id)
            return 0
        if step.action == "give-up":
            summarize(cli, run_id)
            return 1
        if step.action == "resume":
            settings["resume"] = settings.get("resume") or settings["run-name"]
    return 1  # not reached: the last attempt has no resume left


def summarize(cli: FlowerCli, run_id: int) -> None:
    """Print the run's summary lines (accuracies, outputs) from its log."""
    try:
        text = cli.logs(run_id)
    except subprocess.TimeoutExpired:
        print(f"deploy: could not read the log of run {run_id}", flush=True)
        return
    for line in text.splitlines():
        if "FedGMA app:" in line or "OOD" in line:
            print(f"deploy: {line.strip()}", flush=True)


def configure(parser: argparse.ArgumentParser) -> None:
    """``fedgma compose register|run``'s options (:mod:`fedgma.cli`)."""
    actions = parser.add_subparsers(dest="action", required=True)
    for name, handler, help_text in (("register", register, "register the SuperNodes' public keys"),
                                     ("run", run, "submit a run and follow it to its end")):
        action = actions.add_parser(name, help=help_text)
        action.set_defaults(handler=handler)
        action.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink's Control API")
        action.add_argument("--ca", type=Path, required=True, help="CA certificate of the SuperLink")
        action.add_argument("--flwr-home", type=Path, default=Path("/tmp/flwr-home"))
        if name == "register":
            action.add_argument("--keys", type=Path, required=True, help="folder with supernode-I.pub")
            action.add_argument("--supernodes", type=int, required=True)
            action.add_argument("--bindings", type=Path, default=None,
                                help="write {node id: partition} here, for the ServerApp's "
                                     "FEDGMA_PARTITION_BINDINGS")
        else:
            action.add_argument("--app", type=Path, default=None,
                                help="the Flower app folder to submit (default: the source checkout, else "
                                     "the current directory)")
            action.add_argument("--run-config", type=parse_overrides, default="",
                                help="run settings, as for flwr run --run-config")
            action.add_argument("--timeout", type=positive_seconds, default=24 * 3600,
                                help="seconds allowed for the run, resumes included")
            action.add_argument("--outputs", type=Path, default=None,
                                help="the SuperLink's output root as seen here (read-only is enough): the "
                                     "run's checkpoint then decides between resuming and starting over")
            action.add_argument("--max-resumes", type=int, default=3,
                                help="resubmissions after the ServerApp was lost with the SuperLink (default 3)")
            action.add_argument("--superlink-wait", type=positive_seconds, default=600,
                                help="seconds to wait for a SuperLink that went away to answer again")
            action.add_argument("--poll", type=float, default=5.0, help="seconds between flwr ls calls")


def main(args: argparse.Namespace) -> int:
    """``fedgma compose ...``: the chosen action."""
    return int(args.handler(args))
