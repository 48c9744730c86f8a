"""The compose file's one-shot services: register the SuperNodes' keys, then submit a run.

``python -m fedgma.lab.deploy register --superlink 127.0.0.1:8000 --ca /certs/ca.crt --keys /keys
--supernodes 3`` waits for the SuperLink and registers ``/keys/supernode-I.pub`` for I < N (a key
that is already registered is fine). ``python -m fedgma.lab.deploy run --superlink 127.0.0.1:8000
--ca /certs/ca.crt --run-config "num-server-rounds=3"`` submits this app with ``flwr run``,
follows it until ``finished:*``, prints the run's summary and exits 0 only if it completed.

Both run inside the SuperLink's network namespace, so they reach its Control API on
127.0.0.1, which is not published anywhere (see the README's "Trust model").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from .launch import FlowerCli, flower_env, wait_for_http, write_connection
from .project import app_dir, parse_overrides

CONNECTION = "deployment"


def connect(args: argparse.Namespace) -> FlowerCli:
    """A ``flwr`` CLI for the SuperLink, once its Control API answers."""
    env = flower_env(args.flwr_home)
    write_connection(args.flwr_home, CONNECTION, args.superlink, args.ca)
    print(f"deploy: waiting for the SuperLink at {args.superlink}", flush=True)
    wait_for_http(f"https://{args.superlink}/health", 300, ca_file=args.ca)
    return FlowerCli(env, CONNECTION)


def register(args: argparse.Namespace) -> int:
    """Register every SuperNode's public key; 0 when all are registered."""
    cli = connect(args)
    for i in range(args.supernodes):
        key = args.keys / f"supernode-{i}.pub"
        for attempt in range(1, 7):  # the Control API may answer /health before it takes requests
            result = subprocess.run(cli.command("supernode", "register", str(key), CONNECTION),
                                    env=cli.env, capture_output=True, text=True, errors="replace")
            output = (result.stdout + result.stderr).strip()
            if "registered successfully" in output or "already" in output.lower():
                print(f"deploy: registered {key}", flush=True)
                break
            print(f"deploy: registering {key} failed (attempt {attempt}): {output}", flush=True)
            time.sleep(5)
        else:
            print(f"deploy: could not register {key}", flush=True)
            return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Submit one run and follow it; 0 when it completed."""
    settings = args.run_config
    cli = connect(args)
    run_id = None
    for attempt in range(1, 7):
        try:
            run_id = cli.submit(app_dir(), settings)
            break
        except RuntimeError as err:
            print(f"deploy: submitting the run failed (attempt {attempt}): {err}", flush=True)
            time.sleep(5)
    if run_id is None:
        return 1
    print(f"deploy: run {run_id} submitted with {settings}", flush=True)
    outcome = cli.wait(run_id, args.timeout, poll=5.0)
    print(f"deploy: run {run_id} {outcome.status} {outcome.details}", flush=True)
    for line in cli.logs(run_id).splitlines():
        if "FedGMA app:" in line or "OOD" in line:
            print(f"deploy: {line.strip()}", flush=True)
    return 0 if outcome.completed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedgma.lab.deploy", description=__doc__.splitlines()[0])
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
        else:
            action.add_argument("--run-config", type=parse_overrides, default="",
                                help="run settings, as for flwr run --run-config")
            action.add_argument("--timeout", type=float, default=24 * 3600, help="seconds allowed for the run")
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
