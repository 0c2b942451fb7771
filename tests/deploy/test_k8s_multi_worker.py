"""The multi-worker Kubernetes variants (k8s/multi-worker/) as kustomize renders them.

Valid (kubernetes-validate --strict for the built-in kinds, the JobSet against
its CRD's schema), and wired to what ftharness does (docs/multi-worker.md):
the peer host pattern names the hosts the Service/JobSet really gives the
Pods, the worker count equals the parallelism, and each way a worker's Pod
can fail gets the action ftharness's exit code asks for. The last is checked
by running each failure through the rules the way the Job and JobSet
controllers evaluate them (first match wins), with the Job controller's own
failure messages, which the JobSet rules match on.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from ftharness.config import parse_duration
from ftharness.exitcodes import ExitCode
from ftharness.group import place_from_environ

from .k8s_schema import JOBSET_RELEASES, jobset_errors, kubernetes_errors
from .kustomize import render

REPO = Path(__file__).resolve().parents[2]
VARIANTS = REPO / "k8s" / "multi-worker"
FATAL = sorted(
    [
        ExitCode.USAGE_ERROR,
        ExitCode.INCOMPATIBLE_CHECKPOINT,
        ExitCode.GAVE_UP,
        ExitCode.BACKUP_DIR_UNUSABLE,
        ExitCode.CANNOT_EXECUTE,
        ExitCode.COMMAND_NOT_FOUND,
    ]
)
# The group must be restarted, but nothing is wrong with the job.
NOT_COUNTED = sorted([ExitCode.PEER_LOST, ExitCode.PEER_STOPPED, ExitCode.PREEMPTED])
# Counted: a crash of ftharness itself, 75 (another run holds the backup),
# SIGKILL (the OOM killer, or the grace period ran out), SIGSEGV.
CRASHES = [1, 2, ExitCode.BACKUP_DIR_LOCKED, 137, 139]
GROUP_SETTINGS = (
    "FTHARNESS_PEER_PORT",
    "FTHARNESS_WORKER_COUNT",
    "FTHARNESS_PEER_TIMEOUT",
    "FTHARNESS_GROUP_TIMEOUT",
)


def only(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind]
    return found


def trainer_env(pod_spec: dict[str, Any]) -> dict[str, str]:
    (container,) = pod_spec["containers"]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def place_of(pod_spec: dict[str, Any], index: int):
    return place_from_environ({**trainer_env(pod_spec), "JOB_COMPLETION_INDEX": str(index)})


def indexed_job() -> dict[str, Any]:
    return only(render(VARIANTS / "indexed-job"), "Job")


def jobset_workers() -> tuple[dict[str, Any], dict[str, Any]]:
    """The JobSet and its one replicatedJob."""
    jobset = only(render(VARIANTS / "jobset"), "JobSet")
    (workers,) = jobset["spec"]["replicatedJobs"]
    return jobset, workers


# --- the controllers' rule evaluation -------------------------------------


def pod_failure(
    rules: list[dict[str, Any]], exit_code: int, disrupted: bool = False
) -> tuple[str, str | None]:
    """(action, Job failure message) for a failed `trainer` container, first match wins.

    As kubernetes pkg/controller/job/pod_failure_policy.go does, messages
    included; no matching rule is "Count".
    """
    for index, rule in enumerate(rules):
        if "onExitCodes" in rule:
            requirement = rule["onExitCodes"]
            assert requirement["operator"] == "In"  # the only operator used here
            if (
                exit_code != 0
                and requirement.get("containerName") in (None, "trainer")
                and exit_code in requirement["values"]
            ):
                message = (
                    f"Container trainer for pod default/pod-1 failed with exit code "
                    f"{exit_code} matching {rule['action']} rule at index {index}"
                )
                return rule["action"], message
        elif (
            disrupted and {"type": "DisruptionTarget", "status": "True"} in rule["onPodConditions"]
        ):
            message = (
                f"Pod default/pod-1 has condition DisruptionTarget matching "
                f"{rule['action']} rule at index {index}"
            )
            return rule["action"], message
    return "Count", None


def jobset_action(failure_policy: dict[str, Any], reason: str, message: str) -> str:
    """The first rule matching the failed Job's reason and message (jobset
    pkg/controllers/failure_policy.go: Go's regexp.MatchString, unanchored);
    none matching: RestartJobSet."""
    for rule in failure_policy["rules"]:
        reasons = rule.get("onJobFailureReasons", [])
        patterns = rule.get("onJobFailureMessagePatterns", [])
        if reasons and reason not in reasons:
            continue
        if patterns and not any(re.search(pattern, message) for pattern in patterns):
            continue
        return rule["action"]
    return "RestartJobSet"


def jobset_outcome(exit_code: int, disrupted: bool = False) -> str:
    """What the JobSet does when one worker's Pod fails so."""
    jobset, workers = jobset_workers()
    job_spec = workers["template"]["spec"]
    action, message = pod_failure(job_spec["podFailurePolicy"]["rules"], exit_code, disrupted)
    if action == "FailJob":
        reason = "PodFailurePolicy"
    else:
        assert action == "Count" and job_spec["backoffLimit"] == 0, action
        reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    return jobset_action(jobset["spec"]["failurePolicy"], reason, message)


