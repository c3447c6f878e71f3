"""The deployment files agree with each other and with the code: what the schemas
(Compose Specification, Kubernetes) and linters run by scripts/check_deploy cannot see.

- every EXCHANGE_* variable set in deploy/ is a real setting, and the settings each
  container gets load with ``exchange.config.load_settings`` (the Kubernetes ConfigMap's
  TOML written to a file, as the pod mounts it);
- ports agree: listen addresses, container ports, Service, NetworkPolicy, probes,
  Prometheus annotations, Dockerfile EXPOSE, published compose ports, health checks;
- shutdown: the time a container is given to stop exceeds ``shutdown_grace_s``;
- files the settings name (TLS, audit signing key, Kafka CA) are mounted where the
  settings look for them, and every replica mounts the same signing key read-only;
- the image: non-root user (the uid Kubernetes runs as), HEALTHCHECK with
  ``exchange health``, no remote ADD, no secrets in ENV/ARG, and its COPY list is enough
  for ``pip install .`` (a wheel is built from exactly those files);
- no secret is checked in: placeholders only, no PEM block anywhere in deploy/;
- the alert rules name metrics the exchange exports;
- the job scripts work: run for real on a temporary SQLite data directory, the admin
  jobs (compose, Kubernetes) create one admin and only once, and the keys job writes one
  Ed25519 key the exchange loads, where the replicas read it, and keeps it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

from exchange.audit.signer import Signer
from exchange.config import Settings, load_settings
from exchange.errors import InvalidArgument
from exchange.metrics import Metrics
from exchange.server import SHUTDOWN_SLACK_S, check_listen

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
IMAGE_CONFIG = DEPLOY / "container.toml"

# Variables an exchange container may set besides the settings: the settings file, and
# libpq's password variable (the password stays out of the database URL).
EXTRA_EXCHANGE_ENV = {"EXCHANGE_CONFIG", "PGPASSWORD"}
STABLE_API_VERSIONS = {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1"}
# Compose services that run the exchange image, and those of them that serve.
COMPOSE_REPLICAS = ("exchange-1", "exchange-2")
COMPOSE_JOBS = ("keys", "admin")


# -- loading ----------------------------------------------------------------------------


def setting_env_names() -> set[str]:
    """EXCHANGE_<FIELD> for top-level fields, EXCHANGE_<SECTION>_<FIELD> for sections,
    derived from the Settings type itself."""
    names: set[str] = set()
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        if isinstance(field.type, msgspec.inspect.StructType):
            for sub in field.type.fields:
                names.add(f"EXCHANGE_{field.name}_{sub.name}".upper())
        else:
            names.add(f"EXCHANGE_{field.name}".upper())
    return names


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def compose_service(name: str) -> dict[str, Any]:
    service = compose()["services"][name]
    assert isinstance(service, dict)
    return service


def exchange_services() -> list[str]:
    """The compose services that run the exchange image."""
    image = compose_service(COMPOSE_REPLICAS[0])["image"]
    return [name for name, s in compose()["services"].items() if s.get("image") == image]


_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: object) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}, as an operator who set
    every required variable would get them."""

    def one(m: re.Match[str]) -> str:
        return m.group(3) if m.group(2) in (":-", "-") else f"value-of-{m.group(1)}"

    text = str(value).lower() if isinstance(value, bool) else str(value)
    return _INTERPOLATION.sub(one, text)


