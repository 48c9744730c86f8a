"""fedgma superlink: flower-superlink with the Fleet API's message bound set, so an oversized
message is refused before it is read (flower-superlink itself reads it), a bound derived from the
largest message an honest SuperNode sends, and a bound on concurrent Fleet calls beyond which a
call is refused unread."""

import pytest

from fedgma.deployment.flower import flower_env
from fedgma.deployment.processes import descendants, free_port, launch_command, start, stop, wait_for_http
from fedgma.deployment.superlink import call_limit, message_limit
from fedgma.lab.bench.fleet import flood, largest_honest_message, send_raw

pytestmark = pytest.mark.e2e


def test_the_bound_is_a_whole_number_of_mib():
    assert message_limit({}) == 8 << 20
    assert message_limit({"FEDGMA_FLEET_MAX_MESSAGE_MB": "32"}) == 32 << 20
    assert message_limit({"FEDGMA_FLEET_MAX_MESSAGE_MB": "5"}) == 5 << 20
    for bad in ("0", "-3", "1.5", "lots", "4096"):
        with pytest.raises(SystemExit, match="FEDGMA_FLEET_MAX_MESSAGE_MB"):
            message_limit({"FEDGMA_FLEET_MAX_MESSAGE_MB": bad})


def test_the_call_bound_is_a_whole_number_of_calls():
    assert call_limit({}) == 64
    assert call_limit({"FEDGMA_FLEET_MAX_CONCURRENT_CALLS": "200"}) == 200
    for bad in ("0", "-1", "2.5", "many", "1001"):
        with pytest.raises(SystemExit, match="FEDGMA_FLEET_MAX_CONCURRENT_CALLS"):
            call_limit({"FEDGMA_FLEET_MAX_CONCURRENT_CALLS": bad})


def test_the_default_bound_holds_the_largest_honest_message():
    largest = largest_honest_message()  # a full 5 MiB array chunk in a PushObject / PullObject call
    assert 5 << 20 < largest < (5 << 20) + 1024
    assert largest + (2 << 20) < message_limit({})  # room for an object tree or app bundle of 2 MiB more


def _superlink(tmp_path, launcher, env):
    fleet, http = free_port(), free_port()
    process = start([*launch_command(launcher), "--insecure", "--host", "127.0.0.1", "--port", str(http),
                     "--fleet-api-address", f"127.0.0.1:{fleet}", "--disable-runtime-dependency-installation"],
                    {**flower_env(tmp_path / "home"), **env}, tmp_path / "superlink.log")
    try:
        wait_for_http(f"http://127.0.0.1:{http}/health", 60, process)
    except BaseException:
        stop(process)
        raise
    return process, f"127.0.0.1:{fleet}"


@pytest.mark.parametrize("calls", [2, 1000])
def test_calls_beyond_the_bound_are_refused(tmp_path, calls):
    process, address = _superlink(tmp_path, "fedgma superlink", {"FEDGMA_FLEET_MAX_MESSAGE_MB": "2",
                                                                 "FEDGMA_FLEET_MAX_CONCURRENT_CALLS": str(calls)})
    try:
        result = flood(address, [process.pid, *descendants(process.pid)], 100, (2 << 20) - 4096, timeout=30)
    finally:
        stop(process)
    log = (tmp_path / "superlink.log").read_text(errors="replace")
    assert f"at most {calls} Fleet calls run at once" in log
    assert sum(result.answers.values()) == 100 and set(result.answers) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}
    if calls == 2:  # 100 calls released together: most find 2 in progress and are answered unread
        assert result.answers.get("RESOURCE_EXHAUSTED", 0) >= 10, result.answers
    else:
        assert result.answers == {"UNAUTHENTICATED": 100}


@pytest.mark.parametrize("launcher", ["fedgma superlink", "flower-superlink"])
def test_an_oversized_fleet_message_is_refused_unread(tmp_path, launcher):
    env = flower_env(tmp_path / "home")
    env["FEDGMA_FLEET_MAX_MESSAGE_MB"] = "2"
    fleet, http = free_port(), free_port()
    process = start([*launch_command(launcher), "--insecure", "--host", "127.0.0.1", "--port", str(http),
                     "--fleet-api-address", f"127.0.0.1:{fleet}", "--disable-runtime-dependency-installation"],
                    env, tmp_path / "superlink.log")
    try:
        wait_for_http(f"http://127.0.0.1:{http}/health", 60, process)
        small, large = send_raw(f"127.0.0.1:{fleet}", 1 << 20), send_raw(f"127.0.0.1:{fleet}", 3 << 20)
    finally:
        stop(process)
    log = (tmp_path / "superlink.log").read_text(errors="replace")
    assert small == "UNAUTHENTICATED"  # read, then refused for its missing credentials
    if launcher == "fedgma superlink":
        assert large == "RESOURCE_EXHAUSTED" and "above 2 MiB are refused" in log
    else:
        assert large == "UNAUTHENTICATED"  # 1.39 reads messages up to 2 GiB
