"""The Kubernetes overlays as `kubectl kustomize` renders them.

The real kustomize (v5, built into kubectl) rather than a re-implementation,
so the tests check what `kubectl apply -k` would apply. Where kubectl is not
installed the tests that need a rendering skip and say so: no registry these
machines reach serves kubectl (PyPI has none; Debian's kubernetes-client is
1.20, whose kustomize v2 predates the `patches` field the overlays use).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

Document = dict[str, Any]

# The version kubectl has bundled since 1.27; older ones render `patches`
# differently or not at all.
MINIMUM_KUSTOMIZE = (5, 0)


def kubectl_or_skip() -> str:
    """kubectl's path, or skip the calling test with the reason."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl not installed: rendering k8s/ needs `kubectl kustomize` (kustomize v5); "
            "install kubectl >= 1.27 from https://kubernetes.io/docs/tasks/tools/"
        )
    version = kustomize_version(kubectl)
    if version < MINIMUM_KUSTOMIZE:
        pytest.skip(f"{kubectl} bundles kustomize {version}, older than {MINIMUM_KUSTOMIZE}")
    return kubectl


@functools.cache
def kustomize_version(kubectl: str) -> tuple[int, ...]:
    output = subprocess.run(
        [kubectl, "version", "--client"], capture_output=True, text=True, timeout=60
    ).stdout
    found = re.search(r"Kustomize Version: v(\d+)\.(\d+)", output)
    return tuple(map(int, found.groups())) if found else (0, 0)


@functools.cache
def _render(directory: Path) -> str:
    return subprocess.run(
        [kubectl_or_skip(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def render(directory: str | Path) -> list[Document]:
    """The documents `kubectl kustomize directory` prints (a fresh copy each call)."""
    output = _render(Path(directory).resolve())
    return [document for document in yaml.safe_load_all(output) if document]


def identity(document: Document) -> tuple[str, str, str]:
    return document["apiVersion"], document["kind"], document["metadata"]["name"]
