"""Sidecar injection: golden cases (<case>.yaml → <case>.injected.yaml), idempotence and patches.

Set REPLAYOPS_UPDATE_GOLDEN=1 to rewrite the goldens after an intended change (then review the diff).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from controller.admission import defaults, inject

GOLDEN = Path(__file__).with_name("golden")
CASES = sorted(p.name.removesuffix(".yaml") for p in GOLDEN.glob("*.yaml") if not p.name.endswith(".injected.yaml"))
CONFIG = inject.InjectConfig(image="ghcr.io/replayops/replayops:test", version="test")
yaml = YAML(typ="safe")


def _policy_obj(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "replayops.dev/v1alpha1", "kind": "CapturePolicy", "metadata": {"name": "p"}, "spec": spec}


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """What the webhook does to the case's pod: decide, then inject or leave alone."""
    pod, ns = case["pod"], case["namespace"]
    decision = inject.decide(pod, ns, CONFIG)
    if not decision.inject:
        return copy.deepcopy(pod)
    spec = defaults.default_policy(_policy_obj(case["policy"]))["spec"]
    return inject.inject(pod, ns, spec, CONFIG)


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    case = yaml.load((GOLDEN / f"{name}.yaml").read_text())
    out = run_case(case)
    expected_path = GOLDEN / f"{name}.injected.yaml"
    if os.environ.get("REPLAYOPS_UPDATE_GOLDEN"):
        with expected_path.open("w") as fh:
            YAML().dump(out, fh)
    assert out == yaml.load(expected_path.read_text())


@pytest.mark.parametrize("name", CASES)
def test_patch_turns_the_original_into_the_golden(name: str) -> None:
    case = yaml.load((GOLDEN / f"{name}.yaml").read_text())
    out = run_case(case)
    ops = inject.patch(case["pod"], out)
    assert jsonpatch.apply_patch(case["pod"], ops) == out


@pytest.mark.parametrize("name", CASES)
def test_injecting_an_injected_pod_changes_nothing(name: str) -> None:
    case = yaml.load((GOLDEN / f"{name}.yaml").read_text())
    once = run_case(case)
    twice = run_case({**case, "pod": once})
    assert inject.patch(once, twice) == []


def test_strip_removes_exactly_what_was_added() -> None:
    case = yaml.load((GOLDEN / "tls-unwrap-on.yaml").read_text())
    assert inject.strip(run_case(case)) == case["pod"]


def test_users_own_proxy_variable_is_kept() -> None:
    case = yaml.load((GOLDEN / "tls-unwrap-on.yaml").read_text())
    env = {e["name"]: e["value"] for e in run_case(case)["spec"]["containers"][0]["env"]}
    assert env["HTTPS_PROXY"] == "http://corp-proxy:3128"
    assert env["HTTP_PROXY"] == "http://127.0.0.1:15002"


@pytest.mark.parametrize(("name", "reason"), [
    ("opt-out", "opted out"), ("host-network", "hostNetwork"), ("kube-system", "never injected")])
def test_skipped_pods_say_why(name: str, reason: str) -> None:
    case = yaml.load((GOLDEN / f"{name}.yaml").read_text())
    decision = inject.decide(case["pod"], case["namespace"], CONFIG)
    assert not decision.inject and reason in decision.reason


def test_pod_without_capture_annotation_is_not_injected() -> None:
    decision = inject.decide({"metadata": {"name": "x"}, "spec": {}}, "shop", CONFIG)
    assert not decision.inject and "no replayops.dev/capture" in decision.reason


json_like = st.recursive(st.none() | st.integers() | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                             st.text(alphabet="ab/~c", max_size=4), inner, max_size=3), max_leaves=12)


@settings(max_examples=500, deadline=None, database=None)
@given(st.dictionaries(st.text(alphabet="ab/~c", max_size=4), json_like, max_size=4),
       st.dictionaries(st.text(alphabet="ab/~c", max_size=4), json_like, max_size=4))
def test_patch_applies_to_any_pair_of_objects(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert jsonpatch.apply_patch(a, inject.patch(a, b)) == b


@pytest.mark.parametrize(("policy", "holds"), [
    ({"selector": {}, "inbound": {"ports": [8080]}}, False),
    ({"selector": {}, "inbound": {"ports": [8080]}, "outbound": {"enabled": True}}, True),
    ({"selector": {}, "inbound": {"mode": "transparent", "ports": [8080]}}, False),
])
def test_the_app_waits_for_the_proxy_only_when_its_outbound_calls_need_it(policy: dict[str, Any],
                                                                          holds: bool) -> None:
    pod = {"metadata": {"name": "p", "annotations": {"replayops.dev/capture": "p"}},
           "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 8080}]}]}}
    spec = defaults.default_policy(_policy_obj(policy))["spec"]
    sidecar = next(c for c in inject.inject(pod, "shop", spec, CONFIG)["spec"]["initContainers"]
                   if c["name"] == "replayops-proxy")
    assert ("startupProbe" in sidecar) is holds
    assert sidecar["readinessProbe"]["periodSeconds"] == 1, "Ready as soon as the proxy is, either way"


def test_the_apps_containers_mount_only_the_certificates_never_the_cas_private_key() -> None:
    case = yaml.load((GOLDEN / "tls-unwrap-on.yaml").read_text())
    out = run_case(case)
    sidecar = next(c for c in out["spec"]["initContainers"] if c["name"] == "replayops-proxy")
    args = sidecar["args"]
    assert args[args.index("--ca-dir") + 1].startswith(inject.RUN_DIR), "the CA and its key: the sidecar's volume"
    assert args[args.index("--trust-dir") + 1] == inject.CA_DIR
    app_volumes = {m["name"] for c in out["spec"]["containers"] for m in c.get("volumeMounts") or []}
    assert inject.CA_VOLUME in app_volumes and inject.RUN_VOLUME not in app_volumes
