"""docker/: the compose file is valid for Compose (``docker-compose config``, which needs no
engine), and it, Prometheus' scrape config and the Grafana dashboard agree with each other
and with the metric names the code exports."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from streamlearn.ingest.app import INGEST_EVENTS
from streamlearn.runtime.metrics import JOB_GAUGES, WorkerMetrics

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def metrics_port(service: str) -> int:
    command = SERVICES[service]["command"]
    return int(command[command.index("--metrics-port") + 1])


def exported_names() -> set[str]:
    """Every sample name a worker (having done each thing once), the job collector and the
    ingest app export."""
    worker = WorkerMetrics("j")
    worker.committed(applied=10, dead_lettered=1, update_s=0.01, commit_s=0.002, conflicts=1)
    worker.dropped("outage")
    worker.lag({0: 5})
    names = {s.name for family in worker.registry.collect() for s in family.samples}
    return names | {name for name, _ in JOB_GAUGES.values()} | {f"{INGEST_EVENTS}_total"}


def test_the_stack_services_and_the_optional_profiles():
    assert {"kafka", "redis", "worker", "ingest", "cli", "prometheus", "grafana"} <= set(SERVICES)
    assert "profiles" not in SERVICES["worker"] and "profiles" not in SERVICES["kafka"]  # `up` starts them
    assert SERVICES["prometheus"]["profiles"] == SERVICES["grafana"]["profiles"] == ["monitoring"]
    assert SERVICES["ingest"]["profiles"] == ["ingest"]
    # `up --scale worker=4`: no fixed container name and no host port for the workers
    assert "container_name" not in SERVICES["worker"] and "ports" not in SERVICES["worker"]
    assert SERVICES["worker"]["command"][:2] == ["worker", "${JOB:-demo}"]
    assert "KAFKA_PROCESS_ROLES" in SERVICES["kafka"]["environment"]  # KRaft, no ZooKeeper


def test_every_reference_resolves():
    volumes = set(COMPOSE.get("volumes") or {})
    for name, svc in SERVICES.items():
        deps = svc.get("depends_on", [])
        assert set(deps) <= set(SERVICES), name
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                if source != "./data":  # the user's data folder (cli)
                    assert (DOCKER / source).exists(), (name, source)
            else:
                assert source in volumes, (name, source)


def test_prometheus_scrapes_the_services_on_their_metrics_ports():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = {sd["names"][0]: sd["port"] for job in config["scrape_configs"] for sd in job["dns_sd_configs"]}
    assert targets == {"worker": metrics_port("worker"), "ingest": metrics_port("ingest")}
    for service, port in targets.items():
        assert str(port) in SERVICES[service]["expose"]
    mounted = [m for m in SERVICES["prometheus"]["volumes"] if m.endswith("/etc/prometheus/prometheus.yml:ro")]
    assert mounted == ["./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"]


def test_the_grafana_dashboard_queries_metrics_the_code_exports():
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "streamlearn.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bstreamlearn_[a-z_]+", e)}
    exported = exported_names()
    assert used and used <= exported, used - exported
    # every worker metric family is on the dashboard
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in exported if n.startswith("streamlearn_worker")}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert families <= shown, families - shown
    provisioning = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "streamlearn.yml").read_text())
    assert provisioning["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}


def test_compose_config_is_valid_with_every_profile():
    """Compose itself parses and resolves the file (services, profiles, references); scripts/install
    installs Debian's docker-compose for it."""
    base = ["docker-compose", "-f", str(DOCKER / "compose.yaml")]
    subprocess.run(base + ["config", "-q"], check=True)
    listed = subprocess.run(base + ["--profile", "monitoring", "--profile", "ingest", "config", "--services"],
                            check=True, capture_output=True, text=True).stdout.split()
    assert {"kafka", "redis", "worker", "ingest", "prometheus", "grafana"} <= set(listed)

