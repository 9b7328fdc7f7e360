"""The GitOps loop on a real apiserver and real git repositories."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from controller import tokens
from controller.api import CAPTURE, CONFIG_HASH, DLP_KEY_SECRET, GROUP, REVISION
from controller.gitops import forwardersecrets
from controller.gitops.leader import Timings
from controller.gitops.reconcile import Options, Reconciler
from controller.gitops.source import GitSource
from tests.argo_health import health, script
from tests.conftest import Cluster
from tests.gitrepo import Repo

API = "replayops.dev/v1alpha1"


def replay_yaml(name: str, target: str = "http://checkout:8080", copies: int = 1) -> str:
    return f"""apiVersion: {API}
kind: TrafficReplay
metadata:
  name: {name}
spec:
  snapshot: checkout-1
  target:
    url: {target}
  load:
    copies: {copies}
"""


POLICY = f"""apiVersion: {API}
kind: CapturePolicy
metadata:
  name: checkout
spec:
  selector:
    matchLabels: {{app: checkout}}
  sampling: {{sampling}}
"""


SETTINGS = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {team: shop}\n"


class GitOps:
    def __init__(self, cluster: Cluster, namespace: str, tmp: Path, **opts: Any) -> None:
        self.cluster, self.ns = cluster, namespace
        self.repo = Repo(tmp / "repo")
        self.options = Options(name=namespace, namespace=namespace, status_namespace=namespace, **opts)
        self.source = GitSource(self.repo.url, cache=tmp / "cache")
        self.reconciler = Reconciler(cluster.kube, self.source, self.options)

    def reconcile(self) -> Any:
        return self.reconciler.reconcile()

    def get(self, kind: str, name: str, api: str = API) -> dict[str, Any] | None:
        return self.cluster.kube.get(api, kind, name, self.ns)

    def status(self) -> dict[str, str]:
        cm = self.cluster.kube.get("v1", "ConfigMap", f"replayops-status-{self.ns}", self.ns)
        assert cm is not None
        return cm["data"]  # type: ignore[no-any-return]

    def deployment(self, name: str, labels: dict[str, str]) -> None:
        self.cluster.kube.create({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": self.ns},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": "shop/app:1"}]}}}})


@pytest.fixture
def gitops(cluster: Cluster, namespace: str, tmp_path: Path) -> GitOps:
    return GitOps(cluster, namespace, tmp_path, self_heal=True, prune=True)


def test_committed_policy_annotates_the_selected_workload(gitops: GitOps) -> None:
    gitops.deployment("web", {"app": "checkout"})
    gitops.deployment("db", {"app": "db"})
    gitops.repo.commit("capture checkout", {"policies/checkout.yaml": POLICY.replace("{sampling}", "0.5"),
                                            "settings.yaml": SETTINGS})  # so that removing the policy empties nothing
    out = gitops.reconcile()
    assert out.error == ""
    web = gitops.get("Deployment", "web", "apps/v1")
    assert web is not None
    notes = web["spec"]["template"]["metadata"]["annotations"]
    assert notes[CAPTURE] == "checkout"
    db = gitops.get("Deployment", "db", "apps/v1")
    assert CAPTURE not in ((db or {})["spec"]["template"]["metadata"].get("annotations") or {})
    policy = gitops.get("CapturePolicy", "checkout") or {}
    status = policy["status"]
    assert status["selectedCount"] == 1 and status["selectedWorkloads"][0]["name"] == "web"
    assert health(script(GROUP, "CapturePolicy"), policy) == {"status": "Healthy", "message": "1 workloads selected"}

    first_hash = notes[CONFIG_HASH]
    gitops.repo.commit("sample more", {"policies/checkout.yaml": POLICY.replace("{sampling}", "0.9")})
    gitops.reconcile()
    web = gitops.get("Deployment", "web", "apps/v1") or {}
    assert web["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH] == first_hash, \
        "sampling is the forwarder's: no roll"
    gitops.repo.commit("a bigger sidecar", {"policies/checkout.yaml": POLICY.replace("{sampling}", "0.9")
                                            + "  sidecar: {resources: {limits: {memory: 512Mi}}}\n"})
    gitops.reconcile()
    web = gitops.get("Deployment", "web", "apps/v1") or {}
    assert web["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH] != first_hash, "a sidecar resize rolls"

    gitops.repo.remove("policies/checkout.yaml", "stop capturing")
    gitops.reconcile()
    web = gitops.get("Deployment", "web", "apps/v1") or {}
    assert CAPTURE not in (web["spec"]["template"]["metadata"].get("annotations") or {})
    assert gitops.get("CapturePolicy", "checkout") is None


def test_two_policies_on_one_workload_are_reported_as_a_conflict(gitops: GitOps) -> None:
    gitops.deployment("web", {"app": "checkout", "tier": "web"})
    other = POLICY.replace("name: checkout", "name: web-tier").replace("{app: checkout}", "{tier: web}")
    gitops.repo.commit("two", {"a.yaml": POLICY.replace("{sampling}", "1"), "b.yaml": other.replace("{sampling}", "1")})
    for _ in range(3):
        gitops.reconcile()
        web = gitops.get("Deployment", "web", "apps/v1") or {}
        assert CAPTURE not in (web["spec"]["template"]["metadata"].get("annotations") or {}), "no flapping"
    policy = gitops.get("CapturePolicy", "checkout") or {}
    cond = policy["status"]["conditions"][0]
    assert cond["status"] == "False" and cond["reason"] == "Conflict" and "web-tier" in cond["message"]
    assert health(script(GROUP, "CapturePolicy"), policy) == {"status": "Degraded", "message": cond["message"]}


def test_replay_created_then_pruned_when_deleted_in_git(gitops: GitOps) -> None:
    sha = gitops.repo.commit("replay", {"replays/r1.yaml": replay_yaml("r1", copies=3), "settings.yaml": SETTINGS})
    gitops.reconcile()
    tr = gitops.get("TrafficReplay", "r1")
    assert tr is not None and tr["spec"]["load"]["copies"] == 3
    assert tr["metadata"]["annotations"][REVISION] == sha
    assert tr["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "replayops"
    assert gitops.status()["lastAppliedRevision"] == f"main@sha1:{sha}"
    gitops.repo.remove("replays/r1.yaml", "done")
    out = gitops.reconcile()
    assert out.pruned == [f"TrafficReplay {gitops.ns}/r1"]
    assert gitops.get("TrafficReplay", "r1") is None


def test_prune_opt_out_annotation_keeps_the_object(gitops: GitOps) -> None:
    text = replay_yaml("keep").replace("metadata:\n  name: keep\n",
                                       "metadata:\n  name: keep\n  annotations: {replayops.dev/prune: disabled}\n")
    gitops.repo.commit("keep", {"keep.yaml": text})
    gitops.reconcile()
    gitops.repo.remove("keep.yaml", "drop")
    gitops.reconcile()
    assert gitops.get("TrafficReplay", "keep") is not None


def test_cluster_scoped_allowed_kinds_are_applied_once_and_never_pruned_while_in_git(cluster: Cluster,
                                                                                       namespace: str,
                                                                                       tmp_path: Path) -> None:
    gitops = GitOps(cluster, namespace, tmp_path, prune=True, self_heal=True,
                    allowed_kinds=frozenset({"scheduling.k8s.io/v1/PriorityClass"}))
    name = f"{namespace}-batch"
    gitops.repo.commit("priority", {"priority.yaml": f"apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\n"
                                                      f"metadata: {{name: {name}}}\nvalue: 1000\n"})
    try:
        first = gitops.reconcile()
        assert first.applied == [f"PriorityClass {name}"] and not first.error, first
        again = gitops.reconcile()
        assert again.applied == [] and again.pruned == [] and not again.error, again
        assert cluster.kube.get("scheduling.k8s.io/v1", "PriorityClass", name) is not None
        gitops.repo.commit("other", {"replays/r1.yaml": replay_yaml("r1")})
        gitops.repo.remove("priority.yaml", "drop it")
        assert gitops.reconcile().pruned == [f"PriorityClass {name}"]
    finally:
        cluster.kube.delete("scheduling.k8s.io/v1", "PriorityClass", name)


def test_a_revision_with_no_objects_prunes_nothing_unless_allowed(gitops: GitOps) -> None:
    gitops.repo.commit("replay", {"replays/r1.yaml": replay_yaml("r1")})
    gitops.reconcile()
    gitops.repo.remove("replays/r1.yaml", "everything gone (a wrong path, a bad merge)")
    out = gitops.reconcile()
    assert out.stalled and out.pruned == []
    assert "no objects: applying it would prune all 1 objects source" in out.error, out.error
    assert gitops.get("TrafficReplay", "r1") is not None
    assert "--allow-empty" in gitops.status()["lastError"]
    gitops.reconciler.options = dataclasses.replace(gitops.options, allow_empty=True)
    assert gitops.reconcile().pruned == [f"TrafficReplay {gitops.ns}/r1"]
    assert gitops.get("TrafficReplay", "r1") is None


@pytest.mark.parametrize(("bad", "where"), [
    ("kind: [unclosed\n", "replays/bad.yaml:2: YAML error"),
    (replay_yaml("r2").replace("copies: 1", "copies: -2"), "replays/bad.yaml:10: TrafficReplay"),
    (replay_yaml("r2").replace("url: http://checkout:8080", "workloadRef: {name: ghost}"),
     "replays/bad.yaml:8: TrafficReplay"),
])
def test_invalid_revision_changes_nothing_and_names_file_and_line(gitops: GitOps, bad: str, where: str) -> None:
    good = gitops.repo.commit("good", {"replays/r1.yaml": replay_yaml("r1", copies=2)})
    gitops.reconcile()
    gitops.repo.commit("bad", {"replays/r1.yaml": replay_yaml("r1", copies=5), "replays/bad.yaml": bad})
    out = gitops.reconcile()
    assert out.stalled and where in out.error
    tr = gitops.get("TrafficReplay", "r1") or {}
    assert tr["spec"]["load"]["copies"] == 2, "nothing of the bad revision was applied"
    assert gitops.get("TrafficReplay", "r2") is None
    status = gitops.status()
    assert status["stalled"] == "True" and where in status["lastError"]
    assert status["lastAppliedRevision"] == f"main@sha1:{good}"
    events = gitops.cluster.kube.list("v1", "Event", gitops.ns)
    assert any(e["reason"] == "RevisionRejected" and where in e["message"] for e in events)


def test_manual_edit_of_a_managed_field_is_reverted_with_self_heal(gitops: GitOps) -> None:
    gitops.repo.commit("r", {"r1.yaml": replay_yaml("r1", copies=2)})
    gitops.reconcile()
    gitops.cluster.kubectl("patch", "tr", "r1", "-n", gitops.ns, "--type=merge",
                           "-p", json.dumps({"spec": {"load": {"copies": 9}}}), check=True)
    out = gitops.reconcile()
    assert out.drifted == [f"TrafficReplay {gitops.ns}/r1"]
    assert (gitops.get("TrafficReplay", "r1") or {})["spec"]["load"]["copies"] == 2


def test_manual_edit_is_only_reported_without_self_heal(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    gitops = GitOps(cluster, namespace, tmp_path, self_heal=False)
    gitops.repo.commit("r", {"r1.yaml": replay_yaml("r1", copies=2)})
    gitops.reconcile()
    gitops.cluster.kubectl("patch", "tr", "r1", "-n", namespace, "--type=merge",
                           "-p", json.dumps({"spec": {"load": {"copies": 9}}}), check=True)
    out = gitops.reconcile()
    assert out.drifted == [f"TrafficReplay {namespace}/r1"]
    assert (gitops.get("TrafficReplay", "r1") or {})["spec"]["load"]["copies"] == 9
    assert f"TrafficReplay {namespace}/r1" in gitops.status()["drift"]


def test_a_commit_applies_only_what_it_changes_and_drift_elsewhere_stays_drift(cluster: Cluster, namespace: str,
                                                                              tmp_path: Path) -> None:
    """A commit that changes one file of many applies that one object (the others keep the revision that
    last changed them); an object edited by hand that the commit does not touch is drift, not a change."""
    gitops = GitOps(cluster, namespace, tmp_path, self_heal=False)
    first = gitops.repo.commit("r", {f"r{i}.yaml": replay_yaml(f"r{i}", f"http://t{i}:80") for i in range(4)})
    assert len(gitops.reconcile().applied) == 4
    gitops.cluster.kubectl("patch", "tr", "r3", "-n", namespace, "--type=merge",
                           "-p", json.dumps({"spec": {"load": {"copies": 9}}}), check=True)
    second = gitops.repo.commit("r1 copies 2", {"r1.yaml": replay_yaml("r1", "http://t1:80", copies=2)})
    out = gitops.reconcile()
    assert out.applied == [f"TrafficReplay {namespace}/r1"] and out.drifted == [f"TrafficReplay {namespace}/r3"], out
    revisions = {f"r{i}": (gitops.get("TrafficReplay", f"r{i}") or {})["metadata"]["annotations"][REVISION]
                 for i in range(4)}
    assert revisions == {"r0": first, "r1": second, "r2": first, "r3": first}
    assert (gitops.get("TrafficReplay", "r3") or {})["spec"]["load"]["copies"] == 9, "no self-heal: left as edited"


def test_other_managers_fields_are_left_alone_and_resyncs_write_nothing(gitops: GitOps) -> None:
    gitops.cluster.settle()  # counting writes: no earlier test's policies may be going meanwhile
    gitops.repo.commit("r", {"r1.yaml": replay_yaml("r1")})
    gitops.reconcile()
    gitops.cluster.kubectl("annotate", "tr", "r1", "-n", gitops.ns, "team.example.com/owner=payments", check=True)
    gitops.cluster.kubectl("label", "tr", "r1", "-n", gitops.ns, "env=staging", check=True)
    writes = gitops.cluster.kube.writes
    for _ in range(10):
        out = gitops.reconcile()
        assert out.applied == [] and out.drifted == []
    assert gitops.cluster.kube.writes == writes, "a no-op reconcile makes no write call"
    tr = gitops.get("TrafficReplay", "r1") or {}
    assert tr["metadata"]["annotations"]["team.example.com/owner"] == "payments"
    assert tr["metadata"]["labels"]["env"] == "staging"


def test_force_push_to_an_older_commit_is_followed(gitops: GitOps) -> None:
    old = gitops.repo.commit("one", {"r1.yaml": replay_yaml("r1", copies=1)})
    gitops.reconcile()
    gitops.repo.commit("two", {"r1.yaml": replay_yaml("r1", copies=4), "r2.yaml": replay_yaml("r2", "http://b:1")})
    gitops.reconcile()
    assert gitops.get("TrafficReplay", "r2") is not None
    gitops.repo.git("reset", "-q", "--hard", old)
    out = gitops.reconcile()
    assert out.revision == f"main@sha1:{old}"
    assert (gitops.get("TrafficReplay", "r1") or {})["spec"]["load"]["copies"] == 1
    assert gitops.get("TrafficReplay", "r2") is None


def test_dry_run_changes_nothing(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    gitops = GitOps(cluster, namespace, tmp_path, dry_run=True)
    gitops.repo.commit("r", {"r1.yaml": replay_yaml("r1")})
    out = gitops.reconcile()
    assert out.applied == [f"TrafficReplay {namespace}/r1"]
    assert gitops.get("TrafficReplay", "r1") is None


def test_pods_missing_the_sidecar_are_reported_and_rolled_once(gitops: GitOps) -> None:
    gitops.repo.commit("capture", {"p.yaml": POLICY.replace("{sampling}", "1")})
    gitops.cluster.kube.create({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": gitops.ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "checkout"}},
                 "template": {"metadata": {"labels": {"app": "checkout"}},
                              "spec": {"containers": [{"name": "app", "image": "shop/app:1"}]}}}})
    gitops.reconcile()  # annotates the template; no webhook runs, so the new pod comes without the sidecar
    cluster, ns = gitops.cluster, gitops.ns

    def sidecarless_pods_with_hash() -> bool:
        pods = cluster.kube.list("v1", "Pod", ns, "app=checkout")
        return any(CONFIG_HASH in (p["metadata"].get("annotations") or {}) for p in pods)

    cluster.kube.wait_for("pods of the annotated template", sidecarless_pods_with_hash, timeout=60)
    gitops.reconcile()
    entry = (gitops.get("CapturePolicy", "checkout") or {})["status"]["selectedWorkloads"][0]
    assert entry["stalePods"] >= 1
    web = gitops.get("Deployment", "web", "apps/v1") or {}
    notes = web["spec"]["template"]["metadata"]["annotations"]
    assert notes["replayops.dev/rolled-for"] == notes[CONFIG_HASH] and "kubectl.kubernetes.io/restartedAt" in notes
    restarted = notes["kubectl.kubernetes.io/restartedAt"]
    gitops.reconcile()
    web = gitops.get("Deployment", "web", "apps/v1") or {}
    assert web["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] == restarted, \
        "rolled once per config hash, not on every pass"


def test_each_namespace_with_a_policy_gets_its_own_forwarder_token(cluster: Cluster, namespace: str,
                                                                   tmp_path: Path) -> None:
    """The token in a team's namespace is that namespace's (derived from the master the forwarder holds):
    a sidecar there can write only under its own namespace's policies."""
    system = f"sys-{namespace}"
    cluster.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": system}})
    try:
        gitops = GitOps(cluster, namespace, tmp_path)
        gitops.reconciler.options = Options(name=namespace, namespace=namespace, status_namespace=system)
        gitops.repo.commit("capture", {"policies/checkout.yaml": POLICY.replace("{sampling}", "1")})
        assert gitops.reconcile().error == ""
        source = cluster.kube.get("v1", "Secret", forwardersecrets.NAME, system) or {}
        copy = cluster.kube.get("v1", "Secret", forwardersecrets.NAME, namespace) or {}
        master = base64.b64decode(source["data"]["token"]).decode()
        own = base64.b64decode(copy["data"]["token"]).decode()
        assert master and own != master and own == tokens.for_namespace(master, namespace), "the namespace's own"
        assert tokens.namespace_of(master, own) == namespace
        assert forwardersecrets.share(cluster.kube, system, [namespace]) == [], "an up-to-date copy is not written"
        key = (cluster.kube.get("v1", "Secret", DLP_KEY_SECRET, system) or {})["data"]["key"]
        assert len(base64.b64decode(key)) >= 32, "the forwarder's DLP key, created beside the source token"
        assert cluster.kube.get("v1", "Secret", DLP_KEY_SECRET, namespace) is None, "never copied out"

        rotated = base64.b64encode(b"rotated-token").decode()
        cluster.kube.apply({**source, "metadata": {"name": forwardersecrets.NAME, "namespace": system},
                            "data": {"token": rotated}})
        gitops.reconcile()
        copied = cluster.kube.get("v1", "Secret", forwardersecrets.NAME, namespace) or {}
        got = base64.b64decode(copied["data"]["token"])
        assert got.decode() == tokens.for_namespace("rotated-token", namespace), "a rotated master reaches it"
        assert (cluster.kube.get("v1", "Secret", DLP_KEY_SECRET, system) or {})["data"]["key"] == key, "never changed"
    finally:
        cluster.kube.delete("v1", "Namespace", system)


