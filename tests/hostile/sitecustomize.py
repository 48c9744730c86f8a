"""Turns an honest SuperNode host into a hostile one, for the end-to-end attack tests.

A client host's operator controls every process on it; this file stands for that. Put this
folder on ``PYTHONPATH`` and set ``FEDGMA_HOSTILE`` (``;``-separated) for a SuperNode and the
ClientApp processes it starts:

- ``drip=S``: the SuperNode announces each reply, then pushes its objects one every S seconds;
- ``claim=N``: the ClientApp's training reply claims N examples;
- ``shift=D``: ... and its weights are the ones it trained plus D in every coordinate.

Without ``FEDGMA_HOSTILE`` nothing changes.
"""

import os
import sys
import time

_SPEC = dict(item.split("=", 1) for item in os.environ.get("FEDGMA_HOSTILE", "").split(";") if "=" in item)
_PROGRAM = os.path.basename(sys.argv[0]) if sys.argv else ""


def _drip(seconds: float) -> None:
    from flwr.supernode import start_client_internal as supernode

    push = supernode.push_object_contents_from_iterable

    def slowly(contents, push_object_fn, **kwargs):
        def each():
            for item in contents:
                time.sleep(seconds)
                yield item
        return push(each(), push_object_fn, **kwargs)

    supernode.push_object_contents_from_iterable = slowly


def _lie(claim: float | None, shift: float) -> None:
    import numpy as np
    from flwr.app import Array
    from flwr.clientapp.client_app import ClientApp

    call = ClientApp.__call__

    def lying(self, message, context):
        reply = call(self, message, context)
        if message.metadata.message_type == "train" and reply.has_content():
            if claim is not None:
                reply.content["metrics"]["num-examples"] = claim
            record = reply.content["arrays"]
            for name in list(record):
                value = record[name].numpy()
                if np.issubdtype(value.dtype, np.floating):
                    record[name] = Array((value + shift).astype(value.dtype))
        return reply

    ClientApp.__call__ = lying


if _SPEC and _PROGRAM == "flower-supernode" and "drip" in _SPEC:
    _drip(float(_SPEC["drip"]))
if _SPEC and _PROGRAM == "flwr-clientapp" and ("claim" in _SPEC or "shift" in _SPEC):
    _lie(float(_SPEC["claim"]) if "claim" in _SPEC else None, float(_SPEC.get("shift", 0.0)))
