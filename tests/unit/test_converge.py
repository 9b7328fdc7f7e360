"""Which workloads get which capture annotations: selection, kinds, opt-out and conflicts."""

from __future__ import annotations

from typing import Any

from controller.api import CAPTURE, CONFIG_HASH
from controller.gitops import converge
from controller.policy import config_hash


def pol(name: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"matchLabels": labels}, **spec}}


def wl(kind: str, name: str, labels: dict[str, str], ns: str = "shop", **notes: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": ns, "annotations": notes},
            "spec": {"template": {"metadata": {"labels": labels}}}}


def test_selected_workloads_get_policy_name_and_hash() -> None:
    p = pol("checkout", {"app": "checkout"}, sampling=0.5)
    out = converge.plan([p], [wl("Deployment", "web", {"app": "checkout"}), wl("Deployment", "db", {"app": "db"})])
    assert out.wanted == {("shop", "Deployment", "web"): {CAPTURE: "checkout", CONFIG_HASH: config_hash(p["spec"])}}
    assert out.selected[("shop", "checkout")] == [("shop", "Deployment", "web")]


def _hash(**spec: Any) -> str:
    return converge.plan([pol("p", {"app": "x"}, **spec)], [wl("Deployment", "w", {"app": "x"})]).wanted[
        ("shop", "Deployment", "w")][CONFIG_HASH]


def test_the_hash_covers_what_the_sidecar_receives_and_nothing_the_forwarder_applies() -> None:
    base = _hash(sampling=0.5, inbound={"ports": [8080]})
    resized = {"resources": {"limits": {"memory": "512Mi"}}}
    assert _hash(sampling=0.5, inbound={"ports": [8080]}, sidecar=resized) != base  # a sidecar resize rolls
    assert _hash(sampling=0.5, inbound={"ports": [8080, 9090]}) != base  # so do its listeners
    assert _hash(sampling=0.5, inbound={"ports": [8080]}, outbound={"enabled": True}) != base
    assert _hash(sampling=0.9, inbound={"ports": [8080]}, dlp={"defaults": False},  # forwarder's: no roll
                 filters={"exclude": [{"paths": ["/healthz"]}]}) == base


def test_two_policies_on_one_workload_is_a_conflict_not_a_choice() -> None:
    out = converge.plan([pol("a", {"app": "x"}), pol("b", {"tier": "web"})],
                        [wl("Deployment", "w", {"app": "x", "tier": "web"})])
    assert out.wanted == {}
    assert out.conflicts == {("shop", "Deployment", "w"): ["a", "b"]}


def test_kinds_other_namespaces_and_opt_out_are_respected() -> None:
    out = converge.plan([pol("p", {"app": "x"}, kinds=["StatefulSet"])], [
        wl("Deployment", "d", {"app": "x"}), wl("StatefulSet", "s", {"app": "x"}),
        wl("StatefulSet", "elsewhere", {"app": "x"}, ns="other"),
        wl("StatefulSet", "out", {"app": "x"}, **{"sidecar.replayops.dev/inject": "false"})])
    assert list(out.wanted) == [("shop", "StatefulSet", "s")]


def test_only_annotations_our_field_manager_set_are_ours() -> None:
    mine = wl("Deployment", "w", {"app": "x"})
    mine["spec"]["template"]["metadata"]["annotations"] = {CAPTURE: "p", CONFIG_HASH: "h", "team": "a"}
    mine["metadata"]["managedFields"] = [
        {"manager": "replayops-controller", "fieldsV1": {"f:spec": {"f:template": {"f:metadata": {
            "f:annotations": {f"f:{CAPTURE}": {}, f"f:{CONFIG_HASH}": {}}}}}}},
        {"manager": "kubectl", "fieldsV1": {"f:spec": {"f:template": {"f:metadata": {
            "f:annotations": {"f:team": {}}}}}}}]
    assert converge.ours(mine, "replayops-controller") == {CAPTURE: "p", CONFIG_HASH: "h"}
    assert converge.ours(mine, "someone-else") == {}, "a capture annotation a user set is not ours to remove"