def test_a_deleted_target_does_not_reject_later_commits_but_a_new_missing_one_does(gitops: GitOps) -> None:
    gitops.deployment("web", {"app": "web"})
    target = "workloadRef: {name: web}"
    gitops.repo.commit("replay", {"replays/r1.yaml": replay_yaml("r1").replace("url: http://checkout:8080", target)})
    assert not gitops.reconcile().error
    gitops.cluster.kube.delete("apps/v1", "Deployment", "web", gitops.ns)
    gitops.repo.commit("more copies", {"replays/r1.yaml": replay_yaml("r1", copies=3).replace(
        "url: http://checkout:8080", target), "policies/checkout.yaml": POLICY.replace("{sampling}", "0.5")})
    later = gitops.reconcile()
    assert not later.stalled and not later.error, later.error
    assert (gitops.get("TrafficReplay", "r1") or {})["spec"]["load"]["copies"] == 3
    gitops.repo.commit("retarget", {"replays/r1.yaml": replay_yaml("r1", copies=3).replace(
        "url: http://checkout:8080", "workloadRef: {name: ghost}")})
    moved = gitops.reconcile()
    assert moved.stalled and f"Deployment {gitops.ns}/ghost does not exist" in moved.error, moved.error


def test_last_applied_revision_survives_a_restart(gitops: GitOps, tmp_path: Path) -> None:
    good = gitops.repo.commit("good", {"replays/r1.yaml": replay_yaml("r1")})
    gitops.reconcile()
    gitops.repo.commit("bad", {"replays/r1.yaml": "kind: [unclosed\n"})
    restarted = Reconciler(gitops.cluster.kube, GitSource(gitops.repo.url, cache=tmp_path / "cache2"), gitops.options)
    assert restarted.reconcile().stalled
    assert gitops.status()["lastAppliedRevision"] == f"main@sha1:{good}"


