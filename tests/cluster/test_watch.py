"""Watches resume from a resourceVersion and relist when the apiserver answers 410 Gone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from controller.devcluster import DevCluster, ensure_binaries
from controller.kube import Kube, KubeError, connect
from controller.kube.watch import Watcher
from tests.conftest import Cluster


def _compacted(kube: Kube, resource_version: str) -> bool:
    """Whether ``resource_version`` is gone from etcd's history (a list at exactly it answers 410)."""
    try:
        kube.call("GET", "/api/v1/namespaces/default/configmaps",
                  query=[("resourceVersion", resource_version), ("resourceVersionMatch", "Exact")])
    except KubeError as exc:
        return exc.status == 410
    return False


def test_a_compacted_resource_version_is_relisted_and_the_watch_goes_on(tmp_path: Path) -> None:
    # no watch cache and fast compaction: an old resourceVersion really is gone
    dev = DevCluster(tmp_path, ensure_binaries(), controller_manager=False,
                     apiserver_args=("--watch-cache=false", "--etcd-compaction-interval=5s"))
    dev.start()
    stop = threading.Event()
    try:
        kube = connect(dev.kubeconfig)
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w", "namespace": "default"},
              "data": {"i": "0"}}
        old = kube.apply(cm)["metadata"]["resourceVersion"]
        for i in range(1, 20):
            cm["data"]["i"] = str(i)
            kube.apply(cm)
        deadline = time.monotonic() + 60
        while not _compacted(kube, old):  # the apiserver compacts every 5s; under load it may take longer
            assert time.monotonic() < deadline, "etcd history was never compacted"
            time.sleep(0.5)
        seen: list[str] = []
        watcher = Watcher(kube, "v1", "ConfigMap", lambda _t, o: seen.append(o["data"]["i"]), stop,
                          resource_version=old, timeout=5)
        watcher.start()
        deadline = time.monotonic() + 20
        while watcher.relists == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert watcher.relists == 1, "410 Gone made the watcher list again"
        cm["data"]["i"] = "after"
        kube.apply(cm)
        while "after" not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen == ["after"], "no stale replay of compacted history, and the new change arrives"
    finally:
        stop.set()
        dev.stop()


def test_a_namespaced_watch_sees_its_namespace_only(cluster: Cluster, namespace: str) -> None:
    other = f"{namespace}-other"
    cluster.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    stop = threading.Event()
    seen: list[str] = []
    watcher = Watcher(cluster.kube, "v1", "ConfigMap", lambda _t, o: seen.append(o["metadata"]["name"]), stop,
                      namespace=namespace, label_selector="test=watch")
    watcher.start()
    try:
        deadline = time.monotonic() + 20
        while watcher.relists == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for ns, name in ((other, "elsewhere"), (namespace, "here")):
            cluster.kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                "name": name, "namespace": ns, "labels": {"test": "watch"}}})
        while "here" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == ["here"]
    finally:
        stop.set()
        cluster.kube.delete("v1", "Namespace", other)
