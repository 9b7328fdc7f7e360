"""The inspector's rows: capture state from a workload and its pods; secrets without their values."""

from __future__ import annotations

from typing import Any

from controller.inspector import view


def pod(name: str, *, injected: bool, ready: bool) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app": "web"},
                         "annotations": {"replayops.dev/injected": "0.1.0"} if injected else {}},
            "status": {"initContainerStatuses": [{"name": "replayops-proxy", "ready": ready}] if injected else []}}


def test_workload_row_counts_its_injected_pods_and_ready_sidecars_and_reads_tls_from_its_policy() -> None:
    web = {"metadata": {"name": "web", "namespace": "shop"},
           "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"},
                                              "annotations": {"replayops.dev/capture": "p1"}}}},
           "status": {"readyReplicas": 2}}
    other = {"metadata": {"name": "x", "labels": {"app": "other"}}}
    pods = [pod("a", injected=True, ready=True), pod("b", injected=True, ready=False),
            pod("c", injected=False, ready=False), other]
    policies = {"p1": {"spec": {"outbound": {"enabled": True, "tlsUnwrap": True}}}}
    row = view.workload_row("Deployment", web, pods, policies)
    assert (row.replicas, row.captured_by, row.tls_out, row.pods, row.injected, row.sidecars_ready) == \
        ("2/3", "p1", True, 3, 2, 1)
    assert not row.opted_out


def test_secret_row_has_names_and_keys_and_no_value() -> None:
    secret = {"metadata": {"name": "db", "namespace": "shop"}, "type": "Opaque",
              "data": {"password": "aHVudGVyMg=="}, "stringData": {"user": "app-user"}}
    row = view.secret_row(secret)
    assert row.keys == ("password", "user")
    assert "aHVudGVyMg==" not in repr(row) and "app-user" not in repr(row)