def test_credentials_in_the_repository_url_reach_no_status_event_or_log(
        cluster: Cluster, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from controller.gitops.auth import Auth
    from tests.gitrepo import serve_https

    Repo(tmp_path / "root" / "team.git").commit("one", {"replays/r1.yaml": replay_yaml("r1")})
    port, server = serve_https(tmp_path / "root", "right-token", tmp_path)
    try:
        url = f"https://x-token:wrong-s3cret@127.0.0.1:{port}/team.git"
        source = GitSource(url, cache=tmp_path / "cache", auth=Auth(ca_file=tmp_path / "git-ca.pem"))
        options = Options(name=namespace, namespace=namespace, status_namespace=namespace)
        with caplog.at_level("INFO"):
            out = Reconciler(cluster.kube, source, options).reconcile()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    assert out.error and f"https://***@127.0.0.1:{port}/team.git" in out.error
    status = cluster.kube.get("v1", "ConfigMap", f"replayops-status-{namespace}", namespace) or {}
    events = cluster.kube.list("v1", "Event", namespace)
    assert events and status["data"]["lastError"] == out.error
    logged = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for where, text in (("status", json.dumps(status)), ("events", json.dumps(events)), ("logs", logged)):
        assert "s3cret" not in text, where


def test_a_policy_applied_by_kubectl_is_converged_too(gitops: GitOps) -> None:
    """Workload annotations come from every CapturePolicy in the cluster, not only this source's."""
    gitops.deployment("web", {"app": "checkout"})
    gitops.repo.commit("settings", {"settings.yaml": SETTINGS})
    gitops.reconcile()
    applied = gitops.cluster.kubectl("apply", "-n", gitops.ns, "-f", "-", input=POLICY.replace("{sampling}", "0.5"))
    assert applied.returncode == 0, applied.stderr
    gitops.reconcile()
    web = gitops.get("Deployment", "web", "apps/v1") or {}
    assert web["spec"]["template"]["metadata"]["annotations"][CAPTURE] == "checkout"
    assert (gitops.get("CapturePolicy", "checkout") or {})["status"]["selectedCount"] == 1
    gitops.cluster.kubectl("delete", "-n", gitops.ns, "capturepolicy", "checkout", check=True)
    gitops.reconcile()
    web = gitops.get("Deployment", "web", "apps/v1") or {}
    assert CAPTURE not in (web["spec"]["template"]["metadata"].get("annotations") or {})


def test_a_rejected_revision_does_not_stop_the_converger(gitops: GitOps) -> None:
    """The converger's own source may be broken: policies applied by others are converged all the same."""
    gitops.deployment("web", {"app": "checkout"})
    gitops.repo.commit("broken", {"bad.yaml": "kind: [\n"})
    applied = gitops.cluster.kubectl("apply", "-n", gitops.ns, "-f", "-", input=POLICY.replace("{sampling}", "0.5"))
    assert applied.returncode == 0, applied.stderr
    out = gitops.reconcile()
    assert out.stalled and "bad.yaml" in out.error, out
    web = gitops.get("Deployment", "web", "apps/v1") or {}
    assert web["spec"]["template"]["metadata"]["annotations"][CAPTURE] == "checkout"
    assert (gitops.get("CapturePolicy", "checkout") or {})["status"]["selectedCount"] == 1
    gitops.cluster.kubectl("delete", "-n", gitops.ns, "capturepolicy", "checkout", check=True)


def test_an_object_an_earlier_version_applied_without_a_hash_is_neither_rewritten_nor_drift(gitops: GitOps) -> None:
    from controller.api import APPLIED_HASH
    from controller.gitops import desired

    sha = gitops.repo.commit("r1", {"r1.yaml": replay_yaml("r1"), "settings.yaml": SETTINGS})
    old = desired.stamp({**YAML(typ="safe").load(replay_yaml("r1")), "metadata": {
        "name": "r1", "namespace": gitops.ns}}, gitops.ns, sha)
    del old["metadata"]["annotations"][APPLIED_HASH]  # as an earlier version stamped it
    gitops.cluster.kube.apply(old, field_manager=f"replayops-source-{gitops.ns}")
    before = (gitops.get("TrafficReplay", "r1") or {})["metadata"]["resourceVersion"]
    out = gitops.reconcile()
    assert f"TrafficReplay {gitops.ns}/r1" not in out.applied + out.drifted, out
    assert (gitops.get("TrafficReplay", "r1") or {})["metadata"]["resourceVersion"] == before


def test_no_workload_is_annotated_before_its_namespace_has_the_forwarder_token(gitops: GitOps) -> None:
    """A sidecar reads the token once, when it starts: the copy must exist before any pod rolls. Here the
    copy cannot be written (a Secret of that name and another type is in the way): the pass fails and
    annotates nothing, rather than rolling pods whose sidecars would drop every batch."""
    system = f"{gitops.ns}-sys"  # where the controller keeps the source token, as replayops-system
    kube = gitops.cluster.kube
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": system}})
    try:
        gitops.reconciler.options = dataclasses.replace(gitops.options, status_namespace=system)
        gitops.deployment("web", {"app": "checkout"})
        kube.create({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
                     "metadata": {"name": "replayops-forwarder-token", "namespace": gitops.ns},
                     "data": {"username": base64.b64encode(b"in-the-way").decode()}})
        gitops.repo.commit("capture", {"policies/checkout.yaml": POLICY.replace("{sampling}", "1")})
        out = gitops.reconcile()
        assert not out.error and "forwarder token not shared into namespace" in out.warnings[0], out
        status = kube.get("v1", "ConfigMap", f"replayops-status-{gitops.ns}", system) or {}
        assert "forwarder token not shared" in status["data"]["warnings"]
        web = gitops.get("Deployment", "web", "apps/v1") or {}
        assert CAPTURE not in (web["spec"]["template"]["metadata"].get("annotations") or {})
    finally:
        kube.delete("v1", "Namespace", system)
        kube.delete("v1", "Secret", "replayops-forwarder-token", gitops.ns)  # no other test's pass meets it
        kube.delete(API, "CapturePolicy", "checkout", gitops.ns)


def _appliers(obj: dict[str, Any]) -> set[str]:
    return {m["manager"] for m in obj["metadata"].get("managedFields") or []
            if m.get("operation") == "Apply" and not m.get("subresource")}


def test_two_sources_own_their_own_objects_and_leave_each_others(cluster: Cluster, namespace: str,
                                                                 tmp_path: Path) -> None:
    a = GitOps(cluster, namespace, tmp_path / "a", prune=True, self_heal=True)
    b = GitOps(cluster, namespace, tmp_path / "b", prune=True, self_heal=True)
    b.reconciler.options = dataclasses.replace(b.options, name=f"{namespace}-b")
    a.repo.commit("a", {"r1.yaml": replay_yaml("r1", copies=2), "settings.yaml": SETTINGS})
    b.repo.commit("b", {"r1.yaml": replay_yaml("r1", copies=5), "r2.yaml": replay_yaml("r2", target="http://b:80")})
    assert not a.reconcile().error
    out = b.reconcile()
    assert out.conflicts == [f"TrafficReplay {namespace}/r1 (r1.yaml:1): applied by source {namespace}; left as "
                             "it is"] and not out.error, out
    r1, r2 = a.get("TrafficReplay", "r1") or {}, a.get("TrafficReplay", "r2") or {}
    assert r1["spec"]["load"]["copies"] == 2, "b did not overwrite a's object"
    assert _appliers(r1) == {f"replayops-source-{namespace}"} and _appliers(r2) == {f"replayops-source-{namespace}-b"}
    status = cluster.kube.get("v1", "ConfigMap", f"replayops-status-{namespace}-b", namespace) or {}
    assert "applied by source" in status["data"]["conflicts"]
    def versions() -> list[str]:  # of what the two sources write (other tests' namespaces share the cluster)
        objs = [a.get("TrafficReplay", "r1"), a.get("TrafficReplay", "r2"),
                cluster.kube.get("v1", "ConfigMap", f"replayops-status-{namespace}", namespace),
                cluster.kube.get("v1", "ConfigMap", f"replayops-status-{namespace}-b", namespace)]
        return [(o or {}).get("metadata", {}).get("resourceVersion", "") for o in objs]

    before = versions()
    for _ in range(3):  # steady: neither source writes, nothing flaps
        assert not a.reconcile().error and not b.reconcile().error
    assert versions() == before
    b.repo.commit("b drops r2, keeps its claim on r1", {"r2.yaml": "", "r1.yaml": replay_yaml("r1", copies=5)})
    assert b.reconcile().pruned == [f"TrafficReplay {namespace}/r2"]
    assert a.get("TrafficReplay", "r1") is not None, "b never prunes a's object"


def test_an_object_an_earlier_version_applied_as_the_controller_moves_to_the_sources_manager(
        gitops: GitOps) -> None:
    from controller.api import FIELD_MANAGER
    from controller.gitops import desired

    legacy = YAML(typ="safe").load(replay_yaml("r1"))
    legacy["metadata"].update(namespace=gitops.ns, labels={"applied-by": "an-earlier-version"})
    gitops.repo.commit("r1", {"r1.yaml": replay_yaml("r1"), "settings.yaml": SETTINGS})
    sha = gitops.repo.git("rev-parse", "HEAD")
    gitops.cluster.kube.apply(desired.stamp(legacy, gitops.ns, sha), field_manager=FIELD_MANAGER)
    assert not gitops.reconcile().error
    r1 = gitops.get("TrafficReplay", "r1") or {}
    assert _appliers(r1) == {f"replayops-source-{gitops.ns}"}
    assert "applied-by" not in r1["metadata"]["labels"], "what git no longer has goes with the old manager"


def test_a_source_applying_as_a_service_account_can_do_no_more_than_it_may(cluster: Cluster, namespace: str,
                                                                           tmp_path: Path) -> None:
    """As Flux's serviceAccountName: the team's ServiceAccount may manage TrafficReplays in its namespace
    and nothing else; a ConfigMap in its repository is refused by the API server, naming the account."""
    kube = cluster.kube
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "team", "namespace": namespace}})
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "team-replays", "namespace": namespace},
                "rules": [{"apiGroups": ["replayops.dev"], "resources": ["trafficreplays"],
                           "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]})
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "team-replays", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "team-replays"},
                "subjects": [{"kind": "ServiceAccount", "name": "team", "namespace": namespace}]})
    gitops = GitOps(cluster, namespace, tmp_path, prune=True, service_account=(namespace, "team"))
    gitops.repo.commit("a replay", {"r1.yaml": replay_yaml("r1", copies=2)})
    first = gitops.reconcile()
    assert not first.error, first.error
    assert (gitops.get("TrafficReplay", "r1") or {})["spec"]["load"]["copies"] == 2
    gitops.repo.commit("and a ConfigMap", {"settings.yaml": SETTINGS, "r1.yaml": replay_yaml("r1", copies=3)})
    out = gitops.reconcile()
    assert out.error and f"system:serviceaccount:{namespace}:team" in out.error and "configmaps" in out.error, out
    assert kube.get("v1", "ConfigMap", "settings", namespace) is None


