"""Snapshots declared as objects: their schema, their rules, their window and filters, and how replays wait."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller import schema, snapshots
from controller.admission import rules
from controller.gitops import desired
from controller.gitops.replayjobs import JobConfig, render_snapshot, snapshot_block, snapshot_job_name
from controller.store import FileStore, rrpair


def snap(spec: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    obj = {"apiVersion": "replayops.dev/v1alpha1", "kind": "Snapshot",
           "metadata": {"name": "morning", "namespace": "shop", "uid": "u-1", "generation": generation},
           "spec": spec}
    return {**obj, "status": status} if status else obj


@pytest.mark.parametrize(("spec", "message"), [
    ({"window": {"last": "10m"}}, "name exactly one of policy or stream"),
    ({"policy": "p", "stream": "s", "window": {"last": "10m"}}, "name exactly one of policy or stream"),
    ({"policy": "p", "window": {}}, "set exactly one of last or from"),
    ({"policy": "p", "window": {"last": "10m", "from": "2026-12-01T10:00:00Z"}}, "set exactly one of last or from"),
    ({"policy": "p", "window": {"last": "ten minutes"}}, "spec.window.last"),
    ({"policy": "p", "window": {"to": "2026-12-01T10:00:00Z"}}, "set exactly one of last or from"),
    ({"policy": "p"}, "spec.window"),
])
def test_the_schema_refuses_a_snapshot_that_does_not_say_what_and_when(spec: dict[str, Any], message: str) -> None:
    errors = [str(e) for e in schema.validate(snap(spec))]
    assert any(message in e for e in errors), errors


def test_a_well_formed_snapshot_passes_the_schema() -> None:
    assert schema.validate(snap({"policy": "checkout", "window": {"from": "2026-12-01T10:00:00Z",
                                                                  "to": "2026-12-01T11:00:00Z"},
                                 "filters": {"directions": ["inbound"], "paths": ["/api/*"]}})) == []


def test_a_snapshot_naming_an_unknown_policy_is_refused_naming_the_field() -> None:
    known = rules.StaticLookup(workloads=None, replays={}, namespaces={}, resources={("CapturePolicy", "shop", "b")})
    found = rules.check_snapshot(snap({"policy": "a", "window": {"last": "1m"}}), known, rules.Limits())
    assert [(f.path, f.rule, f.warning) for f in found] == [("spec.policy", "policy-exists", False)]
    assert "CapturePolicy shop/a does not exist" in found[0].message
    assert rules.check_snapshot(snap({"policy": "b", "window": {"last": "1m"}}), known, rules.Limits()) == []
    offline = rules.check_snapshot(snap({"policy": "a", "window": {"last": "1m"}}), rules.StaticLookup.offline(),
                                   rules.Limits())
    assert [f.warning for f in offline] == [True], "offline it cannot know: a warning, not an error"


def test_a_reversed_window_is_refused() -> None:
    found = rules.check_snapshot(snap({"stream": "shop.s", "window": {"from": "2026-12-01T11:00:00Z",
                                                                 "to": "2026-12-01T10:00:00Z"}}),
                                 rules.StaticLookup.offline(), rules.Limits())
    assert [f.path for f in found] == ["spec.window.to"]


REVISION = b"""apiVersion: replayops.dev/v1alpha1
kind: CapturePolicy
metadata: {name: checkout, namespace: shop}
spec:
  selector: {matchLabels: {app: checkout}}
---
apiVersion: replayops.dev/v1alpha1
kind: Snapshot
metadata: {name: morning, namespace: shop}
spec:
  policy: checkout
  window: {last: 10m}
