"""The compose file's one-shot ``control`` service: register SuperNodes, submit a run, report.

``python -m fedgma.deploy --superlink superlink:8000 --ca /certs/ca.crt --keys /keys
--supernodes 3 --run-config "num-server-rounds=3"`` waits for the SuperLink, registers
``/keys/supernode-I.pub`` for I < N (a key that is already registered is fine), submits this
app with ``flwr run``, follows it until ``finished:*``, prints the run's summary and exits 0
only if the run completed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from .launch import FlowerCli, flower_env, wait_for_http, write_connection

APP_DIR = Path(__file__).resolve().parent.parent


def parse_run_config(text: str) -> dict[str, object]:
    """``"a=1 b='x'"`` -> ``{"a": 1, "b": "x"}`` (values as Flower's --run-config reads them)."""
    import shlex
    import tomllib

    settings: dict[str, object] = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"fedgma.deploy: --run-config item {item!r} is not key=value")
        try:
            settings[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key] = value
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedgma.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink's Control API")
    parser.add_argument("--ca", type=Path, required=True, help="CA certificate of the SuperLink")
    parser.add_argument("--keys", type=Path, required=True, help="folder with supernode-I.pub")
    parser.add_argument("--supernodes", type=int, required=True)
    parser.add_argument("--run-config", default="", help="run settings, as for flwr run --run-config")
    parser.add_argument("--timeout", type=float, default=24 * 3600, help="seconds allowed for the run")
    parser.add_argument("--flwr-home", type=Path, default=Path("/tmp/flwr-home"))
    args = parser.parse_args(argv)

    settings = parse_run_config(args.run_config)
    env = flower_env(args.flwr_home)
    write_connection(args.flwr_home, "deployment", args.superlink, args.ca)
    cli = FlowerCli(env, "deployment")
    print(f"control: waiting for the SuperLink at {args.superlink}", flush=True)
    wait_for_http(f"https://{args.superlink}/health", 300, ca_file=args.ca)
    for i in range(args.supernodes):
        key = args.keys / f"supernode-{i}.pub"
        for attempt in range(1, 7):  # the Control API may answer /health before it takes requests
            result = subprocess.run(cli.command("supernode", "register", str(key), "deployment"),
                                    env=env, capture_output=True, text=True, errors="replace")
            output = (result.stdout + result.stderr).strip()
            if "registered successfully" in output or "already" in output.lower():
                print(f"control: registered {key}", flush=True)
                break
            print(f"control: registering {key} failed (attempt {attempt}): {output}", flush=True)
            time.sleep(5)
        else:
            print(f"control: could not register {key}", flush=True)
            return 1
    run_id = None
    for attempt in range(1, 7):
        try:
            run_id = cli.submit(APP_DIR, settings)
            break
        except RuntimeError as err:
            print(f"control: submitting the run failed (attempt {attempt}): {err}", flush=True)
            time.sleep(5)
    if run_id is None:
        return 1
    print(f"control: run {run_id} submitted with {settings}", flush=True)
    outcome = cli.wait(run_id, args.timeout, poll=5.0)
    print(f"control: run {run_id} {outcome.status} {outcome.details}", flush=True)
    logs = cli.logs(run_id)
    for line in logs.splitlines():
        if "FedGMA app:" in line or "OOD" in line:
            print(f"control: {line.strip()}", flush=True)
    return 0 if outcome.completed else 1


if __name__ == "__main__":
    sys.exit(main())
