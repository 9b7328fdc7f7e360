"""Where a TrafficReplay's requests go: its ``target.url``, or the Service in front of its workload."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.api import WORKLOAD_API
from controller.kube import Kube


class TargetError(LookupError):
    """The target cannot be resolved; the message says which object is missing."""


def _container_port(template: Mapping[str, Any], name: str) -> int | None:
    for container in (template.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == name:
                return int(port["containerPort"])
    return None


def resolve(kube: Kube, namespace: str, spec: Mapping[str, Any]) -> str:
    """The base URL the replay's requests are sent to (cluster DNS of the Service selecting the workload)."""
    target = spec.get("target") or {}
    if target.get("url"):
        return str(target["url"]).rstrip("/")
    ref = target.get("workloadRef") or {}
    kind, name, port = ref.get("kind", "Deployment"), ref.get("name", ""), ref.get("port")
    workload = kube.get(WORKLOAD_API, kind, name, namespace)
    if workload is None:
        raise TargetError(f"spec.target.workloadRef: {kind} {namespace}/{name} does not exist")
    template = (workload.get("spec") or {}).get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    for svc in sorted(kube.list("v1", "Service", namespace), key=lambda s: s["metadata"]["name"]):
        selector = (svc.get("spec") or {}).get("selector") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            continue
        for svc_port in svc["spec"].get("ports") or []:
            target_port = svc_port.get("targetPort", svc_port["port"])
            if isinstance(target_port, str):
                target_port = _container_port(template, target_port)
            if port is None or port in (svc_port["port"], target_port):
                return f"http://{svc['metadata']['name']}.{namespace}.svc:{svc_port['port']}"
    on_port = f" on port {port}" if port is not None else ""
    raise TargetError(f"spec.target.workloadRef: no Service in {namespace} selects {kind} {name}{on_port}")
