"""The deployment files agree with the worker: the settings they pass are ones it reads, with values
it accepts; probes, ports, scaling bounds and the scrape target line up."""

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from stream_clf.settings import WORKER_OPTIONS, WorkerSettings

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
WORKER_ENV = {option.env for option in WORKER_OPTIONS}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _k8s(name: str) -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()))


def _worker_container() -> dict:
    (deployment,) = _k8s("deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


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


def test_kubernetes_probes_ports_and_scaling_match_the_worker():
    container = _worker_container()
    environment = {item["name"]: item["value"] for item in container["env"]}
    settings = _check_worker_environment(environment)
    (port,) = container["ports"]
    assert port["containerPort"] == settings.web.web_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    (deployment,) = _k8s("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    (service,) = _k8s("service.yaml")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == settings.web.web_port
    (scaled,) = _k8s("keda-scaledobject.yaml")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # More replicas than partitions would sit idle.
    assert scaled["spec"]["maxReplicaCount"] == settings.topics.partitions
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] in settings.topics.input
    assert trigger["metadata"]["consumerGroup"] == settings.delivery.group
    assert trigger["metadata"]["bootstrapServers"] == ",".join(settings.connection.brokers)


def test_the_grafana_dashboard_uses_the_provisioned_datasource():
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {source["uid"] for source in datasources["datasources"]}
    dashboard = yaml.safe_load((DEPLOY / "grafana/dashboards/stream-clf.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids
        assert panel["targets"], panel["title"]
