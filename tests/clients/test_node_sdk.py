"""The official Node SDK (npm `mixpanel`), pointed at local eventkeep servers.

`track` goes over plain http to the shared server (the SDK sends `GET /track?data=<base64>`
with verbose off and accepts only the exact body `1`). The SDK refuses to send an API secret
or a service account over plain http, so imports go over https to a second server started
here with a throwaway self-signed certificate for 127.0.0.1, which Node is told to trust
through NODE_EXTRA_CA_CERTS.

Node and npm are required: without them these tests fail rather than skip.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import ProjectCreds, Server, start_server

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "run.js"


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with the SDK installed from the committed lockfile if it is missing."""
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.fail("node is not installed: the Node SDK tests need Node.js >= 18 and npm")
    if not (NODE_DIR / "node_modules" / "mixpanel" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not installed: cannot install the Node SDK (npm ci)")
        result = subprocess.run(
            [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci failed:\n{result.stdout}\n{result.stderr}")
    return node_bin


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for IP 127.0.0.1 (its own CA), valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventkeep test 127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    base = tmp_path_factory.mktemp("eventkeep-tls")
    cert, key = make_certificate(base)
    running = start_server(base, "--tls-cert", str(cert), "--tls-key", str(key), scheme="https")
    yield running, cert
    running.stop()


def run_node(node: str, spec: dict[str, Any], ca_cert: Path | None = None) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k not in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    if ca_cert is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(ca_cert)
    result = subprocess.run(
        [node, str(SCRIPT)], input=json.dumps(spec), capture_output=True, text=True,
        timeout=60, env=env, cwd=NODE_DIR, check=False,
    )
    assert result.returncode == 0, f"node failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])["results"]  # type: ignore[no-any-return]


def http_config(server: Server) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, "protocol": server.scheme}


def unique(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = [e["properties"]["$insert_id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    return events


def test_track_over_http(node: str, server: Server, project: ProjectCreds) -> None:
    now = int(time.time())
    batch = [
        {"event": "Batched", "properties": {"distinct_id": f"b-{i}", "i": i, "$insert_id": f"batch-{i}", "time": now - 200 + i}}
        for i in range(70)  # two requests: 50 + 20
    ]
    ops = [
        {"op": "track", "event": "Opened app", "properties": {"distinct_id": "node-1", "$insert_id": "open-1", "os": "linux", "n": 1}},
        {"op": "track", "event": "Opened app", "properties": {"distinct_id": "node-2", "$insert_id": "open-2", "os": "mac", "n": 2}},
        {"op": "track", "event": "Bought", "properties": {"distinct_id": "node-1", "$insert_id": "buy-1", "time": now - 120, "price": 9.5}},
        {"op": "track_batch", "events": batch},
    ]
    before_ms = int(time.time() * 1000)
    results = run_node(node, {"token": project.token, "config": http_config(server), "ops": ops})
    after_ms = int(time.time() * 1000) + 1
    assert results == [{"op": op["op"], "errors": []} for op in ops]

    stored = unique(server.export(project, time_in_ms="1"))
    assert len(stored) == 73
    by_id = {e["properties"]["$insert_id"]: e for e in stored}
    opened1, opened2, bought = by_id["open-1"], by_id["open-2"], by_id["buy-1"]
    assert (opened1["event"], opened1["properties"]["distinct_id"], opened1["properties"]["os"]) == ("Opened app", "node-1", "linux")
    assert (opened2["event"], opened2["properties"]["distinct_id"], opened2["properties"]["n"]) == ("Opened app", "node-2", 2)
    for e in (opened1, opened2):  # no time sent: the server stamps its own
        assert before_ms - 1 <= e["properties"]["time"] <= after_ms
    assert (bought["event"], bought["properties"]["time"], bought["properties"]["price"]) == ("Bought", (now - 120) * 1000, 9.5)
    for i in range(70):
        e = by_id[f"batch-{i}"]
        assert (e["event"], e["properties"]["distinct_id"], e["properties"]["i"]) == ("Batched", f"b-{i}", i)
        assert e["properties"]["time"] == (now - 200 + i) * 1000
    for e in stored:
        assert "token" not in e["properties"]
        assert "$import" not in e["properties"]


def old_events(count: int, base_ms: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "event": f"Imported {i % 3}",
            "properties": {
                "distinct_id": f"{prefix}-user-{i % 11}",
                "time": base_ms + i * 1000,
                "$insert_id": f"{prefix}-{i}",
                "i": i,
            },
        }
        for i in range(count)
    ]


def assert_imported(stored: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    unique(stored)
    assert len(stored) == len(sent)
    by_id = {e["properties"]["$insert_id"]: e for e in stored}
    for want in sent:
        got = by_id[want["properties"]["$insert_id"]]
        assert got["event"] == want["event"]
        assert got["properties"]["distinct_id"] == want["properties"]["distinct_id"]
        assert got["properties"]["time"] == want["properties"]["time"]  # ms in, ms out
        assert got["properties"]["i"] == want["properties"]["i"]
        assert got["properties"]["$import"] is True
        assert "token" not in got["properties"]


def test_import_batch_over_https_with_api_secret(node: str, tls_server: tuple[Server, Path]) -> None:
    server, cert = tls_server
    project = server.new_project()
    base_ms = 1_600_000_000_000  # years old: only /import takes it
    sent = old_events(120, base_ms, "sec")  # three requests: 50 + 50 + 20
    single_ms = base_ms - 86_400_000
    ops = [
        {"op": "import_batch", "events": sent, "dates": True},  # Date objects: sent as ms
        # import() sends a GET /import?data=<base64> with the secret as Basic auth
        {"op": "import", "event": "Single", "time": single_ms, "dates": True,
         "properties": {"distinct_id": "sec-single", "$insert_id": "sec-single", "i": -1}},
    ]
    spec = {"token": project.token, "config": {**http_config(server), "secret": project.secret}, "ops": ops}
    results = run_node(node, spec, cert)
    assert results == [{"op": "import_batch", "errors": []}, {"op": "import", "errors": []}]

    single = {"event": "Single", "properties": {"distinct_id": "sec-single", "time": single_ms, "$insert_id": "sec-single", "i": -1}}
    assert_imported(server.export(project, time_in_ms="1"), [*sent, single])

    # The same batch again: accepted, and deduplicated.
    results = run_node(node, {**spec, "ops": ops[:1]}, cert)
    assert results == [{"op": "import_batch", "errors": []}]
    assert len(server.export(project)) == 121


def test_import_batch_over_https_with_service_account(node: str, tls_server: tuple[Server, Path]) -> None:
    server, cert = tls_server
    project = server.new_project()
    username, secret = server.new_service_account(project)
    sent = old_events(60, 1_500_000_000_000, "sa")
    spec = {
        "token": project.token,
        "config": http_config(server),
        "credentials": [username, secret, str(project.id)],
        "ops": [{"op": "import_batch", "events": sent}],
    }
    assert run_node(node, spec, cert) == [{"op": "import_batch", "errors": []}]
    assert_imported(server.export(project, time_in_ms="1"), sent)


def test_import_batch_with_wrong_secret_fails(node: str, tls_server: tuple[Server, Path]) -> None:
    server, cert = tls_server
    project = server.new_project()
    spec = {
        "token": project.token,
        "config": {**http_config(server), "secret": "not-the-secret"},
        "ops": [{"op": "import_batch", "events": old_events(3, 1_500_000_000_000, "bad")}],
    }
    [result] = run_node(node, spec, cert)
    assert result["errors"] == ["Mixpanel Server Error: 0"]
    assert server.export(project) == []
