"""The Kubernetes manifests: valid for every supported version, and wired to
ftharness's exit codes and grace period.

Overlays are rendered by `kubectl kustomize` (kustomize.py; the tests skip,
saying why, where kubectl is not installed), then validated with
kubernetes-validate in strict mode (unknown fields are errors, as with
`kubectl apply --validate=strict`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ftharness.exitcodes import ExitCode

from .dockerfile import instructions
from .k8s_schema import VERSIONS, kubernetes_errors
from .kustomize import render

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = {  # overlay -> the restartPolicy it must set
    "restart-on-failure": "OnFailure",
    "pod-failure-policy": "Never",
}

FATAL = {
    ExitCode.USAGE_ERROR,
    ExitCode.INCOMPATIBLE_CHECKPOINT,
    ExitCode.GAVE_UP,
    ExitCode.BACKUP_DIR_UNUSABLE,
    ExitCode.CANNOT_EXECUTE,
    ExitCode.COMMAND_NOT_FOUND,
}


def job(overlay: str) -> dict[str, Any]:
    (found,) = [d for d in render(REPO / "k8s" / "overlays" / overlay) if d["kind"] == "Job"]
    return found


def trainer(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def env(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or the valueFrom mapping when the value is indirect."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_every_overlay_is_tested() -> None:
    overlays = {path.name for path in (REPO / "k8s" / "overlays").iterdir() if path.is_dir()}
    assert overlays == set(OVERLAYS)


def test_versions_cover_the_supported_range() -> None:
    assert VERSIONS[0] == "1.31" and len(VERSIONS) >= 3, VERSIONS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_valid_for_every_supported_version(overlay: str) -> None:
    errors = kubernetes_errors(render(REPO / "k8s" / "overlays" / overlay))
    assert not errors, "\n".join(errors)


def test_secret_example_is_valid() -> None:
    secret = yaml.safe_load((REPO / "k8s" / "secret.example.yaml").read_text())
    for version in VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    # The name and keys the Job reads.
    container = trainer(job("pod-failure-policy"))
    assert env(container)["FTHARNESS_BACKUP_DIR"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "backup-dir",
    }
    assert "backup-dir" in secret["stringData"]


@pytest.mark.parametrize(("overlay", "restart_policy"), OVERLAYS.items())
def test_restart_policy(overlay: str, restart_policy: str) -> None:
    spec = job(overlay)["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == restart_policy
    # No second Pod while the old one still uploads its final checkpoint.
    assert spec["podReplacementPolicy"] == "Failed"
    assert ("podFailurePolicy" in spec) == (restart_policy == "Never")


def test_pod_failure_policy_reads_ftharness_exit_codes() -> None:
    the_job = job("pod-failure-policy")
    rules = the_job["spec"]["podFailurePolicy"]["rules"]
    by_codes = {
        (rule["action"], frozenset(rule["onExitCodes"]["values"])): rule
        for rule in rules
        if "onExitCodes" in rule
    }
    # Preempted (final checkpoint committed): retried, not counted.
    assert ("Ignore", frozenset({ExitCode.PREEMPTED})) in by_codes
    # Never retried.
    assert ("FailJob", frozenset(FATAL)) in by_codes
    for rule in by_codes.values():
        assert rule["onExitCodes"]["operator"] == "In"
        assert rule["onExitCodes"]["containerName"] == trainer(the_job)["name"]
        assert rule["onExitCodes"]["values"] == sorted(rule["onExitCodes"]["values"])
    # Evictions and node shutdowns: retried, not counted, whatever the code.
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    # Ignore rules first: a disrupted Pod is never failed for its exit code.
    actions = [rule["action"] for rule in rules]
    assert actions == sorted(actions, key=lambda action: action != "Ignore")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_matches_the_supervisor(overlay: str) -> None:
    the_job = job(overlay)
    pod = the_job["spec"]["template"]["spec"]
    variables = env(trainer(the_job))
    grace_period = int(variables["FTHARNESS_GRACE_PERIOD"])
    assert pod["terminationGracePeriodSeconds"] == grace_period
    assert 0 <= int(variables["FTHARNESS_GRACE_MARGIN"]) < grace_period


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_local_tier_is_an_empty_dir_at_ftharness_local_dir(overlay: str) -> None:
    the_job = job(overlay)
    container = trainer(the_job)
    local_dir = env(container)["FTHARNESS_LOCAL_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == local_dir]
    volumes = {v["name"]: v for v in the_job["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]
    # The image declares the same directory (docker run gets the same layout).
    image_env = " ".join(
        i.arguments for i in instructions(REPO / "Dockerfile") if i.keyword == "ENV"
    )
    assert f"FTHARNESS_LOCAL_DIR={local_dir}" in image_env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runs_on_spot_nodes(overlay: str) -> None:
    pod = job(overlay)["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert {
        "key": "cloud.google.com/gke-spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in pod["tolerations"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backup_location_and_credentials_come_from_the_secret(overlay: str) -> None:
    the_job = job(overlay)
    variables = env(trainer(the_job))
    assert "secretKeyRef" in variables["FTHARNESS_BACKUP_DIR"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert variables[name]["secretKeyRef"]["optional"] is True  # absent with IRSA
    key_file = Path(variables["GOOGLE_APPLICATION_CREDENTIALS"])
    (mount,) = [
        m for m in trainer(the_job)["volumeMounts"] if m["mountPath"] == str(key_file.parent)
    ]
    volumes = {v["name"]: v for v in the_job["spec"]["template"]["spec"]["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == variables["FTHARNESS_BACKUP_DIR"]["secretKeyRef"]["name"]
    assert {"key": key_file.name, "path": key_file.name} in secret["items"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_are_bounded(overlay: str) -> None:
    resources = trainer(job(overlay))["resources"]
    for kind in ("cpu", "memory"):
        assert resources["requests"][kind] == resources["limits"][kind]  # Guaranteed QoS
