"""``fedgma-superlink``: Flower 1.39's ``flower-superlink`` with a bound on Fleet API messages.

Flower 1.39 accepts gRPC messages of up to 2 GiB on the Fleet API and reads each one whole
before it checks who sent it, so anyone who reaches the Fleet port can make the SuperLink
hold hundreds of MiB per message (``fedgma bench --parts fleet`` measures it, with and
without this launcher, in docs/benchmarks.md). No option of 1.39 bounds it; its Fleet server takes the limit from a module constant. This
launcher sets that constant, then runs ``flower-superlink`` with the same arguments. gRPC then
refuses a larger message as soon as its length prefix arrives (``RESOURCE_EXHAUSTED``),
before buffering it.

Flower sends arrays in chunks of at most 5 MiB (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``), so
no honest Fleet message of any model size comes near the default bound of 32 MiB
(``FEDGMA_FLEET_MAX_MESSAGE_MB``). The bound applies to the Fleet API only.
"""

from __future__ import annotations

import importlib
import os
import sys

from flwr import __version__ as FLWR_VERSION

LIMIT_ENV = "FEDGMA_FLEET_MAX_MESSAGE_MB"
DEFAULT_LIMIT_MB = 32
_MODULE = "flwr.superlink.cli.flower_superlink"
_CONSTANT = "GRPC_MAX_MESSAGE_LENGTH"


def message_limit(environ: dict[str, str] | None = None) -> int:
    """The bound in bytes, from ``$FEDGMA_FLEET_MAX_MESSAGE_MB`` (a whole number of MiB >= 1)."""
    raw = (os.environ if environ is None else environ).get(LIMIT_ENV, str(DEFAULT_LIMIT_MB))
    try:
        megabytes = int(raw)
    except ValueError:
        megabytes = 0
    if megabytes < 1 or megabytes >= 2048:
        raise SystemExit(f"fedgma-superlink: {LIMIT_ENV} must be a whole number of MiB in [1, 2047], got {raw!r}")
    return megabytes << 20


def main() -> None:
    """Run ``flower-superlink`` (same arguments) with the Fleet API's message bound set."""
    limit = message_limit()
    module = importlib.import_module(_MODULE)
    if not FLWR_VERSION.startswith("1.39.") or not isinstance(getattr(module, _CONSTANT, None), int):
        raise SystemExit(
            f"fedgma-superlink: needs flwr 1.39 (the last release whose SuperNodes reach the SuperLink over "
            f"gRPC), found {FLWR_VERSION}: pip install 'fedgma[deploy]' (on 1.40+ use flower-superlink)"
        )
    setattr(module, _CONSTANT, limit)
    print(f"fedgma-superlink: Fleet API messages above {limit >> 20} MiB are refused", file=sys.stderr, flush=True)
    sys.argv[0] = "flower-superlink"
    module.flower_superlink()


if __name__ == "__main__":
    main()
