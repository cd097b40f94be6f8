"""The deployment files agree with the worker: the settings they pass are ones it reads, with values
it accepts; probes, ports, scaling bounds and the scrape target line up."""

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from stream_clf import __version__
from stream_clf.settings import WORKER_OPTIONS, WorkerSettings

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
WORKER_ENV = {option.env for option in WORKER_OPTIONS}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _k8s(name: str) -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()))


def _check_worker_environment(environment: dict[str, str]) -> WorkerSettings:
    ours = {name: str(value) for name, value in environment.items() if name.startswith("STREAM_CLF_")}
    assert set(ours) <= WORKER_ENV, f"not read by the worker: {sorted(set(ours) - WORKER_ENV)}"
    return WorkerSettings.resolve({}, environ=ours)  # raises ConfigError on a value the worker rejects


def _compose_command() -> list[str] | None:
    """The first compose implementation that answers: Docker's plugin, then docker-compose v1.

    A ``docker`` CLI without the compose plugin exists (it fails with "unknown shorthand flag"), so
    each candidate is asked for its version before it is trusted.
    """
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if (
            shutil.which(candidate[0])
            and subprocess.run([*candidate, "version"], capture_output=True, timeout=30, check=False).returncode == 0
        ):
            return candidate
    return None


def test_compose_validates():
    command = _compose_command()
    assert command, "no compose implementation answers: run .ci/system-packages (installs docker-compose)"
    finished = subprocess.run([*command, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr


def test_compose_runs_every_part_and_passes_the_worker_settings_it_reads():
    services = _compose()["services"]
    assert {"kafka", "topics", "worker", "producer", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    settings = _check_worker_environment(services["worker"]["environment"])
    assert settings.models.model == Path("/models/news-int8")
    for name in ("producer", "results"):
        assert not [key for key in services[name].get("environment", {}) if key.startswith("STREAM_CLF_")]
    topics_command = " ".join(services["topics"]["command"])
    for topic in (*settings.topics.input, settings.topics.output, settings.topics.dlq):
        assert topic in topics_command
    assert f"{settings.web.web_port}:{settings.web.web_port}" in services["worker"]["ports"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["rule_files"] == ["alerts.yml"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in services["prometheus"]["volumes"]
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"worker:{settings.web.web_port}"]


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck():
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users
    assert users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.MULTILINE)
    env_block = re.search(r"^ENV (.*?)(?=^\S)", text, re.MULTILINE | re.DOTALL)
    assert env_block
    environment = dict(re.findall(r"(STREAM_CLF_\w+)=(\S+)", env_block.group(1)))
    settings = _check_worker_environment(environment)
    assert settings.web.web_host == "0.0.0.0"
    assert f"EXPOSE {settings.web.web_port}" in text


WORKLOADS = {"Deployment": "deployment.yaml", "StatefulSet": "statefulset-exactly-once.yaml"}


def _workload(kind: str) -> dict:
    (workload,) = [doc for doc in _k8s(WORKLOADS[kind]) if doc["kind"] == kind]
    return workload


def _all_k8s(kind: str) -> list[dict]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in _k8s(path.name) if doc["kind"] == kind]


def _selects(selector: dict, workload: dict) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return selector.items() <= labels.items()


def _secrets() -> dict[str, set[str]]:
    """The example Secrets' names and keys."""
    return {doc["metadata"]["name"]: set(doc["stringData"]) for doc in _k8s("secret.example.yaml")}


def _environment(kind: str, tmp_path: Path) -> dict[str, str]:
    """The worker container's environment as the pod would have it: values from Secrets must name a key
    of a Secret the example provides (a placeholder stands in), the pod's name comes from its metadata,
    and a file under a mounted Secret is stood in for by a file of the same name."""
    pod = _workload(kind)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    secrets = _secrets()
    environment = {}
    for item in container["env"]:
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["key"] in secrets.get(ref["name"], set()), ref
            environment[item["name"]] = "from-a-secret"
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            environment[item["name"]] = f"{_workload(kind)['metadata']['name']}-0"
        else:
            environment[item["name"]] = item["value"]
    for name, value in environment.items():
        folder = str(Path(value).parent)
        if folder in mounts:  # a file from a mounted Secret: the Secret must hold it
            volume = volumes[mounts[folder]]
            secret = volume["secret"]
            assert Path(value).name in {item["path"] for item in secret["items"]}
            assert {item["key"] for item in secret["items"]} <= secrets[secret["secretName"]]
            stand_in = tmp_path / Path(value).name
            stand_in.write_text("stand-in")
            environment[name] = str(stand_in)
    return environment


@pytest.mark.parametrize("kind", WORKLOADS)
def test_kubernetes_probes_ports_and_security_match_the_worker(kind, tmp_path):
    workload = _workload(kind)
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = _check_worker_environment(_environment(kind, tmp_path))
    (port,) = container["ports"]
    assert port["containerPort"] == settings.web.web_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "a slow start is not a dead worker"
    assert "initialDelaySeconds" not in container["livenessProbe"], "the startup probe covers the start"
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True
    assert hardened["allowPrivilegeEscalation"] is False
    assert hardened["capabilities"]["drop"] == ["ALL"]
    assert "add" not in hardened["capabilities"]
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"], "the worker writes only Faust's scratch directory"
    (tmp,) = [v for v in pod["volumes"] if v["name"] == writable[0]["name"]]
    assert "emptyDir" in tmp
    image, _, tag = container["image"].rpartition(":")
    assert image
    assert tag == __version__, "a pinned image tag: the release this manifest was written for"
    assert settings.connection.security_protocol == "SASL_SSL", "the brokers reached over TLS"
    assert settings.connection.sasl_password == "from-a-secret", "credentials come from a Secret"


def test_exactly_once_runs_as_a_statefulset_whose_replicas_keep_their_names_as_instances(tmp_path):
    settings = _check_worker_environment(_environment("StatefulSet", tmp_path))
    assert settings.delivery.exactly_once
    assert settings.delivery.instance == "stream-clf-exactly-once-0", "the pod's own, stable name"
    deployment = _check_worker_environment(_environment("Deployment", tmp_path))
    assert not deployment.delivery.exactly_once, "a Deployment's pods are renamed on every restart"
    assert deployment.delivery.group != settings.delivery.group
    assert _workload("Deployment")["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


@pytest.mark.parametrize("kind", WORKLOADS)
def test_each_workload_has_its_scaler_disruption_budget_service_and_network_policy(kind, tmp_path):
    workload = _workload(kind)
    settings = _check_worker_environment(_environment(kind, tmp_path))
    (scaled,) = [
        s for s in _all_k8s("ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
    ]
    assert scaled["spec"]["scaleTargetRef"]["kind"] == kind
    assert scaled["spec"]["maxReplicaCount"] == settings.topics.partitions, "more replicas than partitions sit idle"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] in settings.topics.input
    assert trigger["metadata"]["consumerGroup"] == settings.delivery.group
    assert trigger["metadata"]["bootstrapServers"] == ",".join(settings.connection.brokers)
    (auth,) = [
        a for a in _all_k8s("TriggerAuthentication") if a["metadata"]["name"] == trigger["authenticationRef"]["name"]
    ]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in _secrets()[ref["name"]]

    (budget,) = [b for b in _all_k8s("PodDisruptionBudget") if _selects(b["spec"]["selector"]["matchLabels"], workload)]
    assert budget["spec"]["maxUnavailable"] == 1
    services = [s for s in _all_k8s("Service") if _selects(s["spec"]["selector"], workload)]
    assert len(services) == 1
    assert services[0]["spec"]["ports"][0]["port"] == settings.web.web_port
    if kind == "StatefulSet":
        assert workload["spec"]["serviceName"] == services[0]["metadata"]["name"]

    (policy,) = [p for p in _all_k8s("NetworkPolicy") if _selects(p["spec"]["podSelector"]["matchLabels"], workload)]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": settings.web.web_port}]
    assert ingress["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    egress = {(port["protocol"], port["port"]) for rule in policy["spec"]["egress"] for port in rule["ports"]}
    reached = {("TCP", int(broker.rpartition(":")[2])) for broker in settings.connection.brokers}
    reached |= {("UDP", 53), ("TCP", 53)}  # DNS
    if settings.events.schema_registry:
        reached.add(("TCP", urlsplit(settings.events.schema_registry).port))
    if settings.logs.otel:
        reached.add(("TCP", urlsplit(settings.logs.otel).port))
    assert egress == reached, "egress names exactly what the worker is configured to reach"


def test_the_grafana_dashboard_uses_the_provisioned_datasource():
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {source["uid"] for source in datasources["datasources"]}
    dashboard = yaml.safe_load((DEPLOY / "grafana/dashboards/stream-clf.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids
        assert panel["targets"], panel["title"]
