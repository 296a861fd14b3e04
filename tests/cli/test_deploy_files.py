"""docker-compose.yml, the Dockerfile and deploy/: valid YAML, wired the way the code expects.

No Docker engine or cluster here, so these tests parse the files, check what they promise
(probes, AOF, PDB, HPA, NetworkPolicy, placeholder secrets) and feed their commands and config
files to the real CLI parser and config loaders. The Kubernetes objects are those the
kustomization renders (tests/deploy/kustomize.py), plus the example Secrets; tests/deploy
validates them against the Kubernetes schemas.
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
from service.settings import Settings
from service.store.redis_config import HASH_MAX_LISTPACK_VALUE, SETTING
from service.store.subscribers import load_subscribers_file
from tests.deploy.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
COMPOSE = ROOT / "docker-compose.yml"
YAML_FILES = sorted([COMPOSE, *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kube_objects() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/kubernetes` applies, and the example Secrets."""
    return render(KUBE) + load_all(KUBE / "secret.example.yaml")


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
    """The example Secrets carry placeholder values, never something that looks real."""
    secrets = of_kind("Secret")
    assert secrets
    for secret in secrets:
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


def test_compose_and_kubernetes_redis_keep_event_hashes_compact() -> None:
    """Both Redis deployments set hash-max-listpack-value to what the event hashes need."""
    wanted = f"{SETTING} {HASH_MAX_LISTPACK_VALUE}"
    assert f"--{wanted}" in " ".join(compose()["services"]["redis"]["command"])
    values = yaml.safe_load((KUBE / "redis-sentinel-values.yaml").read_text())
    assert wanted in values["commonConfiguration"].splitlines()


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


def dockerfile_stages() -> list[str]:
    """The Dockerfile's stages, each from its FROM line to the next one."""
    text = (ROOT / "Dockerfile").read_text()
    return re.split(r"(?m)^(?=FROM )", text)[1:]


def test_dockerfile_installs_the_runtime_lock_then_the_project() -> None:
    """The builder stage installs requirements-runtime.lock with hashes, then the project
    without deps; the final stage copies only the venv, runs as uid 10001, has a HEALTHCHECK."""
    builder, final = dockerfile_stages()
    lock = builder.index("pip install --require-hashes -r requirements-runtime.lock")
    project = builder.index("pip install --no-deps .")
    assert lock < project
    assert "requirements.lock" not in builder.replace("requirements-runtime.lock", "")
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    assert "pip install" not in final
    assert 'ENTRYPOINT ["kartahook"]' in final
    assert "USER 10001" in final
    healthcheck = re.search(r"(?ms)^HEALTHCHECK .*?\]$", final)
    assert healthcheck and "/healthz" in healthcheck.group(0)


def test_dockerfile_base_is_pinned_to_an_exact_python() -> None:
    """Both stages start from the same base, pinned to an exact 3.11.x slim-bookworm tag."""
    text = (ROOT / "Dockerfile").read_text()
    [base] = re.findall(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", text)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    assert [stage.split()[1] for stage in dockerfile_stages()] == ["${PYTHON_IMAGE}"] * 2


def test_runtime_lock_is_the_dev_lock_without_dev_tools() -> None:
    """requirements-runtime.lock pins (with hashes) the same versions as requirements.lock,
    and none of the dev tools (pytest, mypy, ruff, py-spy, kubernetes-validate)."""

    def pins(name: str) -> dict[str, str]:
        text = (ROOT / name).read_text()
        assert "--hash=sha256:" in text
        return dict(re.findall(r"(?m)^([a-z0-9_.-]+)==(\S+)", text))

    runtime, full = pins("requirements-runtime.lock"), pins("requirements.lock")
    assert runtime and runtime.items() <= full.items()
    dev = {"pytest", "mypy", "ruff", "py-spy", "kubernetes-validate", "pyinstrument"}
    assert not dev & runtime.keys()
    assert dev <= full.keys()
    assert {"starlette", "uvicorn", "redis", "arq"} <= runtime.keys()


def test_dockerignore_keeps_tests_docs_and_local_state_out() -> None:
    """The build context leaves out tests, docs, .venv, var and the dev lock."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {"tests", "docs", ".venv", "var", "requirements.lock"} <= ignored
    assert "requirements-runtime.lock" not in ignored


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


def test_compose_service_runs_both_listeners_with_an_admin_token() -> None:
    """The service listens on its public and admin ports, publishes both on 127.0.0.1 and has
    an admin token."""
    service = compose()["services"]["service"]
    args = parse_cli(service["command"])
    assert args.admin_port and args.admin_port != args.port
    published = {p.rsplit(":", 1)[1] for p in service["ports"]}
    assert published == {str(args.port), str(args.admin_port)}
    assert all(p.startswith("127.0.0.1:") for p in service["ports"])
    assert compose_default(compose_env(service)["KARTAHOOK_ADMIN_TOKEN"])


def test_compose_worker_health_is_checked_on_its_probe_port() -> None:
    """The worker serves its probes on --port, and its healthcheck fetches /healthz there."""
    worker = compose()["services"]["worker"]
    args = parse_cli(worker["command"])
    assert args.port and args.host == "0.0.0.0"
    test = " ".join(worker["healthcheck"]["test"])
    assert f"http://127.0.0.1:{args.port}/healthz" in test


def test_compose_demo_keeps_its_urls_when_given_another_command() -> None:
    """`docker compose run --rm demo demo --payments 20` still reaches the sandbox and the demo
    subscriber: both URLs come from the environment, not from the replaced command."""
    services = compose()["services"]
    demo = services["demo"]
    # What the documented command leaves: no URL on the line, so the environment decides.
    args = parse_cli(["demo", "--payments", "20"])
    assert args.kartapay_url is None
    env = compose_env(demo)
    subscriber_port = parse_cli(services["demo-subscriber"]["command"]).port
    sandbox_port = parse_cli(services["sandbox"]["command"]).port
    assert env["KARTAHOOK_DEMO_SUBSCRIBER_URL"] == f"http://demo-subscriber:{subscriber_port}"
    assert env["KARTAHOOK_KARTAPAY_URL"] == f"http://sandbox:{sandbox_port}"
    assert "--subscriber-url" not in demo["command"]


def test_compose_environment_names_are_read_by_kartahook() -> None:
    """Every KARTAHOOK_* variable compose sets is a Settings field or one a command reads."""
    fields = {f"KARTAHOOK_{name.upper()}" for name in Settings.model_fields}
    sources = "".join(p.read_text() for p in (ROOT / "kartahook").rglob("*.py"))
    for name, service in compose()["services"].items():
        for variable in compose_env(service):
            if variable.startswith("KARTAHOOK_"):
                assert variable in fields or f'"{variable}"' in sources, (name, variable)
