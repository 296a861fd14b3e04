"""A small, offline renderer of the subset of kustomize that ``deploy/kubernetes`` uses.

Supported kustomization fields: ``resources`` (files), ``namespace``, ``labels`` (``pairs``,
``includeSelectors``, ``includeTemplates``), ``configMapGenerator`` / ``secretGenerator``
(``envs``, ``files``, ``literals``; content-hash name suffix as kustomize computes it, and name
references from workloads rewritten to the suffixed name) and ``images`` (``newName``,
``newTag``, ``digest``). Anything else raises :class:`Unsupported`, so the renderer can never
silently produce something kustomize would not. ``tests/deploy/test_kustomize.py`` checks it
against ``kubectl kustomize`` when kubectl is installed, and against hashes kustomize computed.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
    "secretGenerator",
    "images",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not implement."""


def encode_hash(hex_digest: str) -> str:
    """kustomize's ``encodeHash``: the first 10 hex digits, with 0,1,3,a,e made unambiguous."""
    table = str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"})
    return hex_digest[:10].translate(table)


def _go_json(value: Any) -> str:
    """``json.Marshal`` of Go: sorted keys, no spaces, HTML-safe escapes, UTF-8 kept."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def content_hash(obj: dict[str, Any]) -> str:
    """The suffix kustomize appends to a generated ConfigMap's or Secret's name."""
    # kustomize 5 reads "name" at the top level of the object, where there is none: the name
    # is hashed as "" (checked against `kubectl kustomize`, kustomize v5.5.0).
    encoded: dict[str, Any] = {"kind": obj["kind"], "name": ""}
    encoded["data"] = obj.get("data") or {}
    if obj["kind"] == "Secret":
        encoded["type"] = obj.get("type", "Opaque")
    if obj.get("binaryData"):
        encoded["binaryData"] = obj["binaryData"]
    if obj.get("immutable"):
        encoded["immutable"] = True
    return encode_hash(hashlib.sha256(_go_json(encoded).encode()).hexdigest())


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as kustomize reads ``envs`` files: blank and ``#`` lines skipped."""
    data: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key or any(c.isspace() for c in key):
            raise Unsupported(f"env file line {number}: {raw!r}")
        data[key] = value
    return data


def _generated(kind: str, spec: dict[str, Any], base: Path) -> dict[str, Any]:
    unknown = set(spec) - {"name", "envs", "files", "literals", "type", "behavior"}
    if unknown or spec.get("behavior", "create") != "create":
        raise Unsupported(f"{kind} generator fields {sorted(unknown)}")
    data: dict[str, str] = {}
    for env in spec.get("envs", []):
        data.update(parse_env_file((base / env).read_text()))
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for entry in spec.get("files", []):
        key, sep, path = entry.partition("=")
        if not sep:
            key, path = Path(entry).name, entry
        data[key] = (base / path).read_text()
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    obj["data"] = data
    return obj


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] in WORKLOADS:
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if obj["kind"] == "Pod":
        return [obj["spec"]]
    return []


def _rename_references(obj: dict[str, Any], kind: str, names: dict[str, str]) -> None:
    """Point a workload's references to generated ConfigMaps/Secrets at their hashed names."""
    ref, key_ref, volume_key, volume_name = (
        ("configMapRef", "configMapKeyRef", "configMap", "name")
        if kind == "ConfigMap"
        else ("secretRef", "secretKeyRef", "secret", "secretName")
    )

    def rename(holder: dict[str, Any], field: str) -> None:
        if holder.get(field) in names:
            holder[field] = names[holder[field]]

    for pod in _pod_specs(obj):
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            for source in container.get("envFrom", []):
                if ref in source:
                    rename(source[ref], "name")
            for env in container.get("env", []):
                if key_ref in env.get("valueFrom", {}):
                    rename(env["valueFrom"][key_ref], "name")
        for volume in pod.get("volumes", []):
            if volume_key in volume:
                rename(volume[volume_key], volume_name)
            for source in volume.get("projected", {}).get("sources", []):
                if volume_key in source:
                    rename(source[volume_key], "name")
        if kind == "Secret":
            for pull in pod.get("imagePullSecrets", []):
                rename(pull, "name")


def _set_image(container: dict[str, Any], images: list[dict[str, Any]]) -> None:
    image: str = container["image"]
    name, digest = image.split("@", 1) if "@" in image else (image, None)
    last = name.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    for rule in images:
        if rule["name"] != name:
            continue
        unknown = set(rule) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise Unsupported(f"images fields {sorted(unknown)}")
        name = rule.get("newName", name)
        if "digest" in rule:
            tag, digest = None, rule["digest"]
        elif "newTag" in rule:
            tag, digest = str(rule["newTag"]), None
        container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
        return


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize DIRECTORY`` outputs (in no particular order)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise Unsupported(f"kustomization fields {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            raise Unsupported(f"resource directory {resource}")
        objects += [copy.deepcopy(d) for d in yaml.safe_load_all(path.read_text()) if d]

    generated: dict[str, dict[str, str]] = {"ConfigMap": {}, "Secret": {}}
    made = []
    for field, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for spec in kustomization.get(field, []):
            made.append(_generated(kind, spec, directory))
    namespace = kustomization.get("namespace")
    for obj in objects + made:
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
    for label_set in kustomization.get("labels", []):
        unknown = set(label_set) - {"pairs", "includeSelectors", "includeTemplates"}
        if unknown or label_set.get("includeSelectors"):
            raise Unsupported(f"labels fields {sorted(unknown)} or includeSelectors")
        for obj in objects + made:
            obj["metadata"].setdefault("labels", {}).update(label_set["pairs"])
            if label_set.get("includeTemplates") and obj["kind"] in WORKLOADS:
                template = obj["spec"]["template"].setdefault("metadata", {})
                template.setdefault("labels", {}).update(label_set["pairs"])
    for obj in made:
        # The hash covers the final data and the base name (labels and namespace excluded).
        name = obj["metadata"]["name"]
        hashed = f"{name}-{content_hash(obj)}"
        generated[obj["kind"]][name] = hashed
        obj["metadata"]["name"] = hashed
    objects += made
    for obj in objects:
        for kind, names in generated.items():
            if names:
                _rename_references(obj, kind, names)
        for pod in _pod_specs(obj):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                _set_image(container, kustomization.get("images", []))
    return objects
