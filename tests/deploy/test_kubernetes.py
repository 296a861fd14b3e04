"""deploy/kubernetes rendered offline (tests/deploy/kustomize.py) and validated against the
Kubernetes OpenAPI schemas (the kubernetes-validate package, strict: unknown fields fail), then
checked for what the operations issue asked: pods roll on config changes, the HPA owns the
replica count, a writable /tmp on a read-only root, no service account token, Secrets split per
Deployment, the admin port internal only, readiness on Redis only, pinned chart and images."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kartahook.cli import build_parser
from service.settings import Settings
from tests.deploy.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
# The Kubernetes version the manifests are validated for (schemas ship in kubernetes-validate).
KUBERNETES_VERSION = "1.32"
SERVICE_SECRETS = "kartahook-service-secrets"
WORKER_SECRETS = "kartahook-worker-secrets"
REDIS_SECRET = "kartahook-redis"


def rendered() -> list[dict[str, Any]]:
    return render(KUBE)


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def deployment(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [found] = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == name]
    return found


def container(obj: dict[str, Any]) -> dict[str, Any]:
    [only] = obj["spec"]["template"]["spec"]["containers"]
    return only


def example_secrets() -> dict[str, dict[str, str]]:
    docs = [d for d in yaml.safe_load_all((KUBE / "secret.example.yaml").read_text()) if d]
    return {d["metadata"]["name"]: d["stringData"] for d in docs}


def referenced_secrets(obj: dict[str, Any]) -> set[str]:
    pod = obj["spec"]["template"]["spec"]
    names = set()
    for c in pod["containers"]:
        names |= {s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s}
        for env in c.get("env", []):
            if "secretKeyRef" in env.get("valueFrom", {}):
                names.add(env["valueFrom"]["secretKeyRef"]["name"])
    names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return names


def test_every_rendered_object_is_valid_for_the_pinned_kubernetes_version() -> None:
    """Each object kustomize renders, and each example Secret, passes the strict schema of
    Kubernetes 1.32 (a misspelt or misplaced field fails)."""
    examples = [d for d in yaml.safe_load_all((KUBE / "secret.example.yaml").read_text()) if d]
    objects = rendered() + examples
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "NetworkPolicy", "ServiceAccount", "Secret"} <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_an_unknown_field() -> None:
    """The schema check is real: a Deployment with a misspelt container field fails it."""
    broken = rendered()
    bad = of_kind(broken, "Deployment")[0]
    container(bad)["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_configmap_is_generated_so_a_change_rolls_the_pods(tmp_path: Path) -> None:
    """The ConfigMap comes from a generator (name with a content hash) that both Deployments
    reference; changing one setting gives it, and the Deployments' references, a new name."""
    objects = rendered()
    [config] = of_kind(objects, "ConfigMap")
    name = config["metadata"]["name"]
    assert re.fullmatch(r"kartahook-config-[a-z0-9]{10}", name)
    assert not (KUBE / "configmap.yaml").exists()
    for d in of_kind(objects, "Deployment"):
        c = container(d)
        assert {"configMapRef": {"name": name}} in c["envFrom"]
        volumes = d["spec"]["template"]["spec"]["volumes"]
        assert any(v.get("configMap", {}).get("name") == name for v in volumes)

    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBE, copy)
    env = copy / "config" / "kartahook.env"
    env.write_text(env.read_text().replace("KARTAHOOK_LOG_LEVEL=INFO", "KARTAHOOK_LOG_LEVEL=DEBUG"))
    changed = render(copy)
    [new_config] = of_kind(changed, "ConfigMap")
    assert new_config["metadata"]["name"] != name
    refs = {
        container(d)["envFrom"][0]["configMapRef"]["name"] for d in of_kind(changed, "Deployment")
    }
    assert refs == {new_config["metadata"]["name"]}


def test_configmap_settings_are_real_settings() -> None:
    """Every KARTAHOOK_* key of the generated ConfigMap is a Settings field."""
    [config] = of_kind(rendered(), "ConfigMap")
    fields = {f"KARTAHOOK_{name.upper()}" for name in Settings.model_fields}
    keys = {key for key in config["data"] if key.startswith("KARTAHOOK_")}
    assert keys and keys <= fields, keys - fields


def test_hpa_owns_the_replica_count() -> None:
    """No HPA-scaled Deployment sets spec.replicas (an apply would reset the HPA's count)."""
    objects = rendered()
    scaled = {
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind(objects, "HorizontalPodAutoscaler")
    }
    deployments = of_kind(objects, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} <= scaled
    assert all("replicas" not in d["spec"] for d in deployments)


def test_read_only_root_with_a_writable_tmp() -> None:
    """Each container has a read-only root filesystem and an emptyDir mounted on /tmp (where
    `serve --workers N` makes its metrics directory)."""
    for d in of_kind(rendered(), "Deployment"):
        c = container(d)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        [tmp] = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes[tmp["name"]]


