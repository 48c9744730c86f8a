"""The example app in examples/sign-agreement: a Flower app of its own that uses the library as a
user would (FedGMA as its strategy, RoundLoop for checkpoints), run on the simulation runtime."""


import numpy as np
import pytest
from run_settings import ROOT

from fedgma.lab.launch import SimulationRuntime
from fedgma.loop import load_checkpoint

pytestmark = pytest.mark.e2e
EXAMPLE = ROOT / "examples" / "sign-agreement"


def test_the_example_app_trains_checkpoints_and_resumes(tmp_path, host_settings, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from signagree.task import client_data, loss

    out = tmp_path / "example-outputs"
    runtime = SimulationRuntime(tmp_path / "runtime", host_settings)
    runtime.env["SIGNAGREE_OUTPUT_ROOT"] = str(out)
    with runtime:
        for rounds in (4, 6):  # the second run resumes after round 4
            run_id = runtime.cli.submit(EXAMPLE, {"num-server-rounds": rounds, "run-name": "e2e"},
                                        "num-supernodes=4")
            outcome = runtime.cli.wait(run_id, timeout=300, poll=2.0)
            assert outcome.completed, f"{outcome.status}: {outcome.details}"
            assert load_checkpoint(out / "e2e").round == rounds
    final = load_checkpoint(out / "e2e").arrays["w"]
    assert final.dtype == np.float32 and final.shape == (3,)
    data = [client_data(i, 4) for i in range(4)]
    features, targets = np.concatenate([f for f, _ in data]), np.concatenate([t for _, t in data])
    start = loss(np.zeros(3, np.float32), features, targets)
    assert loss(final, features, targets) < 0.2 * start  # it learned the pooled task
