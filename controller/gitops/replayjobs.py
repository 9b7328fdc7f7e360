"""TrafficReplays run as Jobs: the controller starts one per replay generation and follows it.

A TrafficReplay without a Job for its generation gets one in the replay namespace (where the
snapshot store's volume is), running ``replayops replay --resource NS/NAME`` as the
``replayops-replay`` ServiceAccount: the pod reads the replay, resolves its target, replays the
snapshot and writes the outcome into the replay's status (phase, summary, reportRef). The
controller marks the replay Pending when it creates the Job and Failed when the Job fails
without the pod having said why (``spec.timeout`` is the Job's deadline; the pod is not
retried: a replay is load on someone's service). A replay that is gone, or has a newer
generation, has its old Job deleted, which cancels a run in progress.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller import __version__, logs
from controller.api import (
    API_VERSION,
    FAILED,
    GENERATION,
    JOB_CREATED,
    JOB_FAILED,
    JOB_MANAGER,
    MANAGED_BY,
    PENDING,
    REPLAY,
    SYSTEM_NAMESPACE,
    TERMINAL_PHASES,
    UID_LABEL,
)
from controller.durations import parse_duration
from controller.kube import Kube, KubeError
from controller.replay import resource_status

log = logs.get("replayjobs")



@dataclass(frozen=True)
class JobConfig:
    """Where and how replay Jobs run (the controller's flags)."""

    namespace: str = SYSTEM_NAMESPACE
    image: str = f"ghcr.io/replayops/replayops:{__version__}"
    service_account: str = "replayops-replay"
    store_claim: str = "replayops-store"
    home: str = "/var/lib/replayops"
    cpu: str = "500m"
    memory: str = "512Mi"


def job_name(replay: Mapping[str, Any]) -> str:
    """A DNS label unique to the replay's uid and generation."""
    meta = replay["metadata"]
    digest = hashlib.sha256(f"{meta['uid']}/{meta.get('generation', 1)}".encode()).hexdigest()[:10]
    return f"replay-{meta['name'][:40].rstrip('-.')}-{digest}"


MOCKS_PORT = 9300
MOCKS_DEADLINE_MARGIN_S = 300


def mocks_only(replay: Mapping[str, Any]) -> bool:
    return (replay.get("spec") or {}).get("mode") == "mocks-only"


def mocks_url(replay: Mapping[str, Any], config: JobConfig) -> str:
    """Where a mocks-only replay's mocks answer: its Service, named as its Job."""
    return f"http://{job_name(replay)}.{config.namespace}.svc:{MOCKS_PORT}"


def render_service(replay: Mapping[str, Any], config: JobConfig, job_uid: str) -> dict[str, Any]:
    """The Service in front of a mocks-only replay's pod, owned by its Job (deleted with it)."""
    name = job_name(replay)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": config.namespace,
                         "labels": {MANAGED_BY: JOB_MANAGER, UID_LABEL: replay["metadata"]["uid"]},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                              "uid": job_uid}]},
            "spec": {"selector": {UID_LABEL: replay["metadata"]["uid"]},
                     "ports": [{"name": "mocks", "port": MOCKS_PORT, "targetPort": "mocks"}]}}


def render(replay: Mapping[str, Any], config: JobConfig) -> dict[str, Any]:
    """The Job that runs ``replay``: the generator, or for mocks-only the responder."""
    meta, spec = replay["metadata"], replay.get("spec") or {}
    labels = {MANAGED_BY: JOB_MANAGER, UID_LABEL: meta["uid"], "app.kubernetes.io/part-of": "replayops"}
    ref = f"{meta['namespace']}/{meta['name']}"
    if mocks_only(replay):
        work: dict[str, Any] = {"args": ["mock", "--resource", ref, "--listen", str(MOCKS_PORT), "--host", "0.0.0.0",
                                         "--url", mocks_url(replay, config)],
                                "ports": [{"name": "mocks", "containerPort": MOCKS_PORT}],
                                "readinessProbe": {"httpGet": {"path": "/__replayops/status", "port": "mocks"}}}
    else:
        work = {"args": ["replay", "--resource", ref, "--no-progress"]}
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        # mocks serve for the timeout and stop by themselves: their deadline leaves room for the pod's start
        "activeDeadlineSeconds": max(1, int(parse_duration(spec.get("timeout") or "30m") or 1800))
        + (MOCKS_DEADLINE_MARGIN_S if mocks_only(replay) else 0),
        "template": {
            "metadata": {"labels": labels, "annotations": {"sidecar.replayops.dev/inject": "false"}},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": config.service_account,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "fsGroup": 65532,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "replay",
                    "image": config.image,
                    **work,
                    "env": [{"name": "REPLAYOPS_HOME", "value": config.home}],
                    "resources": {"requests": {"cpu": config.cpu, "memory": config.memory},
                                  "limits": {"memory": config.memory}},
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}},
                    # the root filesystem is read-only: reports go to the store, scratch files to /tmp
                    "volumeMounts": [{"name": "store", "mountPath": config.home}, {"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "store", "persistentVolumeClaim": {"claimName": config.store_claim}},
                            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}}],
            },
        },
    }
    if spec.get("ttlAfterFinished"):
        job_spec["ttlSecondsAfterFinished"] = int(parse_duration(spec["ttlAfterFinished"]) or 0)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name(replay), "namespace": config.namespace, "labels": labels,
                         "annotations": {REPLAY: f"{meta['namespace']}/{meta['name']}",
                                         GENERATION: str(meta.get("generation", 1))}},
            "spec": job_spec}