---
apiVersion: replayops.dev/v1alpha1
kind: TrafficReplay
metadata: {name: smoke, namespace: shop}
spec:
  snapshot: morning
  target: {url: http://checkout.shop.svc}
"""
# a cluster that has nothing yet, and a store without snapshots
EMPTY = rules.StaticLookup(workloads=set(), replays={}, namespaces={}, snapshots=set(), finished={},
                           resources=set())


def test_a_revision_may_name_objects_it_defines_itself_and_applies_snapshots_before_replays() -> None:
    state = desired.build({"all.yaml": REVISION}, lookup=EMPTY)
    assert [i.obj["kind"] for i in state.items] == ["CapturePolicy", "Snapshot", "TrafficReplay"]


def test_a_replay_naming_neither_a_snapshot_object_nor_a_stored_snapshot_is_refused() -> None:
    replay_only = REVISION.split(b"---\n")[2]
    with pytest.raises(desired.InvalidRevision) as err:
        desired.build({"r.yaml": replay_only}, lookup=EMPTY)
    assert "r.yaml:5: TrafficReplay shop/smoke: spec.snapshot: 'morning' is neither a Snapshot in namespace shop " \
           "nor a snapshot in the store (rule: snapshot-exists)" in str(err.value)


def test_window_last_counts_back_from_the_cut_and_from_to_are_read_as_utc() -> None:
    assert snapshots.window({"window": {"last": "10m"}}, now=1000.0) == (400.0, 1000.0)
    start, end = snapshots.window({"window": {"from": "2026-12-01T10:00:00Z", "to": "2026-12-01T10:30:00Z"}}, now=0)
    assert end - start == 1800 and start == 1796119200.0
    assert snapshots.window({"window": {"from": "2026-12-01T10:00:00Z"}}, now=1796119260.0)[1] == 1796119260.0


def pair(url: str, at: float, direction: str = "inbound", method: str = "GET") -> dict[str, Any]:
    return rrpair.make(method=method, url=url, request_headers=[], request_body=None, status=200,
                       response_headers=[], response_body=b"{}", started=at, finished=at, direction=direction,
                       service="pod")


def test_the_cut_takes_the_policys_streams_in_the_window_that_the_filters_keep(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.append("shop.checkout.pod-a", [pair("http://c/api/a", 100), pair("http://c/api/b", 200),
                                         pair("http://c/health", 150), pair("http://dep/x", 160, "outbound")])
    store.append("shop.checkout.pod-b", [pair("http://c/api/c", 170, method="POST")])
    store.append("shop.checkout-v2.pod", [pair("http://c/api/other-policy", 150)])
    store.append("other.checkout.pod", [pair("http://c/api/other-namespace", 150)])
    spec = {"policy": "checkout", "filters": {"directions": ["inbound"], "paths": ["/api/*"]}}
    got = sorted(r["request"]["url"] for r in snapshots.records(store, "shop", spec, 120, 180))
    assert got == ["http://c/api/c"], "the window drops 100 and 200, the filters /health and the outbound call"
    spec = {"policy": "checkout", "filters": {"methods": ["GET"]}}
    assert len(list(snapshots.records(store, "shop", spec, 0, 1000))) == 4
    assert len(list(snapshots.records(store, "shop", {"stream": "shop.checkout-v2.pod"}, 0, 1000))) == 1


def test_a_replay_waits_for_the_snapshot_it_names_and_fails_with_it() -> None:
    replay = {"kind": "TrafficReplay", "metadata": {"name": "smoke", "namespace": "shop", "generation": 3}}
    assert snapshot_block(replay, None) is None, "a store snapshot's name: nothing to wait for"
    pending = snapshot_block(replay, snap({"policy": "p", "window": {"last": "1m"}}))
    assert pending and pending["phase"] == "Pending" and pending["conditions"][0]["reason"] == "SnapshotNotReady"
    stale = snapshot_block(replay, snap({"policy": "p", "window": {"last": "1m"}},
                                        {"phase": "Ready", "observedGeneration": 1}, generation=2))
    assert stale and stale["phase"] == "Pending", "Ready for an older generation is not ready"
    failed = snapshot_block(replay, snap({"policy": "p", "window": {"last": "1m"}}, {
        "phase": "Failed", "observedGeneration": 1, "conditions": [{"type": "Ready", "message": "disk full"}]}))
    assert failed and failed["phase"] == "Failed" and "Snapshot shop/morning failed: disk full" in \
        failed["conditions"][0]["message"]
    assert snapshot_block(replay, snap({"policy": "p", "window": {"last": "1m"}},
                                       {"phase": "Ready", "observedGeneration": 1})) is None


def test_the_snapshot_job_cuts_it_on_the_stores_volume_and_goes_away_after_an_hour() -> None:
    job = render_snapshot(snap({"policy": "p", "window": {"last": "1m"}}), JobConfig(image="img:1"))
    assert job["metadata"]["name"] == snapshot_job_name(snap({})) and job["metadata"]["name"].startswith(
        "snapshot-morning-")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["snapshot", "cut", "--resource", "shop/morning"] and container["image"] == "img:1"
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "replayops-store"
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600 and job["spec"]["backoffLimit"] == 0


@pytest.mark.parametrize(("args", "code", "said"), [
    (["cut"], 2, "give a NAME or --resource NAMESPACE/NAME"),
    (["cut", "--resource", "no-slash"], 2, "'no-slash' is not NAMESPACE/NAME"),
    (["cut", "--resource", "shop/morning", "--kubeconfig", "/nonexistent"], 1, "Snapshot shop/morning:"),
])
def test_snapshot_cut_says_what_is_wrong_with_its_arguments(tmp_path: Path, args: list[str], code: int,
                                                           said: str) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "controller.cli", "snapshot", "--store", str(tmp_path), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == code and said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("spec", "path", "said"), [
    ({"stream": "other.pol.pod", "window": {"last": "1m"}}, "spec.stream", "is not a stream of namespace shop"),
    ({"stream": "shop.s", "window": {"from": "yesterday"}}, "spec.window.from", "is not an RFC 3339 date-time"),
    ({"stream": "shop.s", "window": {"from": "2026-12-01T10:00:00"}}, "spec.window.from", "has no time zone"),
    # 10:00+02:00 is 08:00Z: before from, though it sorts after it as text
    ({"stream": "shop.s", "window": {"from": "2026-12-01T09:50:00Z", "to": "2026-12-01T10:00:00+02:00"}},
     "spec.window.to", "is not after from"),
])
def test_a_snapshot_outside_its_namespace_or_with_a_bad_window_is_refused(spec: dict[str, Any], path: str,
                                                                          said: str) -> None:
    found = rules.check_snapshot(snap(spec), rules.StaticLookup.offline(), rules.Limits())
    assert [f.path for f in found if not f.warning] == [path] and said in found[0].message, found


def test_a_replay_may_not_name_another_namespaces_cut_by_its_store_name() -> None:
    lookup = rules.StaticLookup(workloads=None, replays={}, namespaces={}, snapshots={"shop.morning"},
                                resources={("Snapshot", "shop", "morning")})
    replay = {"apiVersion": "replayops.dev/v1alpha1", "kind": "TrafficReplay",
              "metadata": {"name": "r", "namespace": "evil"},
              "spec": {"snapshot": "shop.morning", "target": {"url": "http://x"}}}
    found = rules.check_replay(replay, lookup, rules.Limits())
    assert [(f.path, f.rule) for f in found] == [("spec.snapshot", "own-namespace")]
    assert rules.check_replay({**replay, "metadata": {"name": "r", "namespace": "shop"}}, lookup,
                              rules.Limits()) == [], "its own namespace may (the store name of its own cut)"


def test_the_cut_never_reads_another_namespaces_stream_nor_a_longer_policys(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.append("shop.a.pod", [pair("http://c/x", 1)])
    store.append("shop.a.b.pod", [pair("http://c/y", 1)])
    assert snapshots.streams(store, "shop", {"policy": "a"}) == ["shop.a.pod"]
    assert snapshots.streams(store, "shop", {"policy": "a.b"}) == ["shop.a.b.pod"]
    with pytest.raises(ValueError, match="is not a stream of namespace evil"):
        snapshots.streams(store, "evil", {"stream": "shop.a.pod"})


def test_a_replay_that_waited_for_a_snapshot_deleted_since_fails_saying_so() -> None:
    replay = {"kind": "TrafficReplay", "metadata": {"name": "smoke", "namespace": "shop", "generation": 2},
              "spec": {"snapshot": "morning"},
              "status": {"phase": "Pending", "conditions": [{"reason": "SnapshotNotReady", "observedGeneration": 2}]}}
    failed = snapshot_block(replay, None)
    assert failed and failed["phase"] == "Failed"
    assert "Snapshot shop/morning was deleted before it was cut" in failed["conditions"][0]["message"]


def test_existence_is_checked_when_a_replay_names_something_new_not_on_every_update() -> None:
    gone = rules.StaticLookup(workloads=set(), replays={}, namespaces={}, snapshots=set(), resources=set())
    replay = {"apiVersion": "replayops.dev/v1alpha1", "kind": "TrafficReplay",
              "metadata": {"name": "r", "namespace": "shop"},
              "spec": {"snapshot": "s1", "target": {"workloadRef": {"name": "web"}}, "load": {"copies": 1}}}
    rules_of = {f.rule for f in rules.check_replay(replay, gone, rules.Limits())}
    assert {"target-exists", "snapshot-exists"} <= rules_of  # created naming what is not there
    stored = {**replay, "spec": {**replay["spec"], "load": {"copies": 3}}}
    assert rules.check_replay(replay, gone, rules.Limits(), old=stored) == []  # what it names went away later
    retargeted = {**replay, "spec": {**replay["spec"], "target": {"workloadRef": {"name": "ghost"}}}}
    assert [f.rule for f in rules.check_replay(retargeted, gone, rules.Limits(), old=stored)] == ["target-exists"]
    snap = {"apiVersion": "replayops.dev/v1alpha1", "kind": "Snapshot", "metadata": {"name": "s", "namespace": "shop"},
            "spec": {"policy": "a", "window": {"last": "1m"}}}
    assert [f.rule for f in rules.check_snapshot(snap, gone, rules.Limits())] == ["policy-exists"]
    assert rules.check_snapshot(snap, gone, rules.Limits(), old=snap) == []
