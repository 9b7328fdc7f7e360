"""Would an injected pod still be admitted: Pod Security levels, ResourceQuota and LimitRange arithmetic."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from controller.admission import admissible


def container(name: str, *, restart: str | None = None, **resources: dict[str, str]) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "resources": resources}
    if restart:
        c["restartPolicy"] = restart
    return c


def quota(hard: dict[str, str], used: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "q"}, "spec": {"hard": hard, **spec}, "status": {"hard": hard, "used": used or {}}}


APP = {"containers": [container("app", requests={"cpu": "100m", "memory": "64Mi"},
                                limits={"cpu": "200m", "memory": "128Mi"})]}
SIDECAR = container("replayops-proxy", restart="Always", requests={"cpu": "50m", "memory": "64Mi"},
                    limits={"memory": "256Mi"})
INJECTED = {**APP, "initContainers": [SIDECAR]}


def test_level_comes_from_the_enforce_label_and_unknown_values_count_as_restricted() -> None:
    assert admissible.pod_security_level({admissible.ENFORCE: "baseline"}) == "baseline"
    assert admissible.pod_security_level({}) == "privileged"
    assert admissible.pod_security_level(None, "baseline") == "baseline"
    assert admissible.pod_security_level({admissible.ENFORCE: "bogus"}) == "restricted"


def test_sidecars_add_to_the_containers_and_init_containers_peak_alone() -> None:
    spec = {"initContainers": [container("setup", requests={"memory": "300Mi"}), SIDECAR,
                               container("late", requests={"memory": "100Mi"})],
            "containers": APP["containers"]}
    mi = Decimal(1 << 20)
    # setup runs alone (300Mi); late runs beside the sidecar (164Mi); then app + sidecar (128Mi)
    assert admissible.effective(spec, "requests", "memory") == 300 * mi
    assert admissible.effective(INJECTED, "requests", "cpu") == Decimal("0.15")
    # a limit with no request is also the request
    assert admissible.effective({"containers": [container("a", limits={"cpu": "1"})]}, "requests", "cpu") == 1


def test_a_quota_the_sidecar_would_exceed_is_named_with_the_numbers() -> None:
    why = admissible.quota_overrun([quota({"requests.memory": "200Mi"}, {"requests.memory": "100Mi"})],
                                   APP, INJECTED, ["replayops-proxy"])
    assert why == ("ResourceQuota q has requests.memory 200Mi with 100Mi used: the pod needs 64Mi alone and "
                   "128Mi with the sidecar")
    cpu = admissible.quota_overrun([quota({"cpu": "200m"}, {"cpu": "90m"})], APP, INJECTED, ["replayops-proxy"])
    assert cpu is not None and "needs 100m alone and 150m with the sidecar" in cpu


def test_room_enough_or_a_pod_refused_anyway_is_no_overrun() -> None:
    assert admissible.quota_overrun([quota({"requests.memory": "1Gi"}, {"requests.memory": "100Mi"})],
                                    APP, INJECTED, ["replayops-proxy"]) is None
    # the pod alone already exceeds: the quota refuses it whether or not it is injected
    assert admissible.quota_overrun([quota({"requests.memory": "100Mi"}, {"requests.memory": "90Mi"})],
                                    APP, INJECTED, ["replayops-proxy"]) is None
    assert admissible.quota_overrun([], APP, INJECTED, ["replayops-proxy"]) is None


def test_a_quota_on_cpu_limits_needs_a_cpu_limit_on_the_sidecar() -> None:
    why = admissible.quota_overrun([quota({"limits.cpu": "4"})], APP, INJECTED, ["replayops-proxy"])
    assert why == "ResourceQuota q tracks limits.cpu, which every container must set, and replayops-proxy sets none"
    assert admissible.quota_overrun([quota({"limits.memory": "4Gi"})], APP, INJECTED, ["replayops-proxy"]) is None


BEST_EFFORT = {"containers": [{"name": "app"}]}
BEST_EFFORT_INJECTED = {**BEST_EFFORT, "initContainers": [SIDECAR]}


def test_a_scoped_quota_counts_the_pod_only_in_its_scope() -> None:
    not_best_effort = quota({"requests.memory": "32Mi"}, scopes=["NotBestEffort"])
    # the sidecar's requests make a BestEffort pod NotBestEffort: the quota counts it only when injected
    why = admissible.quota_overrun([not_best_effort], BEST_EFFORT, BEST_EFFORT_INJECTED, ["replayops-proxy"])
    assert why == ("ResourceQuota q has requests.memory 32Mi with 0 used: the pod needs 64Mi (the sidecar's "
                   "resources bring the pod into its scope NotBestEffort)")
    pods = quota({"pods": "3"}, {"pods": "3"}, scopes=["NotBestEffort"])
    assert "has pods 3 with 3 used: the pod needs 1 pod(s)" in str(
        admissible.quota_overrun([pods], BEST_EFFORT, BEST_EFFORT_INJECTED, ["replayops-proxy"]))
    # a pod with requests was counted before: only the sidecar's share is ours
    assert admissible.quota_overrun([quota({"pods": "3"}, {"pods": "3"}, scopes=["NotBestEffort"])],
                                    APP, INJECTED, ["replayops-proxy"]) is None
    # a BestEffort quota no longer counts the injected pod
    assert admissible.quota_overrun([quota({"pods": "0"}, scopes=["BestEffort"])],
                                    BEST_EFFORT, BEST_EFFORT_INJECTED, ["replayops-proxy"]) is None
    # a user's container without a limit counts against us once the sidecar brings the pod into scope
    lacking = admissible.quota_overrun([quota({"limits.memory": "1Gi"}, scopes=["NotBestEffort"])],
                                       BEST_EFFORT, BEST_EFFORT_INJECTED, ["replayops-proxy"])
    assert lacking is not None and "app sets none" in lacking


def test_quota_scopes_follow_the_pods_spec() -> None:
    def selector(operator: str, *values: str) -> dict[str, Any]:
        return {"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": operator, "values": list(values)}]}}
    high = {**APP, "priorityClassName": "high"}
    assert admissible.in_scope(selector("In", "high"), high) and not admissible.in_scope(selector("In", "high"), APP)
    assert admissible.in_scope(selector("NotIn", "high"), APP) and not admissible.in_scope(selector("Exists"), APP)
    assert admissible.in_scope(selector("DoesNotExist"), APP)
    terminating = {**APP, "activeDeadlineSeconds": 60}
    assert admissible.in_scope({"scopes": ["Terminating"]}, terminating)
    assert not admissible.in_scope({"scopes": ["Terminating", "BestEffort"]}, terminating)
    assert admissible.in_scope({"scopes": ["NotTerminating", "NotBestEffort"]}, APP)
    affine = {**APP, "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "x", "namespaceSelector": {}}]}}}
    assert admissible.in_scope({"scopes": ["CrossNamespacePodAffinity"]}, affine)
    assert not admissible.in_scope({"scopes": ["CrossNamespacePodAffinity"]}, APP)


def limit_range(*items: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "lr"}, "spec": {"limits": list(items)}}


def test_limit_range_defaults_fill_what_the_sidecar_leaves_unset() -> None:
    lr = limit_range({"type": "Container", "default": {"cpu": "300m", "memory": "1Gi"},
                      "defaultRequest": {"ephemeral-storage": "1Gi"}})
    spec = admissible.with_limit_defaults([lr], INJECTED, ["replayops-proxy"])
    sidecar, = spec["initContainers"]
    assert sidecar["resources"]["limits"] == {"memory": "256Mi", "cpu": "300m"}  # its own memory limit is kept
    assert sidecar["resources"]["requests"]["ephemeral-storage"] == "1Gi"
    assert spec["containers"] == APP["containers"]  # LimitRanger filled the app's before we saw it
    # with its default CPU limit the sidecar satisfies a quota on limits.cpu
    assert admissible.quota_overrun([quota({"limits.cpu": "4"})], APP, spec, ["replayops-proxy"]) is None


def test_a_sidecar_outside_a_limit_range_is_named_with_the_bound() -> None:
    def problem(*items: dict[str, Any]) -> str | None:
        return admissible.limit_range_problem([limit_range(*items)], APP, INJECTED, ["replayops-proxy"])
    assert problem({"type": "Container", "max": {"memory": "128Mi"}}) == (
        "LimitRange lr: container replayops-proxy is above the maximum memory per Container of 128Mi")
    assert problem({"type": "Container", "min": {"cpu": "100m"}}) == (
        "LimitRange lr: container replayops-proxy is below the minimum cpu per Container of 100m")
    assert problem({"type": "Container", "max": {"cpu": "2"}}) == (
        "LimitRange lr: container replayops-proxy sets no cpu limit, and the maximum per Container is 2")
    assert "memory limit to request ratio above 2" in str(
        problem({"type": "Container", "maxLimitRequestRatio": {"memory": "2"}}))
    assert problem({"type": "Container", "max": {"memory": "1Gi"}, "min": {"memory": "32Mi"},
                    "maxLimitRequestRatio": {"memory": "4"}}) is None
    assert problem({"type": "Pod", "max": {"memory": "160Mi"}}) == (
        "LimitRange lr: the pod is above the maximum memory per Pod of 160Mi")
    assert problem({"type": "Pod", "max": {"memory": "100Mi"}}) is None  # refused without the sidecar too
    assert problem({"type": "PersistentVolumeClaim", "max": {"storage": "1Gi"}}) is None
