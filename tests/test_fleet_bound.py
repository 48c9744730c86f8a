"""fedgma-superlink: flower-superlink with the Fleet API's message bound set, so an oversized
message is refused before it is read; flower-superlink itself reads it."""

import pytest

from fedgma.lab.benchmarks import send_raw
from fedgma.lab.launch import BIN, flower_env, free_port, start, stop, wait_for_http
from fedgma.lab.superlink import message_limit

pytestmark = pytest.mark.e2e


def test_the_bound_is_a_whole_number_of_mib():
    assert message_limit({}) == 32 << 20
    assert message_limit({"FEDGMA_FLEET_MAX_MESSAGE_MB": "5"}) == 5 << 20
    for bad in ("0", "-3", "1.5", "lots", "4096"):
        with pytest.raises(SystemExit, match="FEDGMA_FLEET_MAX_MESSAGE_MB"):
            message_limit({"FEDGMA_FLEET_MAX_MESSAGE_MB": bad})


@pytest.mark.parametrize("launcher", ["fedgma-superlink", "flower-superlink"])
def test_an_oversized_fleet_message_is_refused_unread(tmp_path, launcher):
    env = flower_env(tmp_path / "home")
    env["FEDGMA_FLEET_MAX_MESSAGE_MB"] = "2"
    fleet, http = free_port(), free_port()
    process = start([str(BIN / launcher), "--insecure", "--host", "127.0.0.1", "--port", str(http),
                     "--fleet-api-address", f"127.0.0.1:{fleet}", "--disable-runtime-dependency-installation"],
                    env, tmp_path / "superlink.log")
    try:
        wait_for_http(f"http://127.0.0.1:{http}/health", 60, process)
        small, large = send_raw(f"127.0.0.1:{fleet}", 1 << 20), send_raw(f"127.0.0.1:{fleet}", 3 << 20)
    finally:
        stop(process)
    log = (tmp_path / "superlink.log").read_text(errors="replace")
    assert small == "UNAUTHENTICATED"  # read, then refused for its missing credentials
    if launcher == "fedgma-superlink":
        assert large == "RESOURCE_EXHAUSTED" and "above 2 MiB are refused" in log
    else:
        assert large == "UNAUTHENTICATED"  # 1.39 reads messages up to 2 GiB
