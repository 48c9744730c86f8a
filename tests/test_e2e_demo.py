"""The README's main job (python -m fedgma.lab.demo), at a small size."""

import json

import pytest

from fedgma.lab import demo

pytestmark = pytest.mark.e2e


def test_main_job_compares_fedgma_and_fedavg(tmp_path, shared_data_dir, capsys):
    status = demo.main([
        "--clients", "2", "--rounds", "1", "--output-dir", str(tmp_path),
        "--data-dir", str(shared_data_dir), "--no-download",
        "train-images=2000", "test-images=1000", "partitioning=iid", "local-epochs=1",
    ])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "FedGMA (ws)" in printed and "FedAvg" in printed and "final OOD acc" in printed
    (batch,) = tmp_path.glob("demo-*")
    for name in ("fedgma-ws", "fedavg"):
        summary = json.loads((batch / name / "summary.json").read_text())
        assert summary["rounds"] == 1
        assert f"{summary['final-ood-accuracy']:.4f}" in printed
