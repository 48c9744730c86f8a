"""Whether ``fedgma compose run`` resubmits a run after an attempt ended: what ``flwr ls`` said,
what the run's checkpoint says, how many resumes are left (:func:`decide`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgma.app.run_folder import RunFolder
from fedgma.app.settings import ConfigError

# What Flower 1.39 writes in a run's status details (flwr ls "status-details"):
# a ServerApp that stopped sending heartbeats, i.e. vanished with its SuperLink
# (flwr/supercore/corestate/sql_corestate.py, expired task claims) ...
LOST_SERVERAPP = "No heartbeat received from the task"
# ... and a ServerApp that raised (flwr/superlink/runtime/run_serverapp.py): the app's own failure.
APP_FAILURE = "ServerApp failed with exception"


@dataclass(frozen=True)
class Attempt:
    """How one submission of the run ended.

    ``status`` and ``details`` are ``flwr ls``'s; ``lost_contact``: the SuperLink's Control API
    stopped answering while the run was followed (it died, and answered again later).
    """

    run_id: int
    status: str
    details: str
    lost_contact: bool = False

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


@dataclass(frozen=True)
class CheckpointState:
    """What the run's folder says, as far as this process can see it.

    ``visible``: the output root was given (``--outputs``); ``round``: the last checkpointed
    round (None: no checkpoint); ``failure``: the failure the run recorded (None: none).
    """

    visible: bool
    round: int | None = None
    failure: str | None = None


@dataclass(frozen=True)
class Step:
    """What to do after an attempt: ``done`` (completed), ``resume`` (from the checkpoint),
    ``restart`` (anew, same run name: there is no checkpoint yet) or ``give-up``; and why."""

    action: str
    reason: str


def decide(attempt: Attempt, checkpoint: CheckpointState, resumes_left: int) -> Step:
    """The next step after ``attempt``; a run that failed for its own reasons is never retried.

    Parameters
    ----------
    attempt : Attempt
        How the submission ended.
    checkpoint : CheckpointState
        The run folder's checkpoint, when visible.
    resumes_left : int
        How many more submissions are allowed.

    Returns
    -------
    Step
        ``resume`` or ``restart`` only when the ServerApp was lost with the SuperLink
        (Flower's "No heartbeat received from the task", or the Control API went away while
        the run was followed) and nothing says the run failed by itself.
    """
    if attempt.completed:
        return Step("done", "completed")
    if attempt.status != "finished:failed":
        return Step("give-up", f"the run ended {attempt.status} ({attempt.details}); not retried")
    if checkpoint.failure is not None:
        return Step("give-up", f"the run failed for its own reasons (its checkpoint records: "
                               f"{checkpoint.failure}); not retried")
    if attempt.details.startswith(APP_FAILURE):
        return Step("give-up", f"the run failed for its own reasons ({attempt.details}); not retried")
    if not (attempt.details.startswith(LOST_SERVERAPP) or attempt.lost_contact):
        return Step("give-up", f"the run failed ({attempt.details}) and the SuperLink did not go away; "
                               "not retried")
    if resumes_left <= 0:
        return Step("give-up", f"the ServerApp was lost with the SuperLink ({attempt.details}) and no "
                               "resume is left (--max-resumes)")
    if checkpoint.visible and checkpoint.round is None:
        return Step("restart", f"the ServerApp was lost with the SuperLink ({attempt.details}) before "
                               "its first checkpoint")
    where = f"round {checkpoint.round}" if checkpoint.round is not None else "its last checkpoint"
    return Step("resume", f"the ServerApp was lost with the SuperLink ({attempt.details}); resuming after {where}")


def checkpoint_state(outputs: Path | None, settings: dict[str, Any]) -> CheckpointState:
    """Read the run's checkpoint, if this process can see the output root ``outputs``
    (``settings``: the run's ``--run-config``, with the app's default ``output-dir``)."""
    if outputs is None:
        return CheckpointState(visible=False)
    from fedgma.loop.checkpoint import CheckpointError, load_checkpoint

    try:
        checkpoint = load_checkpoint(RunFolder.of_run(outputs, settings).path)
    except (CheckpointError, ConfigError, ValueError) as err:
        print(f"deploy: cannot read the run's checkpoint: {err}", flush=True)
        return CheckpointState(visible=False)
    if checkpoint is None:
        return CheckpointState(visible=True)
    return CheckpointState(visible=True, round=checkpoint.round, failure=checkpoint.failure)