def _job_failure(job: Mapping[str, Any]) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return cond  # type: ignore[no-any-return]
    return None


def next_status(replay: Mapping[str, Any], job: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The status the controller writes for ``replay`` given its Job for the current generation
    (None: the Job is still to be created); None when there is nothing to write."""
    generation = int(replay["metadata"].get("generation", 1))
    status = replay.get("status") or {}
    current = status.get("observedGeneration") == generation
    if current and status.get("phase") in TERMINAL_PHASES:
        return None
    if job is None:
        return {"phase": PENDING, "observedGeneration": generation,
                "conditions": [resource_status.ready(False, JOB_CREATED,
                                                     f"waiting for Job {job_name(replay)} to start", generation)]}
    failed = _job_failure(job)
    if failed is None:
        return None
    reason = str(failed.get("reason") or JOB_FAILED)
    message = f"Job {job['metadata']['namespace']}/{job['metadata']['name']} failed: {reason}"
    if failed.get("message"):
        message += f": {failed['message']}"
    return {"phase": FAILED, "observedGeneration": generation, "finishTime": resource_status.now(),
            "conditions": [resource_status.ready(False, reason, message, generation)]}


@dataclass
class ReplayJobs:
    """One pass: start Jobs for replays that need one, fail replays whose Job failed, delete orphans."""

    kube: Kube
    config: JobConfig = field(default_factory=JobConfig)
    dry_run: bool = False

    def sync(self) -> list[str]:
        """Bring Jobs and replay statuses up to the cluster's TrafficReplays; return what was done."""
        done: list[str] = []
        replays = self.kube.list(API_VERSION, "TrafficReplay")
        jobs = {j["metadata"]["name"]: j for j in self.kube.list(
            "batch/v1", "Job", self.config.namespace, label_selector=f"{MANAGED_BY}={JOB_MANAGER}")}
        wanted = set()
        for replay in replays:
            name = job_name(replay)
            wanted.add(name)
            try:
                done += self._one(replay, jobs.get(name))
            except KubeError as exc:
                meta = replay["metadata"]
                log.error("replay not run", extra=logs.fields(replay=f"{meta['namespace']}/{meta['name']}",
                                                              error=str(exc)))
        for name, job in jobs.items():
            if name not in wanted:
                if not self.dry_run:
                    self.kube.delete("batch/v1", "Job", name, self.config.namespace)
                done.append(f"deleted Job {name} of {job['metadata'].get('annotations', {}).get(REPLAY, '?')}")
        for line in done:
            log.info(line)
        return done

    def _one(self, replay: Mapping[str, Any], job: Mapping[str, Any] | None) -> list[str]:
        meta = replay["metadata"]
        ref = f"{meta['namespace']}/{meta['name']}"
        status = next_status(replay, job)
        if status is None or self.dry_run:
            return []
        out = []
        if job is None:
            created = self.kube.apply(render(replay, self.config))
            out.append(f"created Job {job_name(replay)} for TrafficReplay {ref}")
            if mocks_only(replay):
                self.kube.apply(render_service(replay, self.config, created["metadata"]["uid"]))
                out.append(f"created Service {job_name(replay)} for the mocks of TrafficReplay {ref}")
        self.kube.apply_status({"apiVersion": API_VERSION, "kind": "TrafficReplay",
                                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                                "status": status})
        if status["phase"] == FAILED:
            out.append(f"TrafficReplay {ref} failed: {status['conditions'][0]['message']}")
        return out
