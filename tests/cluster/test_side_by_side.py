"""Two sources (controller processes) and an Argo-style applier on overlapping workloads, a minute at a
1 s resync: one converger, nothing flaps, nothing rolls, and the managedFields are what argo/ ignores."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from controller import paths
from controller.api import CAPTURE, CONVERGER_LEASE, FIELD_MANAGER, REPLAYS_LEASE
from controller.devcluster import stop_pid
from tests.cluster.test_controller_process import Controllers, wait
from tests.conftest import Cluster
from tests.gitrepo import Repo

API = "replayops.dev/v1alpha1"
ARGO = "argocd-controller"  # the field manager Argo CD's server-side apply uses


def policy(name: str, labels: dict[str, str]) -> str:
    return (f"apiVersion: {API}\nkind: CapturePolicy\nmetadata: {{name: {name}}}\n"
            f"spec:\n  selector: {{matchLabels: {labels}}}\n")


def shared(value: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: shared}}\ndata: {{owner: {value}}}\n"


def workloads(ns: str) -> list[dict[str, Any]]:
    """What the Argo-style applier syncs: the Deployments (no capture annotation: the policies give those)."""
    out = []
    for name, labels in (("web", {"app": "shop", "tier": "web"}), ("api", {"app": "shop", "tier": "api"}),
                         ("worker", {"app": "jobs"})):
        out.append({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/instance": "shop"}},
                    "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                             "template": {"metadata": {"labels": labels},
                                          "spec": {"containers": [{"name": "app", "image": "shop/app:1"}]}}}})
    return out


def _annotation_managers(obj: dict[str, Any]) -> set[str]:
    """The managers owning any annotation of the pod template."""
    found = set()
    for entry in obj["metadata"].get("managedFields") or []:
        spec = ((entry.get("fieldsV1") or {}).get("f:spec") or {}).get("f:template") or {}
        if ((spec.get("f:metadata") or {}).get("f:annotations")):
            found.add(entry["manager"])
    return found


def test_two_sources_and_an_argo_style_applier_for_a_minute_nothing_flaps(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    kube, ns = cluster.kube, namespace
    cluster.settle()  # the converger and the replay runner read the whole cluster
    controllers = Controllers(cluster, namespace, tmp_path)
    argo_policy = YAML(typ="safe").load(policy("jobs", {"app": "jobs"}))
    argo_policy["metadata"].update(namespace=ns, labels={"app.kubernetes.io/instance": "shop"})
    stop = threading.Event()

    def argo() -> None:  # syncs its objects every second, as Argo CD with ServerSideApply=true and selfHeal
        while not stop.is_set():
            for obj in [*workloads(ns), argo_policy]:
                kube.apply(obj, field_manager=ARGO)
            stop.wait(1.0)

    applier = threading.Thread(target=argo, daemon=True)
    applier.start()
    a, b = Repo(tmp_path / "a"), Repo(tmp_path / "b")
    a.commit("a", {"web.yaml": policy("web", {"tier": "web"}), "shared.yaml": shared("a")})
    b.commit("b", {"api.yaml": policy("api", {"tier": "api"}), "shared.yaml": shared("b")})
    common = ("--interval", "1s", "--leader-elect", "--lease-seconds", "6", "--renew-deadline", "4",
              "--retry-period", "0.5", "--self-heal", "--prune")  # the forwarder namespace: this one (Controllers)
    try:  # a runs the replays (its Jobs in this namespace), b runs none
        controllers.start(a.url, *common, "--replay-namespace", ns, "--identity", "ctl-a", name=f"{ns}-a")
        controllers.start(b.url, *common, "--no-replays", "--identity", "ctl-b", name=f"{ns}-b")

        def annotations() -> dict[str, str | None]:
            out = {}
            for name in ("web", "api", "worker"):
                found = kube.get("apps/v1", "Deployment", name, ns) or {}
                notes = (((found.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("annotations")
                out[name] = (notes or {}).get(CAPTURE)
            return out

        wait("every workload converged", lambda: annotations() == {"web": "web", "api": "api", "worker": "jobs"})
        wait("both sources reported", lambda: all(kube.get("v1", "ConfigMap", f"replayops-status-{ns}-{s}", ns)
                                                  for s in "ab"))
        time.sleep(3)  # the first passes' status writes, and the Deployment controller's, settle

        def versions() -> dict[str, str]:
            refs = [("apps/v1", "Deployment", n) for n in ("web", "api", "worker")] + [
                (API, "CapturePolicy", n) for n in ("web", "api", "jobs")] + [
                ("v1", "ConfigMap", n) for n in ("shared", f"replayops-status-{ns}-a", f"replayops-status-{ns}-b")]
            return {f"{k} {n}": (kube.get(api, k, n, ns) or {}).get("metadata", {}).get("resourceVersion", "")
                    for api, k, n in refs}

        before = versions()
        generations = {n: (kube.get("apps/v1", "Deployment", n, ns) or {})["metadata"]["generation"]
                       for n in ("web", "api", "worker")}
        time.sleep(60)  # 60 resyncs of each source and of the applier
        after = versions()
        assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert {n: (kube.get("apps/v1", "Deployment", n, ns) or {})["metadata"]["generation"]
                for n in generations} == generations, "no pod template changed: no roll"

        lease = kube.get("coordination.k8s.io/v1", "Lease", CONVERGER_LEASE, ns) or {}
        holder = lease.get("spec", {}).get("holderIdentity")
        assert holder in (f"ctl-a/{ns}-a", f"ctl-b/{ns}-b") and lease["spec"]["leaseTransitions"] == 0, \
            "one converger for both sources, the whole minute"
        runner = kube.get("coordination.k8s.io/v1", "Lease", REPLAYS_LEASE, ns) or {}
        assert runner.get("spec", {}).get("holderIdentity") == f"ctl-a/{ns}-a", "the one source that runs replays"
        other = 1 if holder.startswith("ctl-a") else 0
        assert "replayops-converger" not in "".join(
            line for line in controllers.log(other).splitlines() if '"leader": true' in line), \
            "the other source's controller never converged"
        cm = kube.get("v1", "ConfigMap", "shared", ns) or {}
        owner = cm["metadata"]["labels"]["replayops.dev/source"]
        loser = f"{ns}-b" if owner == f"{ns}-a" else f"{ns}-a"
        status = kube.get("v1", "ConfigMap", f"replayops-status-{loser}", ns) or {}
        assert "applied by source" in status["data"]["conflicts"], status["data"]
        assert cm["data"]["owner"] == owner[-1], "the other source never overwrote it"

        # the converger's controller goes: the other source's takes the converging over
        stop_pid(controllers.procs[1 - other].pid, timeout=10)
        kube.apply({**argo_policy, "metadata": {**argo_policy["metadata"], "name": "more"},
                    "spec": {"selector": {"matchLabels": {"app": "more"}}}}, field_manager="kubectl")
        kube.apply({**workloads(ns)[2], "metadata": {"name": "more", "namespace": ns}, "spec": {
            **workloads(ns)[2]["spec"], "selector": {"matchLabels": {"app": "more"}},
            "template": {**workloads(ns)[2]["spec"]["template"], "metadata": {"labels": {"app": "more"}}}}},
                   field_manager="kubectl")
        wait("the other controller converges", lambda: ((kube.get("apps/v1", "Deployment", "more", ns) or {})[
            "spec"]["template"]["metadata"].get("annotations") or {}).get(CAPTURE) == "more", timeout=30)

        application = YAML(typ="safe").load(
            (paths.source_dir("argo") / "applications" / "replayops-gitops.yaml").read_text())
        ignored = {d["kind"]: set(d.get("managedFieldsManagers") or [])
                   for d in application["spec"].get("ignoreDifferences") or []}
        for name in ("web", "api", "worker"):
            live = kube.get("apps/v1", "Deployment", name, ns) or {}
            assert _annotation_managers(live) == {FIELD_MANAGER}, live["metadata"]["managedFields"]
            assert _annotation_managers(live) <= ignored["Deployment"], "Argo CD ignores who set the annotations"
    finally:
        controllers.stop_all()
        stop.set()
        applier.join(10)
        for name in ("web", "api", "jobs", "more"):  # no later test's converger meets them
            kube.delete(API, "CapturePolicy", name, ns)
