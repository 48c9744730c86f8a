"""One writer per run folder: a second ServerApp given a run that another still writes fails at
once (it once wrote its rows between the first one's), and a writer that dies leaves no lock."""

import subprocess
import sys
import time

import pytest

from fedgma.app.run_folder import LOCK_FILE
from fedgma.app.run_lock import RunFolderBusy, hold_run_folder

HOLD = """
import sys, time
from pathlib import Path
from fedgma.app.run_lock import hold_run_folder
with hold_run_folder(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_writer_is_refused_naming_the_folder_and_a_killed_one_frees_it(tmp_path):
    run_dir = tmp_path / "outputs" / "run"
    writer = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "held\n"
        with pytest.raises(RunFolderBusy, match=f"{run_dir} is being written by another run"), \
                hold_run_folder(run_dir):
            pytest.fail("a second writer got the folder")
    finally:
        writer.kill()  # SIGKILL: no clean-up of its own
        writer.wait(30)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops a dead holder's lock
        try:
            with hold_run_folder(run_dir):
                break
        except RunFolderBusy:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert (run_dir / LOCK_FILE).is_file()


def test_the_lock_is_released_when_the_block_ends_even_by_an_exception(tmp_path):
    with pytest.raises(ValueError), hold_run_folder(tmp_path / "r"):
        raise ValueError("the run failed")
    with hold_run_folder(tmp_path / "r"), pytest.raises(RunFolderBusy), hold_run_folder(tmp_path / "r"):
        pass
