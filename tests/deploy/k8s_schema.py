"""Schema validation of rendered Kubernetes documents, strict (unknown fields are errors).

Built-in kinds against kubernetes-validate's schemas for every supported
Kubernetes version; JobSet, a custom resource kubernetes-validate has no
schema for, against its CRD's openAPIV3Schema vendored in jobset_crd/.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import all_versions, major_minor
from packaging.version import Version

from .kustomize import identity

Document = dict[str, Any]

# Every version from 1.31 on that the installed kubernetes-validate knows
# (1.31 to 1.37 with kubernetes-validate 1.37.0). 1.31 is where Job
# podFailurePolicy became GA; upstream supports the newest three minors,
# and managed providers' extended support still covers 1.31 and 1.32.
VERSIONS = sorted(
    {major_minor(v) for v in all_versions() if Version(v) >= Version("1.31")}, key=Version
)

JOBSET_CRD = Path(__file__).with_name("jobset_crd")
# The oldest JobSet release the manifests need and the newest one vendored.
JOBSET_RELEASES = ("v0.10.0", "v0.12.0")


def kubernetes_errors(documents: list[Document]) -> list[str]:
    """One line per violation, for every document and every version in VERSIONS."""
    errors = []
    for document in documents:
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(map(str, error.path))
                errors.append(f"{version} {identity(document)} {path}: {error.message}")
    return errors


@functools.cache
def _jobset_validator(release: str) -> jsonschema.Draft7Validator:
    schema = json.loads((JOBSET_CRD / f"{release}.json").read_text())
    return jsonschema.Draft7Validator(_strict(schema))


def _strict(node: Any) -> Any:
    """The schema with additionalProperties: false wherever it lists properties.

    What the API server does with `kubectl apply --validate=strict`: a field the
    schema does not know is an error, not silently dropped. Schemas that keep
    unknown fields on purpose (x-kubernetes-preserve-unknown-fields) stay open.
    """
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(value) for value in node]
    return node


def jobset_errors(document: Document, release: str) -> list[str]:
    """One line per violation of JobSet `release`'s CRD schema."""
    return [
        f"JobSet {release} {'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in _jobset_validator(release).iter_errors(document)
    ]