# --- validity ---------------------------------------------------------------


def test_every_variant_is_tested() -> None:
    variants = {path.name for path in VARIANTS.iterdir() if path.is_dir()}
    assert variants == {"pod", "indexed-job", "jobset"}


def test_indexed_job_is_valid_for_every_supported_version() -> None:
    documents = render(VARIANTS / "indexed-job")
    assert {d["kind"] for d in documents} == {"ServiceAccount", "Service", "Job"}
    errors = kubernetes_errors(documents)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("release", JOBSET_RELEASES)
def test_jobset_is_valid_against_its_crd(release: str) -> None:
    jobset, _ = jobset_workers()
    errors = jobset_errors(jobset, release)
    assert not errors, "\n".join(errors)


def test_the_jobset_schema_refuses_unknown_fields() -> None:
    # So that the test above can fail: a misspelt field anywhere, the Pod
    # template (embedded in the CRD) included.
    jobset, _ = jobset_workers()
    misspelt = copy.deepcopy(jobset)
    misspelt["spec"]["network"]["enableDnsHostnames"] = True
    pod = misspelt["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["containers"][0]["environment"] = []
    for release in JOBSET_RELEASES:
        errors = "\n".join(jobset_errors(misspelt, release))
        assert "'enableDnsHostnames' was unexpected" in errors
        assert "'environment' was unexpected" in errors


def test_jobset_job_template_and_other_documents_are_valid_kubernetes() -> None:
    documents = render(VARIANTS / "jobset")
    assert {d["kind"] for d in documents} == {"ServiceAccount", "JobSet"}
    jobset, workers = jobset_workers()
    # The child Job as the JobSet controller creates it, checked against the
    # Kubernetes versions' own JobSpec (newer than the CRD's copy).
    child = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{jobset['metadata']['name']}-{workers['name']}-0"},
        "spec": workers["template"]["spec"],
    }
    others = [d for d in documents if d["kind"] != "JobSet"]
    errors = kubernetes_errors([*others, child])
    assert not errors, "\n".join(errors)


