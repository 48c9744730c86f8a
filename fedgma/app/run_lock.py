"""One writer per run folder: the ServerApp holds an exclusive lock on the folder's
:data:`~fedgma.app.run_folder.LOCK_FILE` while it writes the run, so a second ServerApp given the
same run (a resume while the first still runs, say) fails at once, naming the folder, instead of
writing its rows, checkpoints and model between the first one's.

The kernel drops the lock when its holder ends, however it ends: a crashed run leaves nothing to
clean up.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .run_folder import LOCK_FILE


class RunFolderBusy(RuntimeError):
    """Another process is writing this run folder."""


@contextmanager
def hold_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s writer lock (creating the folder if missing) for the ``with`` block.

    Raises
    ------
    RunFolderBusy
        If another process holds it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(f"{run_dir} is being written by another run (its ServerApp still runs); "
                                "stop that run first") from None
        yield
    finally:
        os.close(fd)  # releases the lock