def compose_env(name: str) -> dict[str, str]:
    env = compose_service(name).get("environment") or {}
    assert isinstance(env, dict), f"{name}: write environment as a mapping"
    return {key: interpolate(value) for key, value in env.items()}


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = str(path.relative_to(ROOT))
                docs.append(doc)
    return docs


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/k8s, found {len(found)}"
    return found[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(what, pod spec) of every workload in deploy/k8s."""
    for doc in k8s_documents():
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']} {doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's variables; values from Secrets become placeholders."""
    out: dict[str, str] = {}
    for var in container.get("env", []):
        out[var["name"]] = var["value"] if "value" in var else f"secret-{var['name'].lower()}"
    return out


def configmap_settings(tmp_path: Path, container: Mapping[str, Any]) -> Settings:
    """The settings a container gets: the ConfigMap's exchange.toml, written to a file,
    plus the container's environment."""
    toml = k8s("ConfigMap", "exchange-config")["data"]["exchange.toml"]
    config = tmp_path / "exchange.toml"
    config.write_text(toml)
    env = container_env(container)
    env.pop("EXCHANGE_CONFIG", None)
    return load_settings(config, environ=env)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def url_has_password(url: str) -> bool:
    userinfo = url.split("://", 1)[1].rpartition("@")[0]
    return ":" in userinfo or "password=" in url


def deployment() -> dict[str, Any]:
    return k8s("Deployment", "exchange")


def server_container() -> dict[str, Any]:
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def named_ports(container: Mapping[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(DOCKERFILE))


def instructions(name: str) -> list[str]:
    return [i["value"] for i in dockerfile().structure if i["instruction"] == name]


def runtime_instructions() -> list[dict[str, Any]]:
    """The instructions of the last stage (the image that runs)."""
    structure: list[dict[str, Any]] = dockerfile().structure
    last_from = max(i for i, ins in enumerate(structure) if ins["instruction"] == "FROM")
    return structure[last_from:]


def exposed_ports() -> set[int]:
    return {int(p.split("/")[0]) for value in instructions("EXPOSE") for p in value.split()}


def duration_s(text: str) -> float:
    """Compose durations: 1m30s, 45s, 500ms."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text}"
    return sum(float(n) * units[u] for n, u in parts)


# -- settings names ---------------------------------------------------------------------


def test_the_env_names_rule_matches_the_loader() -> None:
    names = setting_env_names()
    assert {"EXCHANGE_DATABASE", "EXCHANGE_METRICS_LISTEN", "EXCHANGE_INSECURE"} <= names
    # The loader reads the derived names, top-level and in sections.
    settings = load_settings(
        environ={
            "EXCHANGE_METRICS_LISTEN": "0.0.0.0:9999",
            "EXCHANGE_SHUTDOWN_GRACE_S": "7",
            "EXCHANGE_KAFKA_SASL_USERNAME": "someone",
        }
    )
    assert settings.metrics.listen == "0.0.0.0:9999"
    assert settings.shutdown_grace_s == 7
    assert settings.kafka.sasl_username == "someone"
    with pytest.raises(InvalidArgument, match="invalid setting"):
        load_settings(environ={"EXCHANGE_KAFKA_PARTITIONS": "not-a-number"})


@pytest.mark.parametrize("service", sorted({*COMPOSE_REPLICAS, *COMPOSE_JOBS}))
def test_compose_exchange_env_names_are_settings(service: str) -> None:
    unknown = set(compose_env(service)) - setting_env_names() - EXTRA_EXCHANGE_ENV
    assert not unknown, f"compose service {service}: no such setting {sorted(unknown)}"


def test_k8s_env_names_are_settings() -> None:
    for what, spec in pod_specs():
        for container in spec["containers"]:
            unknown = set(container_env(container)) - setting_env_names() - EXTRA_EXCHANGE_ENV
            assert not unknown, f"{what}: no such setting {sorted(unknown)}"


# -- compose ----------------------------------------------------------------------------


def test_image_default_settings_load() -> None:
    settings = load_settings(IMAGE_CONFIG, environ={})
    assert port_of(settings.listen) in exposed_ports()
    assert port_of(settings.metrics.listen) in exposed_ports()
    assert settings.listen.startswith("0.0.0.0:"), "containers must listen on all interfaces"
    # Without TLS or insecure the image refuses to serve: the operator must choose.
    assert not settings.insecure
    assert not settings.tls.cert_file


@pytest.mark.parametrize("service", COMPOSE_REPLICAS)
def test_compose_replica_settings(service: str) -> None:
    settings = load_settings(IMAGE_CONFIG, environ=compose_env(service))
    check_listen(settings)  # the server's own rule: TLS or insecure off loopback
    assert settings.insecure, "compose is a local trial on a private network"
    assert settings.database.startswith("postgresql://")
    assert not url_has_password(settings.database), "the password belongs in PGPASSWORD"
    assert settings.kafka.bootstrap
    assert settings.kafka.enable_idempotence
    assert settings.logging.format == "json"
    assert settings.audit.signing_key_file


def test_compose_replicas_share_one_signing_key_read_only() -> None:
    mounts: dict[str, set[str]] = {}
    for service in (*COMPOSE_REPLICAS, "admin"):
        key = load_settings(IMAGE_CONFIG, environ=compose_env(service)).audit.signing_key_file
        key_dir = str(Path(key).parent)
        volumes = [v for v in compose_service(service)["volumes"] if v.split(":")[1] == key_dir]
        assert volumes, f"{service}: nothing mounted at {key_dir}, where its signing key is"
        assert all(v.endswith(":ro") for v in volumes), f"{service}: mount the key read-only"
        mounts[service] = {v.split(":")[0] for v in volumes}
    keys_job = compose_service("keys")
    written = {v.split(":")[0] for v in keys_job["volumes"]}
    assert all(m == written for m in mounts.values()), f"one key volume for all: {mounts}"
    assert written <= set(compose()["volumes"])


@pytest.mark.parametrize("service", COMPOSE_REPLICAS)
def test_compose_ports_and_health(service: str) -> None:
    spec = compose_service(service)
    settings = load_settings(IMAGE_CONFIG, environ=compose_env(service))
    grpc, metrics = port_of(settings.listen), port_of(settings.metrics.listen)
    published = {int(p.split(":")[-1]) for p in spec["ports"]}
    assert published == {grpc, metrics}
    for p in spec["ports"]:
        assert p.startswith("127.0.0.1:"), f"{service}: plain gRPC is published on loopback only"
    test = spec["healthcheck"]["test"]
    assert test[:3] == ["CMD", "exchange", "health"]
    assert port_of(test[test.index("--target") + 1]) == grpc


@pytest.mark.parametrize("service", COMPOSE_REPLICAS)
def test_compose_stop_grace_exceeds_shutdown_grace(service: str) -> None:
    settings = load_settings(IMAGE_CONFIG, environ=compose_env(service))
    stop = duration_s(compose_service(service).get("stop_grace_period", "10s"))
    assert stop > settings.shutdown_grace_s + SHUTDOWN_SLACK_S, (
        f"{service}: stop_grace_period {stop}s must exceed shutdown_grace_s"
        f" {settings.shutdown_grace_s}s, or Docker kills in-flight calls"
    )


def test_compose_start_order() -> None:
    for name in ("postgres", "kafka"):
        assert compose_service(name)["healthcheck"]["test"], f"{name} needs a healthcheck"
    for service in COMPOSE_REPLICAS:
        assert compose_service(service)["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
            "keys": {"condition": "service_completed_successfully"},
            "admin": {"condition": "service_completed_successfully"},
        }
    admin = compose_service("admin")
    assert admin["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert admin["depends_on"]["keys"] == {"condition": "service_completed_successfully"}
    script = admin["command"][0]
    assert "exchange db migrate" in script
    assert re.search(r"exchange partner add .*--role admin --json", script)
    assert set(exchange_services()) == {*COMPOSE_REPLICAS, *COMPOSE_JOBS}


def test_compose_kafka_kraft_and_no_literal_secrets() -> None:
    kafka = compose_service("kafka")
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert compose_service("postgres")["image"].startswith("postgres:")
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), (
                    f"{name}: {key} must come from the operator (${{VAR:?message}})"
                )


# -- Kubernetes -------------------------------------------------------------------------


def test_k8s_manifests_are_stable_and_namespace_agnostic() -> None:
    kinds = set()
    for doc in k8s_documents():
        assert doc["apiVersion"] in STABLE_API_VERSIONS, f"{doc['__file__']}: {doc['apiVersion']}"
        assert "namespace" not in doc["metadata"], f"{doc['__file__']}: leave the namespace out"
        kinds.add(doc["kind"])
    assert {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
    } <= kinds


def test_configmap_settings_load_with_the_pod_environment(tmp_path: Path) -> None:
    for what, spec in pod_specs():
        container = spec["containers"][0]
        settings = configmap_settings(tmp_path, container)
        if what.startswith("Deployment"):
            check_listen(settings)
        assert not settings.insecure, f"{what}: production serves TLS"
        assert settings.tls.cert_file and settings.tls.key_file
        assert settings.database.startswith("postgresql://")
        assert not url_has_password(settings.database), f"{what}: the password is PGPASSWORD"
        assert settings.kafka.enable_idempotence
        assert settings.kafka.replication_factor >= 3
        assert settings.kafka.security_protocol in ("SSL", "SASL_SSL")
        assert settings.logging.format == "json"
        assert settings.kafka.sasl_password == "secret-exchange_kafka_sasl_password", (
            f"{what}: the SASL password comes from the Secret, not the ConfigMap"
        )
        assert "PGPASSWORD" in container_env(container)


def test_k8s_config_is_mounted_where_exchange_config_points() -> None:
    for what, spec in pod_specs():
        container = spec["containers"][0]
        config = Path(container_env(container)["EXCHANGE_CONFIG"])
        volume = mounted_volume(spec, container, config)
        assert volume.get("configMap", {}).get("name") == "exchange-config", what
        assert config.name == "exchange.toml"


def mounted_volume(spec: Mapping[str, Any], container: Mapping[str, Any], path: Path) -> Any:
    """The volume whose mount holds ``path`` (directly: the file is a key of it)."""
    mounts = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    assert len(mounts) == 1, f"nothing mounted at {path.parent} for {path}"
    volumes = [v for v in spec["volumes"] if v["name"] == mounts[0]["name"]]
    assert len(volumes) == 1
    return volumes[0]


def volume_keys(volume: Mapping[str, Any]) -> set[str]:
    """The file names a Secret or ConfigMap volume shows, from its items or from the
    object in deploy/k8s (placeholders included)."""
    source = volume.get("secret") or volume.get("configMap")
    assert source is not None, f"volume {volume['name']} is no Secret or ConfigMap"
    if "items" in source:
        return {item["path"] for item in source["items"]}
    kind, name = (
        ("Secret", source["secretName"]) if "secret" in volume else ("ConfigMap", source["name"])
    )
    obj = k8s(kind, name)
    return set(obj.get("data", {})) | set(obj.get("stringData", {}))


def test_k8s_files_named_by_settings_are_mounted(tmp_path: Path) -> None:
    container = server_container()
    spec = deployment()["spec"]["template"]["spec"]
    settings = configmap_settings(tmp_path, container)
    files = {
        "tls.cert_file": settings.tls.cert_file,
        "tls.key_file": settings.tls.key_file,
        "tls.client_ca_file": settings.tls.client_ca_file,
        "kafka.ssl_cafile": settings.kafka.ssl_cafile,
        "kafka.ssl_certfile": settings.kafka.ssl_certfile,
        "kafka.ssl_keyfile": settings.kafka.ssl_keyfile,
        "audit.signing_key_file": settings.audit.signing_key_file,
    }
    for name, value in files.items():
        if value:
            path = Path(value)
            volume = mounted_volume(spec, container, path)
            assert path.name in volume_keys(volume), f"{name}: {path.name} not in {volume['name']}"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[str(Path(settings.audit.signing_key_file).parent)]["readOnly"]
    # The read-only root filesystem: data_dir and /tmp are writable volumes.
    for writable in (settings.data_dir, "/tmp"):
        volume = next(v for v in spec["volumes"] if v["name"] == mounts[writable]["name"])
        assert "emptyDir" in volume, f"{writable} must be writable"


def test_every_workload_mounts_the_same_signing_key(tmp_path: Path) -> None:
    secrets = set()
    for what, spec in pod_specs():
        container = spec["containers"][0]
        key = Path(configmap_settings(tmp_path, container).audit.signing_key_file)
        volume = mounted_volume(spec, container, key)
        assert "secret" in volume, f"{what}: the signing key comes from a Secret"
        secrets.add(volume["secret"]["secretName"])
    assert len(secrets) == 1, f"every workload mounts one signing key Secret: {secrets}"


def test_k8s_ports_agree(tmp_path: Path) -> None:
    container = server_container()
    settings = configmap_settings(tmp_path, container)
    ports = named_ports(container)
    grpc, metrics = port_of(settings.listen), port_of(settings.metrics.listen)
    assert ports == {"grpc": grpc, "metrics": metrics}
    assert set(ports.values()) == exposed_ports(), "Dockerfile EXPOSE and containerPorts"
    service = k8s("Service", "exchange")
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert ports.get(target, target) == port["port"] == ports[port["name"]]
    # Every Service (the optional public one too) targets a port the container has.
    for doc in k8s_documents():
        if doc["kind"] == "Service":
            for port in doc["spec"]["ports"]:
                target = port["targetPort"]
                assert target in ports or target in ports.values(), f"{doc['__file__']}: {target}"
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_probes_use_the_metrics_port(tmp_path: Path) -> None:
    container = server_container()
    metrics = port_of(configmap_settings(tmp_path, container).metrics.listen)
    expected = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert named_ports(container).get(get["port"], get["port"]) == metrics, probe


def test_k8s_termination_grace_exceeds_shutdown_grace(tmp_path: Path) -> None:
    container = server_container()
    settings = configmap_settings(tmp_path, container)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
    grace = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.shutdown_grace_s + SHUTDOWN_SLACK_S + pause, (
        f"terminationGracePeriodSeconds {grace} must exceed shutdown_grace_s"
        f" {settings.shutdown_grace_s} + preStop {pause}"
    )


def test_k8s_security_context_matches_the_image() -> None:
    uid = int(runtime_user().split(":")[0])
    for what, spec in pod_specs():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] and pod["runAsUser"] == uid, what
        assert spec["automountServiceAccountToken"] is False, what
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"], what
            assert ctx["capabilities"]["drop"] == ["ALL"], what
            assert container["resources"]["requests"] and container["resources"]["limits"], what


def test_k8s_replicas_disruption_budget_and_selectors() -> None:
    dep = deployment()
    assert dep["spec"]["replicas"] >= 2
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    job_labels = k8s("Job", "exchange-setup")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    pdb = k8s("PodDisruptionBudget", "exchange")
    assert pdb["spec"]["minAvailable"] == 1
    services = [d["spec"]["selector"] for d in k8s_documents() if d["kind"] == "Service"]
    for selector in (
        dep["spec"]["selector"]["matchLabels"],
        pdb["spec"]["selector"]["matchLabels"],
        *services,
    ):
        assert selects(selector, pod_labels)
        assert not selects(selector, job_labels), "the setup Job must not receive calls"
    policy = k8s("NetworkPolicy", "exchange")["spec"]["podSelector"]["matchLabels"]
    assert selects(policy, pod_labels) and selects(policy, job_labels)


def test_k8s_network_policy_ports(tmp_path: Path) -> None:
    settings = configmap_settings(tmp_path, server_container())
    spec = k8s("NetworkPolicy", "exchange")["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    ingress = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert ingress == {port_of(settings.listen), port_of(settings.metrics.listen)}
    metrics = port_of(settings.metrics.listen)
    (metrics_rule,) = [r for r in spec["ingress"] if r["ports"][0]["port"] == metrics]
    assert metrics_rule.get("from"), "metrics only from the monitoring namespace"
    egress = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
    database_port = port_of(settings.database.split("@")[1].split("/")[0])
    kafka_ports = {port_of(b) for b in settings.kafka.bootstrap.split(",")}
    assert {53, database_port, *kafka_ports} <= egress
    assert egress <= {53, 5432, 9092, 9093}


def test_k8s_setup_job_migrates_and_creates_the_first_admin() -> None:
    job = k8s("Job", "exchange-setup")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == server_container()["image"]
    script = " ".join(container["args"])
    assert "exchange db migrate" in script
    assert re.search(r"exchange partner add .*--role admin\s+--json", script.replace("\\\n", " "))
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_placeholders_are_placeholders() -> None:
    for doc in k8s_documents():
        if doc["kind"] == "Secret":
            values = {**doc.get("data", {}), **doc.get("stringData", {})}
            for key, value in values.items():
                assert "REPLACE-ME" in value, f"{doc['__file__']}: {key} is not a placeholder"
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert "-----BEGIN" not in path.read_text(errors="replace"), f"{path}: a PEM block"


# -- the image --------------------------------------------------------------------------


def runtime_user() -> str:
    users = [i["value"] for i in runtime_instructions() if i["instruction"] == "USER"]
    assert users, "the image must switch to a non-root USER"
    return str(users[-1])


def test_dockerfile_promises() -> None:
    df = dockerfile()
    froms = instructions("FROM")
    assert len(froms) >= 2, "multi-stage: build tools stay out of the runtime image"
    user = runtime_user().split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000, f"USER {user} is root or a system id"
    healthchecks = instructions("HEALTHCHECK")
    assert len(healthchecks) == 1 and re.search(r'CMD \["exchange", "health"', healthchecks[0])
    for value in instructions("ADD"):
        assert not re.search(r"\b(https?|git|ftp)://|git@", value), f"ADD of a remote URL: {value}"
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["exchange"]
    assert json.loads(instructions("CMD")[-1]) == ["serve"]
    assert instructions("STOPSIGNAL") == ["SIGTERM"]
    assert {50051, 9464} <= exposed_ports()
    for ins in df.structure:
        if ins["instruction"] in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|PRIVATE", ins["value"], re.I), ins
    envs = df.envs
    assert envs["EXCHANGE_CONFIG"] == "/etc/exchange/exchange.toml"
    copies = [i["value"].split() for i in runtime_instructions() if i["instruction"] == "COPY"]
    assert ["deploy/container.toml", envs["EXCHANGE_CONFIG"]] in copies


def build_stage_copies() -> list[tuple[str, str]]:
    """(source, destination) of the build stage's COPY instructions from the context."""
    out: list[tuple[str, str]] = []
    stage = 0
    for ins in dockerfile().structure:
        if ins["instruction"] == "FROM":
            stage += 1
        elif ins["instruction"] == "COPY" and stage == 1:
            *sources, dest = ins["value"].split()
            assert not any(s.startswith("--from") for s in sources)
            out += [(s, dest) for s in sources]
    return out


def distribution_files(pyproject_dir: Path) -> set[str]:
    """What a pyproject.toml needs to build its wheel: itself, its readme and the
    directory of each top-level package it names."""
    pyproject = tomllib.loads((pyproject_dir / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    found = setuptools.get("packages", {})
    if isinstance(found, dict):  # [tool.setuptools.packages.find]
        packages = [p for p in found["find"]["include"] if "*" not in p]
    else:
        packages = [p for p in found if "." not in p]
    names = ["pyproject.toml", pyproject["project"]["readme"], *packages]
    return {str((pyproject_dir / n).relative_to(ROOT)) for n in names}


def test_dockerfile_copies_every_package_pyproject_names() -> None:
    needed = distribution_files(ROOT) | distribution_files(ROOT / "clients" / "python")
    copied = set()
    for source, dest in build_stage_copies():
        if dest.endswith("/") and not (ROOT / source).is_dir():
            copied.add(str(Path(dest.removeprefix("./")) / Path(source).name))
        else:
            copied.add(source)
    assert needed <= copied, f"deploy/Dockerfile does not COPY {sorted(needed - copied)}"


def build_context(tmp_path: Path) -> Path:
    """The build stage's /src: exactly what its COPY instructions copy."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, dest in build_stage_copies():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, src / dest, ignore=ignore)
        else:
            target = src / dest / Path(source).name if dest.endswith("/") else src / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, target)
    return src


def build_wheel(source: Path, out: Path) -> zipfile.ZipFile:
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*pip_wheel, "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def test_pip_install_works_from_what_the_dockerfile_copies(tmp_path: Path) -> None:
    """What the build stage's two `pip install` steps need, short of downloading
    dependencies: both wheels build from exactly the copied files; the server's has the
    `exchange` command and depends on the SDK's, which alone holds exchange_client."""
    src = build_context(tmp_path)
    with build_wheel(src / "clients" / "python", tmp_path / "client") as client:
        client_files = {n for n in client.namelist() if ".dist-info/" not in n}
    with build_wheel(src, tmp_path / "server") as server:
        names = server.namelist()
        server_files = {n for n in names if ".dist-info/" not in n}
        entry_points = server.read(next(n for n in names if n.endswith("entry_points.txt")))
        metadata = server.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert "exchange = exchange.cli:main" in entry_points.decode()
    assert "Requires-Dist: exchange-client" in metadata.decode()
    assert {n.split("/")[0] for n in client_files} == {"exchange_client", "exchange_protocol"}
    assert {n.split("/")[0] for n in server_files} == {"exchange"}
    assert "exchange_protocol/pb/exchange_pb2.pyi" in client_files
    # The stores' migrations are resources of their packages.
    assert {"exchange/store/sqlite/schema/v1.sql", "exchange/store/postgres/schema/v1.sql"} <= (
        server_files
    )


def requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
        names.add(re.sub(r"[-_.]+", "-", name).lower())
    return names


def test_the_lock_pins_every_dependency_the_image_installs() -> None:
    """deploy/requirements.lock (scripts/lock) holds, with hashes, every third-party
    dependency of the server (with PostgreSQL) and the SDK, and nothing of ours."""
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    wanted = requirement_names(
        server["dependencies"]
        + server["optional-dependencies"]["postgres"]
        + client["dependencies"]
    ) - {"exchange-client"}
    lock = (ROOT / "deploy" / "requirements.lock").read_text()
    pinned = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+ \\\n\s+--hash=sha256:", lock, re.M)
    assert wanted <= requirement_names(pinned), sorted(wanted - requirement_names(pinned))
    assert not {"exchange-client", "trafficking-indicator-exchange"} & requirement_names(pinned)
    assert "://" not in lock, "the lock names no index"


# -- alerts -----------------------------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every series name the exchange's /metrics can show, with the suffixes Prometheus
    sees (counters: _total; histograms: _bucket, _count, _sum)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names: set[str] = set()
    for family in Metrics(process=False).registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def test_alert_rules_name_real_metrics() -> None:
    rules_file = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    exported = exported_metric_names()
    rules = [rule for group in rules_file["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {"ExchangeNotServing", "ExchangeRelayBehind"}
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        duration_s(rule["for"])
        used = set(re.findall(r"\bexchange_\w+", rule["expr"]))
        assert used, f"{rule['alert']}: names no exchange metric"
        assert used <= exported, f"{rule['alert']}: no such metric {sorted(used - exported)}"


# -- the job scripts, run for real against a temporary SQLite data directory -----------


def run_job(argv: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run a job's command with the exchange of this environment on PATH, and only the
    settings given here (the embedded store in ``data_dir`` instead of PostgreSQL)."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(data_dir),
        "EXCHANGE_DATA_DIR": str(data_dir),
    }
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)


def admin_job_commands() -> dict[str, list[str]]:
    admin = compose_service("admin")
    job = k8s("Job", "exchange-setup")["spec"]["template"]["spec"]["containers"][0]
    return {
        "compose admin": [*admin["entrypoint"], *admin["command"]],
        "k8s exchange-setup": [*job["command"], *job["args"]],
    }


@pytest.mark.parametrize("job", ["compose admin", "k8s exchange-setup"])
def test_admin_job_migrates_and_creates_one_admin(job: str, tmp_path: Path) -> None:
    argv = admin_job_commands()[job]
    first = run_job(argv, tmp_path)
    assert first.returncode == 0, first.stderr
    record = json.loads(first.stdout.strip().splitlines()[-1])
    assert record["token"] and record["partner_id"].startswith("exchange-operations")
    # Run again (every `up`, every upgrade): migrations are a no-op, no second admin.
    second = run_job(argv, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "token" not in second.stdout
    assert "exists already" in second.stderr


def test_keys_job_creates_one_shared_key_and_keeps_it(tmp_path: Path) -> None:
    keys = compose_service("keys")
    script = keys["command"][0]
    shared = load_settings(IMAGE_CONFIG, environ=compose_env("exchange-1")).audit.signing_key_file
    assert f'"{shared}"' in script, "the keys job writes where the replicas read"
    key = tmp_path / "audit" / "audit-signing-key.pem"
    key.parent.mkdir()
    argv = [sys.executable, *keys["entrypoint"][1:], script.replace(shared, str(key))]
    first = run_job(argv, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert key.stat().st_mode & 0o777 == 0o400
    signer = Signer.load(key)  # what the exchange itself reads
    assert signer.public_key_pem == first.stdout
    second = run_job(argv, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout, "a second run must keep the key"


def strings_in(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def test_compose_dollars_are_interpolations_or_escaped() -> None:
    """Compose replaces $NAME and ${NAME} everywhere, scripts included: a shell or Python
    `$` must be written `$$`."""
    for text in strings_in(compose()["services"]):
        bare = re.findall(r"\$(?!\$|\{\w+(?::?[-?][^}]*)?\})", text.replace("$$", ""))
        assert not bare, f"unescaped $ in compose value: {text[:80]!r}"
