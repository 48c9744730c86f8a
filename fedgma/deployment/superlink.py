"""``fedgma superlink``: Flower 1.39's ``flower-superlink`` with three fixes to its gRPC Fleet API.

This launcher applies the fixes below to the ``flower-superlink`` module, then runs it with the
same arguments. Each fix is a named function here; all three apply to the Fleet API only (not to
the Control, ServerAppIo or SuperExec APIs). Paths are under ``flwr/`` of flwr 1.39.0.

1. **Message bound** (:func:`bound_messages`). 1.39 accepts gRPC messages of up to 2 GiB on the
   Fleet API (``supercore/grpc.py:30``, ``GRPC_MAX_MESSAGE_LENGTH``, read by
   ``superlink/cli/flower_superlink.py:599`` and ``:632``) and reads each one whole before it
   checks who sent it, so anyone who reaches the Fleet port can make the SuperLink hold hundreds
   of MiB per message (``fedgma bench --parts fleet`` measures it, with and without this launcher,
   in docs/benchmarks.md). No option of 1.39 bounds it; the fix sets the module constant. gRPC
   then refuses a larger message as soon as its length prefix arrives (``RESOURCE_EXHAUSTED``),
   before buffering it. The default bound, 8 MiB (``$FEDGMA_FLEET_MAX_MESSAGE_MB``), is derived
   from the largest message an honest SuperNode sends or receives: Flower cuts every array into
   ``ArrayChunk`` objects of at most 5 MiB (``common/constant.py:161``,
   ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`` = 5,242,880 bytes), one object per ``PushObject`` /
   ``PullObject`` call, and the largest such message (a full chunk with its node, run id and
   object id; ``fedgma.lab.bench.fleet.largest_honest_message``) is 5,242,995 bytes, i.e. 5 MiB +
   115 bytes, whatever the model's size. The other 3 MiB are headroom for the object tree of a
   ``PushMessages`` call (about 70 bytes per object: 3 MiB lists some 45,000 chunks, a 220 GiB
   model) and for the app bundle that ``GetFab`` sends (the bound applies to what the SuperLink
   sends too). Records that Flower does not chunk (a ``ConfigRecord`` or ``MetricRecord`` value)
   must stay under the bound; FedGMA's are a few KiB.

2. **Activation bound to the caller's key** (:func:`bind_activation`). 1.39's
   ``server/superlink/fleet/grpc_rere/node_auth_server_interceptor.py`` verifies the signed
   timestamp against whatever public key the call's metadata carries (lines 85-101) and skips the
   node check for ``RegisterNodeFleetRequest`` and ``ActivateNodeRequest`` (line 121), and
   ``server/superlink/fleet/grpc_rere/fleet_servicer.py:106`` (``ActivateNode``) looks the node up
   by ``request.public_key`` (``message_handler.py:87``). So anyone can sign with a fresh key an
   ``ActivateNodeRequest`` that carries a registered SuperNode's public key and activate that node;
   the real SuperNode then exits with code 305. The fix (:class:`KeyBoundNodeAuthInterceptor`,
   used in place of ``NodeAuthServerInterceptor`` at ``flower_superlink.py:230``) refuses, with
   ``UNAUTHENTICATED`` and a log line, a ``RegisterNode`` or ``ActivateNode`` call whose body key
   differs from the key that signed the call: the one-line check that Flower 1.42's HTTP Fleet
   router has (``superlink/routers/fleet/node_auth.py``). See docs/flower-grpc-activation.md.

3. **Concurrent calls** (:func:`bound_concurrent_calls`). 1.39 builds the Fleet server with
   ``generic_create_grpc_server(max_concurrent_workers=1000)`` (``supercore/grpc.py:104``): 1,000
   threads and up to 1,000 calls in progress, each holding its message (deserialized before the
   node check), so a flood of concurrent messages under the bound still adds up. The fix passes
   ``$FEDGMA_FLEET_MAX_CONCURRENT_CALLS`` (default 64) as ``max_concurrent_workers`` of the Fleet
   server: gRPC answers a call beyond it with ``RESOURCE_EXHAUSTED`` ("Concurrent RPC limit
   exceeded!") without reading its message (``grpc/_server.py``, ``_reject_rpc``), so the Fleet
   API holds at most that many messages at once. An honest SuperNode has at most 3 Fleet calls in
   flight (its main loop, which pulls or pushes up to ``FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES`` /
   ``..._PULLS`` = 2 objects at a time, and its heartbeat), and most calls last milliseconds; a
   call refused under load costs that SuperNode its reply for the round (its retry policy gives up
   on ``RESOURCE_EXHAUSTED``). Raise the bound for federations of more than about 20 SuperNodes.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from logging import WARNING
from types import ModuleType
from typing import Any

from flwr import __version__ as FLWR_VERSION

LIMIT_ENV = "FEDGMA_FLEET_MAX_MESSAGE_MB"
DEFAULT_LIMIT_MB = 8
CALLS_ENV = "FEDGMA_FLEET_MAX_CONCURRENT_CALLS"
DEFAULT_CALLS = 64
_MODULE = "flwr.superlink.cli.flower_superlink"
_CONSTANT = "GRPC_MAX_MESSAGE_LENGTH"
_INTERCEPTOR = "NodeAuthServerInterceptor"
_SERVER_FACTORY = "generic_create_grpc_server"
KEY_MISMATCH = "Public key in the request does not match the key that signed it"


def _whole_number(environ: dict[str, str] | None, name: str, default: int, low: int, high: int, unit: str) -> int:
    raw = (os.environ if environ is None else environ).get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise SystemExit(f"fedgma superlink: {name} must be a whole number of {unit} in [{low}, {high}], got {raw!r}")
    return value


def message_limit(environ: dict[str, str] | None = None) -> int:
    """The message bound in bytes, from ``$FEDGMA_FLEET_MAX_MESSAGE_MB`` in ``environ`` (default
    ``os.environ``): a whole number of MiB in [1, 2047], 8 when unset."""
    return _whole_number(environ, LIMIT_ENV, DEFAULT_LIMIT_MB, 1, 2047, "MiB") << 20


def call_limit(environ: dict[str, str] | None = None) -> int:
    """The bound on concurrent Fleet calls, from ``$FEDGMA_FLEET_MAX_CONCURRENT_CALLS`` in
    ``environ`` (default ``os.environ``): a whole number in [1, 1000], 64 when unset (Flower's: 1000)."""
    return _whole_number(environ, CALLS_ENV, DEFAULT_CALLS, 1, 1000, "calls")


def bound_messages(module: ModuleType, limit: int) -> None:
    """Fix 1: set the Fleet server's message bound (the module constant its two Fleet servers read)."""
    setattr(module, _CONSTANT, limit)


def bound_concurrent_calls(module: ModuleType, calls: int) -> None:
    """Fix 3: build the Fleet servers with ``max_concurrent_workers=calls`` (threads and calls in progress).

    ``flower_superlink`` calls ``generic_create_grpc_server`` (its own import) for the Fleet
    servers only (``flower_superlink.py:596`` and ``:629``), without ``max_concurrent_workers``.
    """
    create: Callable[..., Any] = getattr(module, _SERVER_FACTORY)

    def create_bounded(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("max_concurrent_workers", calls)
        return create(*args, **kwargs)

    setattr(module, _SERVER_FACTORY, create_bounded)


def _key_bound_interceptor(base: type) -> type:
    import grpc
    from flwr.proto.fleet_pb2 import ActivateNodeRequest, RegisterNodeFleetRequest
    from flwr.supercore import log

    class KeyBoundNodeAuthInterceptor(base):  # type: ignore[misc]
        """Flower's ``NodeAuthServerInterceptor`` that also refuses a ``RegisterNode`` or
        ``ActivateNode`` call whose body's public key is not the key that signed the call."""

        def _wrap_method_handler(self, method_handler: grpc.RpcMethodHandler,
                                 received_public_key: bytes) -> grpc.RpcMethodHandler:
            handler = super()._wrap_method_handler(method_handler, received_public_key)
            checked = handler.unary_unary

            def check_key(request: Any, context: grpc.ServicerContext) -> Any:
                if (isinstance(request, (RegisterNodeFleetRequest, ActivateNodeRequest))
                        and request.public_key != received_public_key):
                    log(WARNING, "[fedgma superlink] refused %s: %s (peer %s)", type(request).__name__,
                        KEY_MISMATCH, context.peer())
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, KEY_MISMATCH)
                return checked(request, context)

            return grpc.unary_unary_rpc_method_handler(check_key, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)

    return KeyBoundNodeAuthInterceptor


def bind_activation(module: ModuleType) -> None:
    """Fix 2: use :class:`KeyBoundNodeAuthInterceptor` in place of Flower's node-auth interceptor."""
    setattr(module, _INTERCEPTOR, _key_bound_interceptor(getattr(module, _INTERCEPTOR)))


def patched_module(limit: int, calls: int) -> ModuleType:
    """``flwr.superlink.cli.flower_superlink`` with the three fixes applied.

    Raises
    ------
    SystemExit
        If flwr is not 1.39 or the module lacks what the fixes replace.
    """
    module = importlib.import_module(_MODULE)
    if not FLWR_VERSION.startswith("1.39.") or not (
        isinstance(getattr(module, _CONSTANT, None), int)
        and isinstance(getattr(module, _INTERCEPTOR, None), type)
        and callable(getattr(module, _SERVER_FACTORY, None))
    ):
        raise SystemExit(
            f"fedgma superlink: needs flwr 1.39 (the last release whose SuperNodes reach the SuperLink over "
            f"gRPC), found {FLWR_VERSION}: pip install 'fedgma[deploy]' (on 1.40+ use flower-superlink)"
        )
    bound_messages(module, limit)
    bind_activation(module)
    bound_concurrent_calls(module, calls)
    return module


def main(argv: list[str]) -> None:
    """Run ``flower-superlink`` with the arguments ``argv`` and the three Fleet API fixes applied."""
    limit, calls = message_limit(), call_limit()
    module = patched_module(limit, calls)
    print(f"fedgma superlink: Fleet API messages above {limit >> 20} MiB are refused, at most {calls} Fleet "
          "calls run at once, and a node is activated only by its own key", file=sys.stderr, flush=True)
    sys.argv = ["flower-superlink", *argv]
    module.flower_superlink()
