import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory):
    """One data directory for the end-to-end runs, so partitions are cached once."""
    return tmp_path_factory.mktemp("e2e-data")


@pytest.fixture
def host_settings(tmp_path, shared_data_dir):
    """The settings a host's operator gives the app: outputs below tmp_path/outputs, the shared
    data directory, no downloads (the machines are offline)."""
    from fedgma.deployment.flower import HostSettings

    return HostSettings(output_root=tmp_path / "outputs", data_dir=shared_data_dir, download=False)