def test_no_service_account_token_is_mounted() -> None:
    """Pods run under a ServiceAccount of their own with automountServiceAccountToken false."""
    objects = rendered()
    [account] = of_kind(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    for d in of_kind(objects, "Deployment"):
        pod = d["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False


def test_secrets_are_split_per_deployment() -> None:
    """The service gets the source secrets and the admin token, the worker the KartaPay token
    and the subscribers' secrets; each gets the Redis password; neither gets the other's."""
    objects = rendered()
    examples = example_secrets()
    service = deployment(objects, "kartahook-service")
    worker = deployment(objects, "kartahook-worker")
    assert referenced_secrets(service) == {SERVICE_SECRETS, REDIS_SECRET}
    assert referenced_secrets(worker) == {WORKER_SECRETS, REDIS_SECRET}
    assert set(examples) == {SERVICE_SECRETS, WORKER_SECRETS, REDIS_SECRET}
    assert "KARTAHOOK_ADMIN_TOKEN" in examples[SERVICE_SECRETS]
    assert "KARTAHOOK_KARTAPAY_TOKEN" in examples[WORKER_SECRETS]
    assert not examples[SERVICE_SECRETS].keys() & examples[WORKER_SECRETS].keys()
    # The ${VAR}s of each Deployment's config file are in that Deployment's Secret.
    [config] = of_kind(objects, "ConfigMap")
    for name, key, secret in (
        ("kartahook-service", "sources.yaml", SERVICE_SECRETS),
        ("kartahook-worker", "subscribers.yaml", WORKER_SECRETS),
    ):
        items = [v for v in deployment(objects, name)["spec"]["template"]["spec"]["volumes"]]
        mounted = {i["key"] for v in items if "configMap" in v for i in v["configMap"]["items"]}
        assert mounted == {key}
        wanted = set(re.findall(r"\$\{(\w+)\}", config["data"][key]))
        assert wanted and wanted <= examples[secret].keys()


def test_readiness_is_redis_only_and_the_backlog_is_an_alert() -> None:
    """Readiness probes /readyz with the backlog check off; the example alert rules watch the
    backlog and the dead letters through metrics the service exports."""
    objects = rendered()
    [config] = of_kind(objects, "ConfigMap")
    assert config["data"]["KARTAHOOK_BACKLOG_HIGH_WATER"] == "0"
    for d in of_kind(objects, "Deployment"):
        assert container(d)["readinessProbe"]["httpGet"]["path"] == "/readyz"
    rule = yaml.safe_load((KUBE / "prometheusrule.example.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    exported = (ROOT / "service" / "api" / "metrics_route.py").read_text()
    for metric in ("kartahook_queue_jobs", "kartahook_dead_letters"):
        assert metric in exprs and f'"{metric}"' in exported
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert "prometheusrule.example.yaml" not in kustomization["resources"]


def test_admin_port_is_internal_and_the_public_port_open() -> None:
    """The service's NetworkPolicy admits the public port from anywhere and the admin port only
    from selected namespaces; the Deployment's args, ports and settings agree on both."""
    objects = rendered()
    service = deployment(objects, "kartahook-service")
    c = container(service)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = build_parser().parse_args(c["args"])
    assert (args.port, args.admin_port) == (ports["http"], ports["admin"])
    [config] = of_kind(objects, "ConfigMap")
    assert int(config["data"]["KARTAHOOK_ADMIN_PORT"]) == ports["admin"]
    [policy] = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        == "kartahook-service"
    ]
    rules = {r["ports"][0]["port"]: r for r in policy["spec"]["ingress"]}
    assert set(rules) == {ports["http"], ports["admin"]}
    assert "from" not in rules[ports["http"]]
    admin_from = rules[ports["admin"]]["from"]
    assert admin_from and all(
        peer.get("namespaceSelector", {}).get("matchLabels") for peer in admin_from
    )
    # The load-balanced Service exposes only the public port.
    public = [
        s for s in of_kind(objects, "Service") if s["metadata"]["name"] == "kartahook-service"
    ]
    assert [p["targetPort"] for p in public[0]["spec"]["ports"]] == ["http"]


def test_images_and_the_redis_chart_are_pinned() -> None:
    """The kartahook image has a fixed tag; the Redis values pin every image tag; the docs'
    helm command and the values file name one and the same chart version."""
    for d in of_kind(rendered(), "Deployment"):
        image = container(d)["image"]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image), image
    values_text = (KUBE / "redis-sentinel-values.yaml").read_text()
    values = yaml.safe_load(values_text)
    for image in (values["image"], values["sentinel"]["image"]):
        assert image["repository"] and image["tag"] and image["tag"] != "latest"
        assert re.match(r"\d+\.\d+\.\d+", image["tag"])
    [in_values] = set(re.findall(r"--version (\S+)", values_text))
    docs = (ROOT / "docs" / "operations.md").read_text()
    helm = [line for line in docs.splitlines() if "bitnamicharts/redis" in line]
    assert helm
    assert set(re.findall(r"--version (\S+)", docs)) == {in_values}
