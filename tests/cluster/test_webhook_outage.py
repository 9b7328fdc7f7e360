"""With the webhook process stopped: pods are still admitted (Ignore), our resources are refused (Fail)."""

from __future__ import annotations

import pytest

from controller.admission import register
from controller.kube import KubeError
from tests.conftest import Cluster, start_webhook
from tests.crd_cases import replay


def test_outage_admits_pods_and_refuses_our_resources(cluster: Cluster, namespace: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hook = start_webhook(cluster, tmp_path)
    hook.stop()
    try:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "during-outage", "namespace": namespace,
                            "annotations": {"replayops.dev/capture": "checkout"}},
               "spec": {"containers": [{"name": "app", "image": "shop/checkout:1.4"}]}}
        created = cluster.kube.create(pod)
        assert not created["spec"].get("initContainers")
        obj = replay()
        obj["metadata"]["namespace"] = namespace
        with pytest.raises(KubeError) as err:
            cluster.kube.create(obj)
        assert "failed calling webhook" in str(err.value)
        assert "replayops.dev" in str(err.value)
    finally:
        register.unregister(cluster.kube)
