"""Authenticated, encrypted Kafka: the worker and the CLI over TLS (mutual) and SASL_SSL with SCRAM,
against the real local broker with a TLS listener and SCRAM users. Secrets stay out of logs and
/metrics."""

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stream_clf.tools.broker import LocalKafka, free_port
from tests.kafka_helpers import Topics, WorkerProcess, collect, ids_seen, results_of
from tests.web_helpers import get, wait_for_status

pytestmark = pytest.mark.broker

PASSWORD = "alice-secret-9d2f"  # a test user on a throwaway broker


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate, all PEM."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=stream-clf test CA", cwd=directory)  # fmt: skip
    for name in ("broker", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
        (directory / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip
    keystore = directory / "broker-keystore.pem"
    keystore.write_text((directory / "broker.key").read_text() + (directory / "broker.pem").read_text())
    return {name: directory / f"{name}" for name in ("ca.pem", "client.pem", "client.key", "broker-keystore.pem")}


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("no openssl to make the test certificates")
    directory = tmp_path_factory.mktemp("secure")
    pem = _certificates(directory)
    ports = {"plain": free_port(), "ssl": free_port(), "sasl_ssl": free_port(), "controller": free_port()}
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    listeners = [
        f"PLAINTEXT://127.0.0.1:{ports['plain']}",
        f"SSL://127.0.0.1:{ports['ssl']}",
        f"SASL_SSL://127.0.0.1:{ports['sasl_ssl']}",
    ]
    scram_users = [f"SCRAM-SHA-{bits}=[name=alice,password={PASSWORD}]" for bits in (256, 512)]
    broker = LocalKafka(
        directory / "kafka",
        port=ports["plain"],
        controller_port=ports["controller"],
        extra_properties={
            "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{ports['controller']}"]),
            "advertised.listeners": ",".join(listeners),
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(pem["broker-keystore.pem"]),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(pem["ca.pem"]),
            "listener.name.ssl.ssl.client.auth": "required",
            "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": jaas,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
        },
        format_args=[argument for user in scram_users for argument in ("--add-scram", user)],
    )
    broker.start()
    yield broker, ports, pem
    broker.kill()


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "stream_clf", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)


def test_the_worker_and_the_cli_talk_sasl_ssl_scram_and_mutual_tls(secure_broker, tiny_bundle, tmp_path, monkeypatch):
    broker, ports, pem = secure_broker
    topics = Topics.fresh(broker.bootstrap)  # set up, and checked below, over the plaintext listener
    sasl, tls, ca = f"127.0.0.1:{ports['sasl_ssl']}", f"127.0.0.1:{ports['ssl']}", str(pem["ca.pem"])
    monkeypatch.setenv("STREAM_CLF_SASL_PASSWORD", PASSWORD)  # a secret comes from the environment
    web = free_port()
    flags = ("--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-256", "--sasl-username", "alice",
             "--ssl-ca", ca, "--web-port", str(web), "--log-level", "debug")  # fmt: skip
    worker = WorkerProcess(sasl, topics, tiny_bundle, tmp_path / "worker.log", flags)
    try:
        worker.start()
        wait_for_status(web, "/readyz", 200)
        lines = "\n".join(orjson.dumps({"id": f"s{i}", "text": f"secure event {i}"}).decode() for i in range(30))
        produced = _cli("produce", "--brokers", tls, "--topic", topics.input, "--security-protocol", "SSL",
                        "--ssl-ca", ca, "--ssl-cert", str(pem["client.pem"]), "--ssl-key", str(pem["client.key"]),
                        "-", stdin=lines)  # fmt: skip
        assert produced.returncode == 0, produced.stderr
        records = collect(broker.bootstrap, [topics.output], until=ids_seen(topics, 30), timeout=120, watch=[worker])
        assert {result["id"] for result in results_of(records, topics)} == {f"s{i}" for i in range(30)}
        tailed = _cli("tail", "--brokers", sasl, "--topic", topics.output, "--from-beginning", "--max", "30",
                      "--idle-timeout", "60", "--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
                      "--sasl-username", "alice", "--ssl-ca", ca)  # fmt: skip
        assert tailed.returncode == 0, tailed.stderr
        assert len(tailed.stdout.splitlines()) == 30
        data = tmp_path / "labelled.jsonl"
        data.write_bytes(b"".join(orjson.dumps({"text": f"mine {i}", "label": "positive"}) + b"\n" for i in range(10)))
        evaluated = _cli("eval", "--model", str(tiny_bundle), "--data", str(data), "--through-kafka", "--brokers", tls,
                         "--input", topics.input, "--output", topics.output, "--timeout", "90",
                         "--security-protocol", "SSL", "--ssl-ca", ca, "--ssl-cert", str(pem["client.pem"]),
                         "--ssl-key", str(pem["client.key"]))  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr
        assert "streaming vs direct: same label for 10/10 events" in evaluated.stdout
        assert PASSWORD not in get(web, "/metrics")[1].decode()
    finally:
        if worker.running:
            worker.kill()
    log = worker.log.read_text(errors="replace")
    assert "security=SASL_SSL/SCRAM-SHA-256" in log
    assert PASSWORD not in log, "the password reached the worker's log"
