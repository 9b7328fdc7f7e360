"""Would an injected pod still be admitted: Pod Security levels and ResourceQuota arithmetic."""

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


def test_scoped_quotas_are_left_out() -> None:
    scoped = quota({"requests.memory": "1Mi"}, scopes=["NotBestEffort"])
    assert admissible.quota_overrun([scoped], APP, INJECTED, ["replayops-proxy"]) is None
