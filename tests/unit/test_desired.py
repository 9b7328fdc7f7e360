"""Desired state: a revision is accepted whole or rejected whole, every problem named file:line."""

from __future__ import annotations

import pytest

from controller.admission import rules
from controller.gitops import desired

OFFLINE = rules.StaticLookup.offline()
GOOD = b"""apiVersion: replayops.dev/v1alpha1
kind: TrafficReplay
metadata:
  name: r1
spec:
  snapshot: s1
  target:
    workloadRef:
      name: checkout
---
apiVersion: replayops.dev/v1alpha1
kind: CapturePolicy
metadata: {name: p1, namespace: shop}
spec:
  selector: {matchLabels: {app: checkout}}
"""


def build(files: dict[str, bytes]) -> desired.Desired:
    return desired.build(files, lookup=OFFLINE, namespace="shop")


def test_good_revision_is_defaulted_and_ordered_policies_first() -> None:
    state = build({"replays/a.yaml": GOOD, "ns.yaml": b"apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"})
    assert [i.obj["kind"] for i in state.items] == ["Namespace", "CapturePolicy", "TrafficReplay"]
    replay = state.of_kind("TrafficReplay")[0]
    assert replay.obj["metadata"]["namespace"] == "shop"
    assert replay.obj["spec"]["target"]["workloadRef"] == {"name": "checkout"}, "kept as written"
    assert (replay.file, replay.line) == ("replays/a.yaml", 1)
    assert any("not checked" in str(w) for w in state.warnings)


@pytest.mark.parametrize(("text", "where", "says"), [
    (b"a: [1\n", "bad.yaml:2", "YAML error"),
    (GOOD.replace(b"snapshot: s1", b"snapshot: s1\n  colour: blue"), "bad.yaml:7", "spec.colour: unknown field"),
    (GOOD.replace(b"  target:\n    workloadRef:\n      name: checkout\n", b"  target: {}\n"), "bad.yaml:7",
     "exactly one of workloadRef or url"),
    (b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n", "bad.yaml:1", "is not allowed"),
    (b"- just\n- a list\n", "bad.yaml:1", "must be a mapping"),
    (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "bad.yaml:3", "metadata.name is required"),
    (GOOD.replace(b"kind: CapturePolicy\nmetadata: {name: p1, namespace: shop}\nspec:\n",
                  b"kind: CapturePolicy\nmetadata: {name: p1, namespace: shop}\nspec:\n  dlp: {patterns: "
                  b"[{type: custom, regex: '(a+)+'}]}\n"), "bad.yaml:15", "dlp-regex"),
    (b"\xff\xfe", "bad.yaml:1", "not UTF-8"),
    (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n", "bad.yaml:3",
     "metadata.name 'Bad_Name' must be a DNS-1123 subdomain"),
    (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok, namespace: a.b}\n", "bad.yaml:3",
     "metadata.namespace 'a.b' must be a DNS-1123 label"),
    (b"apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n", "bad.yaml:3", "DNS-1123 label"),
])
def test_one_bad_document_rejects_the_revision_naming_file_and_line(text: bytes, where: str, says: str) -> None:
    with pytest.raises(desired.InvalidRevision) as err:
        build({"good.yaml": GOOD.replace(b"name: r1", b"name: r0").replace(b"name: p1", b"name: p0"),
               "bad.yaml": text})
    problems = [str(p) for p in err.value.problems]
    assert any(p.startswith(where) and says in p for p in problems), problems
    assert all(p.startswith("bad.yaml") for p in problems), "the good file has no problem"


def test_duplicate_objects_are_named_with_both_places() -> None:
    with pytest.raises(desired.InvalidRevision) as err:
        build({"a.yaml": GOOD, "b.yaml": GOOD})
    assert "also defined at a.yaml:1" in str(err.value)


def test_allow_list_admits_extra_kinds() -> None:
    files = {"d.yaml": b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n"}
    state = desired.build(files, lookup=OFFLINE, allowed_kinds={"apps/v1/Deployment"})
    assert state.items[0].obj["kind"] == "Deployment"


def _two_replays_on_checkout() -> dict[str, bytes]:
    second = GOOD.split(b"---")[0].replace(b"name: r1", b"name: r2")
    return {"a.yaml": GOOD, "b.yaml": second}


def test_two_replays_on_one_target_are_refused_when_neither_has_finished() -> None:
    lookup = rules.StaticLookup(workloads=None, replays={}, namespaces={}, snapshots=None, finished={"shop": set()})
    with pytest.raises(desired.InvalidRevision) as err:
        desired.build(_two_replays_on_checkout(), lookup=lookup, namespace="shop")
    assert [str(p) for p in err.value.problems] == [
        "b.yaml:1: TrafficReplay shop/r2: TrafficReplay shop/r1 (a.yaml) also targets Deployment/checkout and "
        "neither has finished; one running replay per target (rule: one-replay-per-target)"]


def test_two_replays_on_one_target_pass_when_one_has_finished_and_only_warn_offline() -> None:
    done = rules.StaticLookup(workloads=None, replays={}, namespaces={}, snapshots=None, finished={"shop": {"r1"}})
    assert len(desired.build(_two_replays_on_checkout(), lookup=done, namespace="shop").of_kind("TrafficReplay")) == 2
    offline = build(_two_replays_on_checkout())
    assert any("one-replay-per-target" in str(w) for w in offline.warnings)


def test_cluster_scoped_kinds_are_keyed_without_a_namespace() -> None:
    files = {"r.yaml": b"apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n"
                       b"metadata: {name: viewer, namespace: shop}\nrules: []\n",
             "c.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"}
    state = desired.build(files, lookup=OFFLINE, namespace="shop",
                          allowed_kinds={"rbac.authorization.k8s.io/v1/ClusterRole", "v1/ConfigMap"})
    keys = {i.obj["kind"]: i.key for i in state.items}
    assert keys == {"ClusterRole": ("rbac.authorization.k8s.io/v1", "ClusterRole", "", "viewer"),
                    "ConfigMap": ("v1", "ConfigMap", "shop", "c")}
    assert [str(w) for w in state.warnings] == [
        "r.yaml:3: ClusterRole viewer: is cluster-scoped; metadata.namespace 'shop' ignored"]


def test_a_kind_the_cluster_says_is_cluster_scoped_gets_no_namespace() -> None:
    files = {"w.yaml": b"apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"}
    state = desired.build(files, lookup=OFFLINE, allowed_kinds={"example.com/v1/Widget"},
                          cluster_scoped=lambda api, kind: kind == "Widget")
    assert state.items[0].key == ("example.com/v1", "Widget", "", "w")
