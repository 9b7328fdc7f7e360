"""Our CRDs on a real kube-apiserver: established, printed, defaulted and validated like offline."""

from __future__ import annotations

import copy

import pytest

from controller import api, schema
from controller.kube import KubeError
from tests.conftest import Cluster
from tests.crd_cases import INVALID, VALID, policy, replay


def _in(ns: str, obj: dict) -> dict:  # type: ignore[type-arg]
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = ns
    return obj


def test_crds_are_established_with_short_names(cluster: Cluster) -> None:
    out = cluster.kubectl("api-resources", "--api-group=replayops.dev", "-o", "wide", check=True).stdout
    assert "trafficreplays" in out and " tr " in out
    assert "capturepolicies" in out and " cp " in out


def test_kubectl_get_shows_printer_columns(cluster: Cluster, namespace: str) -> None:
    cluster.kube.create(_in(namespace, replay(mode="tests-only")))
    cluster.kube.create(_in(namespace, policy()))
    tr = cluster.kubectl("get", "tr", "-n", namespace, check=True).stdout.splitlines()
    assert tr[0].split() == ["NAME", "PHASE", "MODE", "SUCCESS", "P99", "AGE"]
    assert tr[1].split()[:2] == ["r1", "tests-only"]
    cp = cluster.kubectl("get", "cp", "-n", namespace, check=True).stdout.splitlines()
    assert cp[0].split() == ["NAME", "WORKLOADS", "READY", "AGE"]


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_objects_are_accepted_and_defaulted_as_offline(cluster: Cluster, namespace: str,
                                                             name: str) -> None:
    stored = cluster.kube.create(_in(namespace, VALID[name]))
    spec_schema = schema.schema_for(api.API_VERSION, VALID[name]["kind"])
    assert spec_schema is not None
    offline = schema.apply_defaults(spec_schema, copy.deepcopy(VALID[name]))
    assert stored["spec"] == offline["spec"]


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_objects_are_rejected_with_the_same_field_path(cluster: Cluster, namespace: str,
                                                               name: str) -> None:
    obj, path = INVALID[name]
    assert [e.path for e in schema.validate(obj)] == [path]
    with pytest.raises(KubeError) as err:
        cluster.kube.create(_in(namespace, obj))
    assert err.value.status in (400, 422)
    assert path in str(err.value), str(err.value)


def test_kubectl_apply_of_an_invalid_replay_shows_the_field(cluster: Cluster, namespace: str) -> None:
    manifest = """
apiVersion: replayops.dev/v1alpha1
kind: TrafficReplay
metadata: {name: bad}
spec: {snapshot: s1, target: {}}
"""
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    assert out.returncode != 0
    assert "spec.target" in out.stderr and "exactly one of workloadRef or url" in out.stderr
