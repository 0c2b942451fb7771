"""A small kustomize renderer, enough for k8s/ and no more.

The tests render the overlays in Python so that they need no kubectl or
kustomize binary. Supported kustomization fields, and nothing else:

- `resources`: files (multi-document YAML) and directories (rendered
  recursively, the way kustomize builds a base before the overlay's changes);
- `patches`: strategic-merge patches given by `path`, the target found by the
  patch's apiVersion, kind and metadata.name. Maps merge recursively, `null`
  deletes a key, lists are replaced. Lists that Kubernetes merges by key
  (containers, env, volumes, ...) are refused rather than guessed at;
- `images`: `name` with `newName` and/or `newTag`, applied to the
  containers of Pod templates.

Anything else raises NotImplementedError, so that a kustomization that grows
a feature fails the tests here instead of being rendered wrongly.
test_k8s_manifests.py checks the output against `kubectl kustomize` when
kubectl is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Document = dict[str, Any]

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "patches", "images"}

# Lists that a strategic merge patch merges item by item (by `name`, `mountPath`,
# ...) instead of replacing. Patching them needs the real algorithm: refuse.
KEYED_LISTS = {
    "containers",
    "initContainers",
    "ephemeralContainers",
    "env",
    "envFrom",
    "volumes",
    "volumeMounts",
    "volumeDevices",
    "ports",
    "imagePullSecrets",
    "hostAliases",
    "topologySpreadConstraints",
    "resourceClaims",
    "finalizers",
    "ownerReferences",
}


def render(directory: str | Path) -> list[Document]:
    """The documents `kustomize build directory` would print (order aside)."""
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    if unsupported:
        raise NotImplementedError(f"{directory}: unsupported fields {sorted(unsupported)}")

    documents: list[Document] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            documents.extend(render(path))
        else:
            documents.extend(load_documents(path))

    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise NotImplementedError(f"{directory}: only `path` patches: {patch}")
        for patch_document in load_documents(directory / patch["path"]):
            index = find_target(documents, patch_document)
            documents[index] = strategic_merge(documents[index], patch_document)

    for image in kustomization.get("images", []):
        for document in documents:
            set_image(document, image)
    return documents


def load_documents(path: Path) -> list[Document]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def identity(document: Document) -> tuple[str, str, str]:
    return document["apiVersion"], document["kind"], document["metadata"]["name"]


def find_target(documents: list[Document], patch: Document) -> int:
    matches = [i for i, document in enumerate(documents) if identity(document) == identity(patch)]
    if len(matches) != 1:
        raise ValueError(f"patch {identity(patch)} matches {len(matches)} resources")
    return matches[0]


def strategic_merge(original: Any, patch: Any, path: str = "") -> Any:
    """`patch` merged into a copy of `original` (maps only; see module doc)."""
    result = copy.deepcopy(original)
    for key, value in patch.items():
        where = f"{path}.{key}"
        if key.startswith("$"):
            raise NotImplementedError(f"patch directive {where}")
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = strategic_merge(result[key], value, where)
        elif isinstance(value, list) and key in KEYED_LISTS:
            raise NotImplementedError(f"keyed list merge at {where}")
        else:
            result[key] = copy.deepcopy(value)
    return result


def set_image(document: Document, image: dict[str, str]) -> None:
    """Apply one `images` entry to the containers of a Pod template, if any."""
    unsupported = set(image) - {"name", "newName", "newTag"}
    if unsupported:
        raise NotImplementedError(f"images fields {sorted(unsupported)}")
    pod_spec = document.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        name, tag = split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        tag = image.get("newTag", tag)
        container["image"] = f"{name}:{tag}" if tag else name


def split_image(reference: str) -> tuple[str, str]:
    """`registry:5000/name:tag` -> (`registry:5000/name`, `tag`); no digests."""
    if "@" in reference:
        raise NotImplementedError(f"image digests: {reference}")
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:  # a colon before the last slash belongs to a registry port
        return reference[:colon], reference[colon + 1 :]
    return reference, ""