class _Lease:
    """Leadership the test hands out and takes back (the elector's own rules are tested with a real Lease
    in test_controller_process and test_leader_fencing)."""

    timings = Timings(lease_duration=15, renew_deadline=10, retry_period=0.1)

    def __init__(self) -> None:
        self.held, self.term = True, 1

    def leading(self) -> bool:
        return self.held

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_a_replica_that_leads_again_fetches_before_it_applies(cluster: Cluster, namespace: str,
                                                              tmp_path: Path) -> None:
    """A leads and applies rev1; while another leads, rev2 is committed and applied; A leads again within
    its poll interval: it fetches first, and never applies its cached rev1 over rev2."""
    import threading

    from controller.gitops.loop import Loop

    a = GitOps(cluster, namespace, tmp_path / "a", prune=True, self_heal=True)
    a.repo.commit("rev1", {"r1.yaml": replay_yaml("r1", copies=1), "settings.yaml": SETTINGS})
    lease = _Lease()
    loop = Loop(a.reconciler, interval=3600, elector=lease)  # type: ignore[arg-type]
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        cluster.kube.wait_for("rev1 applied", lambda: (a.get("TrafficReplay", "r1") or {}).get(
            "spec", {}).get("load", {}).get("copies") == 1, timeout=30)
        lease.held = False  # A's loop sleeps out its interval and never sees it
        rev2 = a.repo.commit("rev2", {"r1.yaml": replay_yaml("r1", copies=2)})
        other = Reconciler(cluster.kube, GitSource(a.repo.url, cache=tmp_path / "other-cache"), a.options)
        assert not other.reconcile().error  # the other leader applies rev2
        lease.held, lease.term = True, 2  # led again, while A's loop slept out its interval
        loop.wake()
        cluster.kube.wait_for("A's first pass as leader again", lambda: a.reconciler.last_applied is not None
                              and a.reconciler.last_applied.sha == rev2, timeout=30)
        assert (a.get("TrafficReplay", "r1") or {})["spec"]["load"]["copies"] == 2, "A rolled back to rev1"
    finally:
        loop.stop()
        runner.join(10)
