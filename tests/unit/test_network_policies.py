"""manifests/base/networkpolicies.yaml (and the inspector component's policy) allows the flows replayops
needs and nothing else, judged by the NetworkPolicy semantics of networking.k8s.io/v1 (the subset the
manifests use). The node's bridge CNI does not enforce NetworkPolicy; tests/node checks that each policy
selects its component's running pods."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
BASE = list(YAML(typ="safe").load_all((MANIFESTS / "base" / "networkpolicies.yaml").read_text()))
POLICIES = BASE + [d for d in YAML(typ="safe").load_all(
    (MANIFESTS / "components" / "inspector" / "inspector.yaml").read_text()) if d["kind"] == "NetworkPolicy"]
SYSTEM = "replayops-system"


@dataclass(frozen=True)
class Peer:
    """A pod (namespace and labels), or something outside the pod network (``namespace`` None)."""

    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"selector {selector} uses more than matchLabels"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(rule_peer: dict[str, Any], peer: Peer, policy_ns: str) -> bool:
    if peer.namespace is None:
        return False  # the manifests name no ipBlock: a peer rule only matches pods
    in_ns = "namespaceSelector" in rule_peer or peer.namespace == policy_ns
    return in_ns and _selects(rule_peer.get("podSelector") or {}, peer.labels)


def _direction_allows(pod: Peer, other: Peer, port: int, proto: str, direction: str) -> bool:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    chosen = [p for p in POLICIES if pod.namespace == SYSTEM and _selects(p["spec"]["podSelector"], pod.labels)
              and direction in p["spec"]["policyTypes"]]
    if not chosen:
        return True  # a pod no policy selects (for this direction) is not isolated
    return any((not rule.get(peers_key) or any(_peer_matches(r, other, SYSTEM) for r in rule[peers_key]))
               and (not rule.get("ports") or any(p["port"] == port and p.get("protocol", "TCP") == proto
                                                 for p in rule["ports"]))
               for policy in chosen for rule in policy["spec"].get(key) or [])


def allowed(src: Peer, dst: Peer, port: int, proto: str = "TCP") -> bool:
    """Whether a connection from ``src`` to ``dst`` on ``port`` passes both ends' policies."""
    out = src.namespace is None or _direction_allows(src, dst, port, proto, "Egress")
    return out and (dst.namespace is None or _direction_allows(dst, src, port, proto, "Ingress"))


def component(name: str) -> Peer:
    return Peer(SYSTEM, {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "replayops"})


WEBHOOK, CONTROLLER, FORWARDER = component("replayops-webhook"), component("replayops-controller"), \
    component("replayops-forwarder")
INSPECTOR = component("replayops-inspector")
JOB = Peer(SYSTEM, {"app.kubernetes.io/managed-by": "replayops-replay"})
APP = Peer("demo", {"app": "demo-server"})  # an injected pod: its sidecar speaks for it
DNS = Peer("kube-system", {"k8s-app": "kube-dns"})
OUTSIDE = Peer()  # the API server, a git host, a NodeLocal DNSCache, the internet

NEEDED = [  # the README's table of who talks to whom
    (OUTSIDE, WEBHOOK, 8443, "TCP"), (WEBHOOK, OUTSIDE, 6443, "TCP"), (WEBHOOK, DNS, 53, "UDP"),
    (CONTROLLER, OUTSIDE, 443, "TCP"), (CONTROLLER, OUTSIDE, 9418, "TCP"), (CONTROLLER, OUTSIDE, 22, "TCP"),
    (CONTROLLER, DNS, 53, "UDP"), (OUTSIDE, CONTROLLER, 9091, "TCP"), (APP, CONTROLLER, 9090, "TCP"),
    (APP, FORWARDER, 8090, "TCP"), (FORWARDER, OUTSIDE, 443, "TCP"), (FORWARDER, DNS, 53, "TCP"),
    (APP, JOB, 9300, "TCP"), (JOB, APP, 15001, "TCP"), (JOB, OUTSIDE, 80, "TCP"),
    (CONTROLLER, OUTSIDE, 80, "TCP"), (WEBHOOK, OUTSIDE, 53, "UDP"), (FORWARDER, OUTSIDE, 53, "UDP"),
    (OUTSIDE, INSPECTOR, 8088, "TCP"), (INSPECTOR, OUTSIDE, 6443, "TCP"), (INSPECTOR, OUTSIDE, 22, "TCP"),
    (INSPECTOR, OUTSIDE, 80, "TCP"), (INSPECTOR, DNS, 53, "UDP"),
]
REFUSED = [
    (APP, WEBHOOK, 9090, "TCP"), (APP, FORWARDER, 22, "TCP"), (OUTSIDE, FORWARDER, 8090, "TCP"),
    (FORWARDER, APP, 8080, "TCP"), (WEBHOOK, OUTSIDE, 80, "TCP"), (CONTROLLER, FORWARDER, 8090, "TCP"),
    (WEBHOOK, OUTSIDE, 22, "TCP"), (APP, JOB, 8080, "TCP"), (APP, INSPECTOR, 9090, "TCP"),
    (INSPECTOR, APP, 8080, "TCP"), (FORWARDER, OUTSIDE, 22, "TCP"),
]


@pytest.mark.parametrize(("src", "dst", "port", "proto"), NEEDED)
def test_the_flows_replayops_needs_are_allowed(src: Peer, dst: Peer, port: int, proto: str) -> None:
    assert allowed(src, dst, port, proto)


@pytest.mark.parametrize(("src", "dst", "port", "proto"), REFUSED)
def test_everything_else_to_or_from_its_components_is_refused(src: Peer, dst: Peer, port: int, proto: str) -> None:
    assert not allowed(src, dst, port, proto)


def test_every_component_deployment_has_a_policy() -> None:
    names = {p["metadata"]["name"] for p in BASE}
    assert names == {"replayops-webhook", "replayops-controller", "replayops-forwarder", "replayops-jobs"}
