"""The ``fedgma`` command: every tool of the project, one subcommand each.

What the container image runs (``fedgma[deploy]``, :mod:`fedgma.deployment`)::

    fedgma superlink [flower-superlink options]   # flower-superlink, its Fleet API hardened
    fedgma compose register --superlink ... --ca ... --keys ... --supernodes N
    fedgma compose run --superlink ... --ca ... --run-config "..." --outputs /app/outputs

Research tools (``fedgma[lab]``, :mod:`fedgma.lab`): ``grid``, ``report``, ``probe``, ``toy``,
``bench``, ``demo`` (:mod:`fedgma.lab.commands`).

Each subcommand first checks what it needs; if this installation lacks it, it prints one line
and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys

from fedgma.deployment import compose
from fedgma.lab import commands as lab

DEPLOY_HINT = "pip install 'fedgma[deploy]'"


def superlink_problem() -> str | None:
    """What ``fedgma superlink`` needs and this installation lacks, in one line; None if nothing."""
    from flwr import __version__ as flwr_version

    if not flwr_version.startswith("1.39."):
        return (f"needs flwr 1.39 (the last release whose SuperNodes reach the SuperLink over gRPC), found "
                f"{flwr_version}: {DEPLOY_HINT} (on 1.40+ use flower-superlink)")
    if importlib.util.find_spec("grpc") is None:
        return f"needs grpcio, which the core install leaves out: {DEPLOY_HINT}"
    return None


def _superlink(argv: list[str]) -> int:
    problem = superlink_problem()
    if problem is not None:
        print(f"fedgma superlink: {problem}", file=sys.stderr)
        return 2
    from fedgma.deployment.superlink import main as superlink_main

    superlink_main(argv)
    return 0


def parser() -> argparse.ArgumentParser:
    """``fedgma``'s argument parser (``superlink`` passes its arguments to flower-superlink)."""
    from fedgma import __version__

    top = argparse.ArgumentParser(prog="fedgma", description="FedGMA on Flower: deployment and research tools")
    top.add_argument("--version", action="version", version=f"fedgma {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("superlink", add_help=False,
                        help="flower-superlink with its Fleet API hardened (message and call bounds, activation "
                             "bound to the node's key); every argument goes to flower-superlink")
    compose.configure(commands.add_parser("compose", help="the compose file's one-shot services: register the "
                                                          "SuperNodes' keys, submit and follow a run"))
    lab.configure(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["superlink"]:
        return _superlink(argv[1:])
    top = parser()
    args, extra = top.parse_known_args(argv)
    if extra and (args.command != "grid" or any(e.startswith("-") or "=" not in e for e in extra)):
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    # SIGTERM unwinds like Ctrl-C, so the SuperLinks, SuperNodes and simulations a tool started
    # are stopped by their context managers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.command == "compose":
            return compose.main(args)
        return lab.run(args, extra, top)
    except KeyboardInterrupt:  # the processes it started are stopped by now (their context managers)
        print(f"fedgma {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
