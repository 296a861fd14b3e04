"""docker-compose.yml, the Dockerfile and deploy/: valid YAML, wired the way the code expects.

No Docker engine or cluster here, so these tests parse the files, check what they promise
(probes, AOF, PDB, HPA, NetworkPolicy, placeholder secrets) and feed their commands and config
files to the real CLI parser and config loaders.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kartahook.cli import build_parser
from service.api.ingest.sources.config import load_sources
from service.store.subscribers import load_subscribers_file

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
COMPOSE = ROOT / "docker-compose.yml"
YAML_FILES = sorted([COMPOSE, *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kube_objects() -> list[dict[str, Any]]:
    skip = {"kustomization.yaml", "redis-sentinel-values.yaml"}
    return [doc for p in sorted(KUBE.glob("*.yaml")) if p.name not in skip for doc in load_all(p)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for obj in kube_objects() if obj["kind"] == kind]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse ``kartahook <argv>`` with the real parser."""
    return build_parser().parse_args(argv)


def compose_default(value: str) -> str:
    """The default of a compose ``${VAR:-default}`` value."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_is_valid_yaml(path: Path) -> None:
    """Each YAML file under deploy/ and docker-compose.yml parses and is not empty."""
    assert load_all(path)


def test_kubernetes_objects_are_named_and_namespaced() -> None:
    """Every manifest has apiVersion, kind and a name; all but the Namespace live in kartahook."""
    objects = kube_objects()
    assert objects
    for obj in objects:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "kartahook"


def test_deployments_probe_healthz_and_readyz_and_set_resources() -> None:
    """Service and worker Deployments: liveness on /healthz, readiness on /readyz, resources."""
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    assert set(deployments) == {"kartahook-service", "kartahook-worker"}
    for deployment in deployments.values():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        for container in spec["template"]["spec"]["containers"]:
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert "memory" in container["resources"]["limits"]
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            assert env["KARTAHOOK_REDIS_URL"].startswith("redis+sentinel://")


def test_deployment_args_parse_with_the_real_cli() -> None:
    """The container args of each Deployment are accepted by the kartahook parser."""
    for deployment in of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert parse_cli(container["args"]).command in {"serve", "worker"}


def test_each_deployment_has_a_pdb_and_an_hpa() -> None:
    """A PodDisruptionBudget selects each Deployment's pods, and an HPA scales each one."""
    deployments = of_kind("Deployment")
    pdbs = of_kind("PodDisruptionBudget")
    hpas = of_kind("HorizontalPodAutoscaler")
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(p["spec"]["selector"]["matchLabels"].items() <= labels.items() for p in pdbs)
        targets = [h["spec"]["scaleTargetRef"] for h in hpas]
        assert {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
        } in targets
        for hpa in hpas:
            assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_network_policies_default_deny_and_cover_each_deployment() -> None:
    """A default-deny policy exists, and each Deployment's pods have a policy of their own."""
    policies = of_kind("NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} for p in policies)
    for deployment in of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(
            p["spec"]["podSelector"].get("matchLabels", {"-": "-"}).items() <= labels.items()
            for p in policies
        )


def test_example_secret_holds_only_placeholders() -> None:
    """The example Secret carries placeholder values, never something that looks real."""
    [secret] = of_kind("Secret")
    values = secret["stringData"]
    assert values
    assert all("REPLACE_ME" in value for value in values.values())


def test_configmap_files_load_with_the_real_loaders(tmp_path: Path) -> None:
    """The ConfigMap's sources and subscribers files pass kartahook's own loaders."""
    [config] = of_kind("ConfigMap")
    data = config["data"]
    env = {"KARTAPAY_WEBHOOK_SECRET": "whsec_AAAA", "LEDGER_WEBHOOK_SECRET": "whsec_BBBB"}
    (tmp_path / "sources.yaml").write_text(data["sources.yaml"])
    (tmp_path / "subscribers.yaml").write_text(data["subscribers.yaml"])
    assert "kartapay" in load_sources(tmp_path / "sources.yaml", env)
    allowlist = data["KARTAHOOK_SUBSCRIBER_ALLOWLIST"].split(",")
    subscribers = load_subscribers_file(tmp_path / "subscribers.yaml", allowlist, env)
    assert [s.id for s in subscribers] == ["ledger"]
    assert data["KARTAHOOK_SOURCES_FILE"].startswith("/etc/kartahook/")


def test_kustomization_lists_existing_files_but_not_the_example_secret() -> None:
    """kustomization.yaml names files that exist, and leaves out the example Secret."""
    resources = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]
    assert all((KUBE / name).exists() for name in resources)
    assert "secret.example.yaml" not in resources


def test_compose_runs_redis_with_aof_on_a_volume() -> None:
    """Compose's Redis has AOF on and keeps /data on a named volume."""
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["volumes"][0].split(":")[0] in compose()["volumes"]


def test_compose_services_use_the_image_and_valid_commands() -> None:
    """service, worker, sandbox, demo subscriber (and demo) build the one image, and their
    commands parse with the real kartahook CLI."""
    services = compose()["services"]
    expected = {"service": "serve", "worker": "worker", "sandbox": "sandbox"}
    expected |= {"demo-subscriber": "demo-subscriber", "demo": "demo"}
    for name, command in expected.items():
        assert services[name]["build"] == "."
        assert services[name]["command"][0] == command
        assert parse_cli(services[name]["command"]).command == command


def test_compose_secrets_match_between_signers_and_verifiers(tmp_path: Path) -> None:
    """The sandbox signs with the secret the service's source accepts; fan-out signs with the
    secret the demo subscriber verifies with; the compose config files load for real."""
    services = compose()["services"]
    service_env = services["service"]["environment"]
    sandbox_env = services["sandbox"]["environment"]
    subscriber_env = services["demo-subscriber"]["environment"]
    source_secret = compose_default(service_env["KARTAPAY_WEBHOOK_SECRET"])
    demo_secret = compose_default(service_env["DEMO_SUBSCRIBER_WEBHOOK_SECRET"])
    assert compose_default(sandbox_env["KARTAHOOK_SANDBOX_WEBHOOK_SECRET"]) == source_secret
    assert compose_default(subscriber_env["KARTAHOOK_DEMO_SUBSCRIBER_SECRET"]) == demo_secret
    env = {"KARTAPAY_WEBHOOK_SECRET": source_secret, "DEMO_SUBSCRIBER_WEBHOOK_SECRET": demo_secret}
    assert "kartapay" in load_sources(DEPLOY / "compose" / "sources.yaml", env)
    allowlist = service_env["KARTAHOOK_SUBSCRIBER_ALLOWLIST"].split(",")
    [demo] = load_subscribers_file(DEPLOY / "compose" / "subscribers.yaml", allowlist, env)
    assert demo.url.startswith("http://demo-subscriber:8702/")
    sandbox_args = parse_cli(services["sandbox"]["command"])
    assert sandbox_args.webhook_url == "http://service:8700/v1/webhooks/kartapay"


def test_dockerfile_installs_the_lock_then_the_project() -> None:
    """The image installs requirements.lock with hashes before the project, without deps."""
    text = (ROOT / "Dockerfile").read_text()
    lock = text.index("pip install --require-hashes -r requirements.lock")
    project = text.index("pip install --no-deps .")
    assert lock < project
    assert 'ENTRYPOINT ["kartahook"]' in text
    assert "USER 10001" in text
