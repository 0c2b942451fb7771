"""The multi-worker Kubernetes variants (k8s/multi-worker/) as kustomize renders them.

Checks the facts the design relies on (docs/design/multi-worker.md): the peer
host pattern names the hosts the Service/JobSet really gives the Pods, the
worker count equals the parallelism, fatal exit codes fail the group, and a
preemption is not counted. Schema validation of the rendered documents is by
kubernetes-validate --strict (Job, Service) and against JobSet's CRD (see the
design document for the commands); this test has no network access to either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftharness.group import place_from_environ

from .kustomize import render

REPO = Path(__file__).resolve().parents[2]
VARIANTS = REPO / "k8s" / "multi-worker"
FATAL_CODES = [64, 65, 70, 73, 126, 127]


def only(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind]
    return found


def trainer_env(pod_spec: dict[str, Any]) -> dict[str, str]:
    (container,) = pod_spec["containers"]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def place_of(pod_spec: dict[str, Any], index: int):
    return place_from_environ({**trainer_env(pod_spec), "JOB_COMPLETION_INDEX": str(index)})


def test_indexed_job_peers_are_the_headless_service_names() -> None:
    documents = render(VARIANTS / "indexed-job")
    job, service = only(documents, "Job"), only(documents, "Service")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] == 2
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    place = place_of(pod, 1)
    # An Indexed Job's Pod i has hostname <job>-<i>; with the subdomain, <job>-<i>.<service>.
    job_name, service_name = job["metadata"]["name"], service["metadata"]["name"]
    assert place.jobs["worker"] == tuple(
        f"{job_name}-{i}.{service_name}:{service['spec']['ports'][0]['port']}" for i in range(2)
    )
    assert place.worker_count == spec["parallelism"]
    assert not place.is_chief and place_of(pod, 0).is_chief


def test_indexed_job_ignores_preemption_and_fails_on_fatal_codes() -> None:
    spec = only(render(VARIANTS / "indexed-job"), "Job")["spec"]
    assert "backoffLimit" not in spec and spec["backoffLimitPerIndex"] >= 1
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    actions = {
        tuple(rule["onExitCodes"]["values"]): rule["action"]
        for rule in rules
        if "onExitCodes" in rule
    }
    assert actions == {(143,): "Ignore", tuple(FATAL_CODES): "FailJob"}
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules


def test_jobset_peers_are_the_jobset_pod_names() -> None:
    documents = render(VARIANTS / "jobset")
    assert not [d for d in documents if d["kind"] == "Job"]  # the base Job became the template
    jobset = only(documents, "JobSet")
    (workers,) = jobset["spec"]["replicatedJobs"]
    job_spec, pod = workers["template"]["spec"], workers["template"]["spec"]["template"]["spec"]
    assert workers["replicas"] == 1 and job_spec["completionMode"] == "Indexed"
    network = jobset["spec"]["network"]
    assert network["enableDNSHostnames"] is True
    # <jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>
    expected = tuple(
        f"{jobset['metadata']['name']}-{workers['name']}-0-{i}.{network['subdomain']}:2222"
        for i in range(job_spec["parallelism"])
    )
    assert place_of(pod, 0).jobs["worker"] == expected
    assert pod["containers"][0]["ports"] == [{"name": "tf-grpc", "containerPort": 2222}]


def test_jobset_restarts_the_whole_set_and_fails_on_fatal_codes() -> None:
    jobset = only(render(VARIANTS / "jobset"), "JobSet")
    (workers,) = jobset["spec"]["replicatedJobs"]
    job_spec = workers["template"]["spec"]
    # Any Pod failing fails its Job at once, so the JobSet restarts everyone.
    assert job_spec["backoffLimit"] == 0
    failing_codes = [
        code
        for rule in job_spec["podFailurePolicy"]["rules"]
        if rule["action"] == "FailJob" and "onExitCodes" in rule
        for code in rule["onExitCodes"]["values"]
    ]
    assert sorted(failing_codes) == sorted([*FATAL_CODES, 143])
    policy = jobset["spec"]["failurePolicy"]
    assert policy["restartStrategy"] == "BlockingRecreate"
    first, second, last = policy["rules"]
    assert first["action"] == "FailJobSet"
    (pattern,) = first["onJobFailureMessagePatterns"]
    for code in FATAL_CODES:
        assert f"{code}" in pattern
    assert second["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    assert last["action"] == "RestartJobSet" and "onJobFailureReasons" not in last
