"""The README's "Use FedGMA in your own Flower app" code blocks, run as written.

Each Python block is the ServerApp of a small Flower app of the test's own (``my_app``): a
PyTorch model on synthetic data and a ClientApp in the style of Flower's PyTorch quickstart,
which reads its learning rate from the train config (``msg.content["config"]["lr"]``). Each app
runs on Flower's simulation runtime, as a user's would.
"""

import json
import textwrap
from pathlib import Path

import pytest
from readme_blocks import code_blocks
from run_settings import ROOT

from fedgma.app.run_folder import RunFolder
from fedgma.deployment.flower import HostSettings, SimulationRuntime
from fedgma.loop import load_checkpoint

pytestmark = pytest.mark.e2e

SECTION = "Use FedGMA in your own Flower app"

PYPROJECT = """
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "my-app"
version = "1.0.0"
dependencies = ["fedgma", "flwr[simulation]>=1.39,<1.43", "torch"]

[tool.setuptools]
packages = ["my_app"]

[tool.flwr.app]
publisher = "readme"

[tool.flwr.app.components]
serverapp = "my_app.server_app:app"
clientapp = "my_app.client_app:app"

[tool.flwr.app.config]
"""

TASK = '''
"""The user's task: a small classifier on synthetic data (two Gaussian blobs per class)."""

import torch
from torch import nn

CENTRES = torch.tensor([[2.0, 0.0, 1.0, -1.0], [-2.0, 0.5, -1.0, 1.0]])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.layers(x)


def load_data(seed: int, size: int = 200):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (size,), generator=generator)
    return CENTRES[labels] + torch.randn(size, 4, generator=generator), labels


def train(net, data, lr: float, epochs: int = 2) -> float:
    features, labels = data
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(epochs):
        for start in range(0, len(labels), 20):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(features[start:start + 20]), labels[start:start + 20])
            loss.backward()
            optimizer.step()
    return loss.item()


@torch.no_grad()
def test(net, data):
    features, labels = data
    logits = net(features)
    return float(nn.functional.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())


def central_test(net):
    return test(net, load_data(seed=999, size=500))
'''

CLIENT = '''
"""A ClientApp in the style of Flower's PyTorch quickstart."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from my_app.task import Net, load_data, test, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context):
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = load_data(seed=int(context.node_config["partition-id"]))
    train_loss = train(model, data, msg.content["config"]["lr"])
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": train_loss, "num-examples": len(data[1])})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context):
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = load_data(seed=int(context.node_config["partition-id"]))
    loss, accuracy = test(model, data)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(data[1])})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
'''


def make_app(folder: Path, server_app: str) -> Path:
    package = folder / "my_app"
    package.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "task.py").write_text(TASK)
    (package / "client_app.py").write_text(CLIENT)
    (package / "server_app.py").write_text(server_app)
    return folder


def run(app: Path, workdir: Path):
    """Run the app on the simulation runtime (2 SuperNodes) from ``workdir``; returns the outcome
    and the run's log."""
    with SimulationRuntime(workdir / "runtime", HostSettings(), cwd=workdir) as runtime:
        run_id = runtime.cli.submit(app, {}, "num-supernodes=2")
        outcome = runtime.cli.wait(run_id, timeout=300, poll=2.0)
        return outcome, runtime.cli.logs(run_id)


@pytest.fixture(scope="module")
def blocks():
    found = code_blocks(ROOT / "README.md", SECTION)
    assert len(found) == 2, "the library section has two code blocks: both are run here"
    return found


def test_the_bare_strategy_block_trains_with_the_train_config(tmp_path, blocks):
    outcome, log = run(make_app(tmp_path / "app", blocks[0]), tmp_path)
    assert outcome.completed, f"{outcome.status}: {outcome.details}"
    assert log.count("'mask-kept-fraction'") >= 3  # three rounds aggregated by FedGMA
    assert "Received 2 results and 0 failures" in log


def test_the_round_loop_block_trains_checkpoints_and_resumes(tmp_path, blocks):
    app = make_app(tmp_path / "app", blocks[1])
    outcome, log = run(app, tmp_path)
    assert outcome.completed, f"{outcome.status}: {outcome.details}"
    run_dir = tmp_path / "outputs" / "my-run"  # the block's relative path, from where the app runs
    saved = load_checkpoint(run_dir)
    assert saved.round == 10 and saved.failure is None
    central = [record["central_metrics"] for record in saved.history]
    assert len(central) == 11 and central[10]["accuracy"] > 0.9 > central[0]["accuracy"]
    assert central[10]["loss"] < central[0]["loss"]
    assert all(record["used"] == 2 for record in saved.history[1:])
    # Started again: the block resumes from its checkpoint (nothing left to do) and prints the Result.
    outcome, log = run(app, tmp_path)
    assert outcome.completed, f"{outcome.status}: {outcome.details}"
    assert "resuming after round 10" in log
    assert json.dumps(central[10]["accuracy"])[:6] in log


def test_without_the_train_config_every_reply_fails_and_the_run_ends_failed(tmp_path, blocks):
    """The failure a quickstart client meets when the server sends no "lr": a KeyError in every
    reply. The round loop ends the run as failed, naming it (Flower's own Strategy.start would
    finish 'completed' with the initial model)."""
    server_app = blocks[1].replace('train_config=ConfigRecord({"lr": 0.01}), ', "")
    assert server_app != blocks[1]
    outcome, log = run(make_app(tmp_path / "app", server_app), tmp_path)
    assert outcome.status == "finished:failed", outcome
    assert "3 rounds in a row without a model update" in outcome.details
    assert "(2 x KeyError: 'lr')" in outcome.details and "\x1b" not in outcome.details  # one line, no colours
    assert "RunFailed" in log
    assert load_checkpoint(tmp_path / "outputs" / "my-run").failure == outcome.details.split(": ", 1)[1]
    assert RunFolder(tmp_path / "outputs" / "my-run").checkpoint.is_file()


def test_the_task_module_is_not_a_stub():
    """The app's pieces work on their own: training lowers the loss of the test's model."""
    namespace: dict = {}
    exec(compile(textwrap.dedent(TASK), "task", "exec"), namespace)
    net = namespace["Net"]()
    before = namespace["central_test"](net)
    namespace["train"](net, namespace["load_data"](1), lr=0.1)
    assert namespace["central_test"](net)[0] < before[0]
