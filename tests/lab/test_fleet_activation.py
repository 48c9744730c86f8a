"""fedgma superlink binds a SuperNode's activation to the key that signs it: a fresh key that signs
an ActivateNodeRequest carrying a registered node's public key is refused, the node's own key still
activates it. Plain flower-superlink 1.39 accepts the rogue activation (docs/flower-grpc-activation.md)."""

import subprocess
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, PUBLIC_KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from flwr.proto.fleet_pb2 import ActivateNodeRequest, ActivateNodeResponse
from flwr.supercore.date import now
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes, sign_message

from fedgma.deployment.flower import FlowerCli, flower_env, write_connection
from fedgma.deployment.processes import free_port, launch_command, start, stop, wait_for_http

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def signed_metadata(private_key, public_key) -> list[tuple[str, object]]:
    """The call metadata Flower's SuperNode sends (``NodeAuthClientInterceptor``): its public key,
    a timestamp and the timestamp's signature."""
    timestamp = now().isoformat()
    return [(PUBLIC_KEY_HEADER, public_key_to_bytes(public_key)), (TIMESTAMP_HEADER, timestamp),
            (SIGNATURE_HEADER, sign_message(private_key, timestamp.encode("ascii")))]


def activate(address: str, ca: Path, body_key: bytes, signer) -> tuple[str, str]:
    """An ActivateNode call over TLS (CA certificate ``ca``) whose body carries ``body_key``, signed
    by ``signer`` (private, public): (status code name, node id or error details)."""
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca.read_bytes())) as channel:
        call = channel.unary_unary("/flwr.proto.Fleet/ActivateNode",
                                   request_serializer=ActivateNodeRequest.SerializeToString,
                                   response_deserializer=ActivateNodeResponse.FromString)
        request = ActivateNodeRequest(public_key=body_key, heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL)
        try:
            response = call(request, metadata=signed_metadata(*signer), timeout=30)
        except grpc.RpcError as err:
            return err.code().name, err.details() or ""
    return "OK", str(response.node_id)


@pytest.mark.parametrize("launcher", ["fedgma superlink", "flower-superlink"])
def test_activation_is_bound_to_the_signing_key(tmp_path, launcher):
    keys, certs = tmp_path / "keys", tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "scripts/make-certs.sh"), str(certs)], check=True, capture_output=True)
    subprocess.run(["bash", str(ROOT / "scripts/make-supernode-keys.sh"), str(keys), "1"], check=True,
                   capture_output=True)
    node_private = serialization.load_ssh_private_key((keys / "supernode-0").read_bytes(), password=None)
    node = (node_private, node_private.public_key())
    node_key = public_key_to_bytes(node[1])
    rogue = generate_key_pairs()

    home = tmp_path / "flwr-home"
    env = flower_env(home)
    fleet, http = free_port(), free_port()
    write_connection(home, "local", f"127.0.0.1:{http}", certs / "ca.crt")
    log_path = tmp_path / "superlink.log"
    process = start([*launch_command(launcher), "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile",
                     str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
                     "--enable-supernode-auth", "--host", "127.0.0.1",
                     "--port", str(http), "--fleet-api-address", f"127.0.0.1:{fleet}",
                     "--disable-runtime-dependency-installation"], env, log_path)
    try:
        wait_for_http(f"https://127.0.0.1:{http}/health", 60, process, certs / "ca.crt")
        cli = FlowerCli(env, "local")
        register = subprocess.run(cli.command("supernode", "register", str(keys / "supernode-0.pub"), "local"),
                                  env=env, capture_output=True, text=True, timeout=60)
        assert "registered successfully" in register.stdout, register.stdout + register.stderr

        address, ca = f"127.0.0.1:{fleet}", certs / "ca.crt"
        unregistered = activate(address, ca, public_key_to_bytes(rogue[1]), rogue)  # its own, unregistered key
        by_rogue = activate(address, ca, node_key, rogue)
        by_node = activate(address, ca, node_key, node)
    finally:
        stop(process)
    log = log_path.read_text(errors="replace")

    assert unregistered[0] != "OK", unregistered  # no node has that key
    if launcher == "fedgma superlink":
        assert by_rogue == ("UNAUTHENTICATED", "Public key in the request does not match the key that signed it")
        assert "refused ActivateNodeRequest" in log, log
        assert by_node[0] == "OK" and int(by_node[1]) > 0, by_node  # the node itself still activates
        assert log.count("Activated node_id") == 1, log
    else:
        assert by_rogue[0] == "OK" and int(by_rogue[1]) > 0, by_rogue  # Flower 1.39 activates the node for the rogue
        assert by_node[0] != "OK", by_node  # and the real SuperNode can no longer activate (it exits with 305)