def test_pod_failure_policies_keep_the_api_servers_rules() -> None:
    # Checked by the API server (pkg/apis/batch/validation), not by the schema:
    # exit code values unique, ordered and never 0 with In; podFailurePolicy
    # needs restartPolicy Never and podReplacementPolicy Failed (its default).
    _, workers = jobset_workers()
    for job_spec in (indexed_job()["spec"], workers["template"]["spec"]):
        rules = job_spec["podFailurePolicy"]["rules"]
        assert len(rules) <= 20
        for rule in rules:
            if "onExitCodes" in rule:
                values = rule["onExitCodes"]["values"]
                assert values == sorted(set(values)) and 0 not in values, values
                assert rule["onExitCodes"]["containerName"] == "trainer"
            else:
                assert rule["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
        assert job_spec["template"]["spec"]["restartPolicy"] == "Never"
        assert job_spec.get("podReplacementPolicy", "Failed") == "Failed"


# --- names, counts and settings ---------------------------------------------


def test_indexed_job_peers_are_the_headless_service_names() -> None:
    documents = render(VARIANTS / "indexed-job")
    job, service = only(documents, "Job"), only(documents, "Service")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    (service_port,) = service["spec"]["ports"]
    # An Indexed Job's Pod i has hostname <job>-<i>; with the subdomain, <job>-<i>.<service>.
    job_name, service_name = job["metadata"]["name"], service["metadata"]["name"]
    expected = tuple(
        f"{job_name}-{i}.{service_name}:{service_port['port']}" for i in range(spec["parallelism"])
    )
    for index in range(spec["parallelism"]):
        place = place_of(pod, index)
        assert place.jobs["worker"] == expected
        assert place.is_chief == (index == 0)
    assert place.worker_count == spec["parallelism"] == spec["completions"]
    assert pod["containers"][0]["ports"] == [
        {"name": service_port["name"], "containerPort": service_port["port"]}
    ]


def test_jobset_peers_are_the_jobset_pod_names() -> None:
    jobset, workers = jobset_workers()
    job_spec, pod = workers["template"]["spec"], workers["template"]["spec"]["template"]["spec"]
    assert workers["replicas"] == 1 and job_spec["completionMode"] == "Indexed"
    network = jobset["spec"]["network"]
    assert network["enableDNSHostnames"] is True
    assert network["publishNotReadyAddresses"] is True
    (port,) = pod["containers"][0]["ports"]
    # <jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>
    expected = tuple(
        f"{jobset['metadata']['name']}-{workers['name']}-0-{i}.{network['subdomain']}"
        f":{port['containerPort']}"
        for i in range(job_spec["parallelism"])
    )
    for index in range(job_spec["parallelism"]):
        place = place_of(pod, index)
        assert place.jobs["worker"] == expected
        assert place.is_chief == (index == 0)
    assert place.worker_count == job_spec["parallelism"] == job_spec["completions"]


def test_both_variants_run_the_same_group_pod() -> None:
    _, workers = jobset_workers()
    jobset_pod = workers["template"]["spec"]["template"]["spec"]
    job_pod = indexed_job()["spec"]["template"]["spec"]
    for pod in (jobset_pod, job_pod):
        assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    # The same settings (only the host names differ), all of them valid.
    jobset_env, job_env = trainer_env(jobset_pod), trainer_env(job_pod)
    assert {name: jobset_env[name] for name in GROUP_SETTINGS} == {
        name: job_env[name] for name in GROUP_SETTINGS
    }
    for name in ("FTHARNESS_PEER_TIMEOUT", "FTHARNESS_GROUP_TIMEOUT"):
        assert parse_duration(job_env[name], name=name, minimum=0, allow_minimum=False) > 0


# --- failures ---------------------------------------------------------------


def test_indexed_job_replaces_pods_per_index() -> None:
    spec = indexed_job()["spec"]
    assert "backoffLimit" not in spec and spec["backoffLimitPerIndex"] >= 1
    assert spec["maxFailedIndexes"] == 0  # one worker given up: the group cannot go on
    # No second Pod for an index while the old one still uploads.
    assert spec["podReplacementPolicy"] == "Failed"


@pytest.mark.parametrize("code", FATAL)
def test_indexed_job_fails_on_fatal_codes(code: int) -> None:
    rules = indexed_job()["spec"]["podFailurePolicy"]["rules"]
    assert pod_failure(rules, code)[0] == "FailJob"


@pytest.mark.parametrize("code", NOT_COUNTED)
def test_indexed_job_does_not_count_stops_and_lost_peers(code: int) -> None:
    rules = indexed_job()["spec"]["podFailurePolicy"]["rules"]
    assert pod_failure(rules, code)[0] == "Ignore"


@pytest.mark.parametrize("code", [*CRASHES, *FATAL])
def test_indexed_job_does_not_count_disruptions_whatever_the_code(code: int) -> None:
    rules = indexed_job()["spec"]["podFailurePolicy"]["rules"]
    assert pod_failure(rules, code, disrupted=True)[0] == "Ignore"


@pytest.mark.parametrize("code", CRASHES)
def test_indexed_job_counts_crashes(code: int) -> None:
    rules = indexed_job()["spec"]["podFailurePolicy"]["rules"]
    assert pod_failure(rules, code)[0] == "Count"


def test_jobset_restarts_the_whole_set() -> None:
    jobset, workers = jobset_workers()
    # Any Pod failing fails its Job at once, so the JobSet restarts everyone.
    assert workers["template"]["spec"]["backoffLimit"] == 0
    policy = jobset["spec"]["failurePolicy"]
    assert policy["restartStrategy"] == "BlockingRecreate"
    assert policy["maxRestarts"] >= 1


@pytest.mark.parametrize("code", FATAL)
def test_jobset_fails_on_fatal_codes(code: int) -> None:
    assert jobset_outcome(code) == "FailJobSet"


@pytest.mark.parametrize("code", NOT_COUNTED)
def test_jobset_does_not_count_stops_and_lost_peers(code: int) -> None:
    assert jobset_outcome(code) == "RestartJobSetAndIgnoreMaxRestarts"


@pytest.mark.parametrize("code", [*CRASHES, *FATAL, ExitCode.PREEMPTED])
def test_jobset_does_not_count_disruptions_whatever_the_code(code: int) -> None:
    assert jobset_outcome(code, disrupted=True) == "RestartJobSetAndIgnoreMaxRestarts"


@pytest.mark.parametrize("code", CRASHES)
def test_jobset_counts_crashes(code: int) -> None:
    assert jobset_outcome(code) == "RestartJobSet"


def test_jobset_counts_failures_it_cannot_read() -> None:
    # A Job failure message worded otherwise (another Kubernetes version)
    # matches neither named rule: counted, so bounded by maxRestarts, never
    # an endless restart nor a failed set.
    jobset, _ = jobset_workers()
    policy = jobset["spec"]["failurePolicy"]
    assert jobset_action(policy, "PodFailurePolicy", "exit status 64") == "RestartJobSet"
    assert jobset_action(policy, "PodFailurePolicy", "exit status 143") == "RestartJobSet"
