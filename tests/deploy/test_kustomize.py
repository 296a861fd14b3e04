"""The offline kustomize renderer the deploy tests use (tests/deploy/kustomize.py): it produces
what kustomize produces, and refuses what it does not implement."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kustomize import Unsupported, content_hash, parse_env_file, render

KUBE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"

# Names `kubectl kustomize` (kustomize v5.5.0) gave these generators.
GENERATORS = """\
secretGenerator:
  - name: s
    literals: ["A=1", "B=<x&y>"]
  - name: t
    type: kubernetes.io/tls
    literals: ["tls.crt=x", "tls.key=y"]
configMapGenerator:
  - name: c
    literals: ["K=v"]
"""
KUSTOMIZE_NAMES = {"c-276ch85d82", "s-kh5mmmdttc", "t-f4c6k54dt5"}


def by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_generated_names_carry_the_hash_kustomize_computes(tmp_path: Path) -> None:
    """ConfigMap and Secret generators get the very name suffixes kustomize gives them."""
    (tmp_path / "kustomization.yaml").write_text(GENERATORS)
    names = {o["metadata"]["name"] for o in render(tmp_path)}
    assert names == KUSTOMIZE_NAMES


def test_a_changed_value_changes_the_generated_name() -> None:
    """Any change of a generated ConfigMap's data gives it another name (pods roll)."""
    config = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"K": "v"}}
    changed = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"K": "w"}}
    assert content_hash(config) != content_hash(changed)


def test_env_files_skip_comments_and_refuse_lines_without_a_value() -> None:
    """envs files: comments and blank lines skipped, values verbatim, a bare word refused."""
    assert parse_env_file("# c\n\nA=1\nB= x=y \n") == {"A": "1", "B": " x=y "}
    with pytest.raises(Unsupported):
        parse_env_file("JUSTAKEY\n")


def test_unknown_kustomization_fields_are_refused(tmp_path: Path) -> None:
    """A kustomization field the renderer does not implement raises instead of being ignored."""
    (tmp_path / "kustomization.yaml").write_text("patches: []\nresources: []\n")
    with pytest.raises(Unsupported):
        render(tmp_path)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("which", ["repo", "generators"])
def test_matches_kubectl_kustomize(tmp_path: Path, which: str) -> None:
    """deploy/kubernetes (and a generator sample) render exactly as `kubectl kustomize` does."""
    directory = KUBE
    if which == "generators":
        (tmp_path / "kustomization.yaml").write_text(GENERATORS)
        directory = tmp_path
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    theirs = by_key([o for o in yaml.safe_load_all(done.stdout) if o])
    assert by_key(render(directory)) == theirs
