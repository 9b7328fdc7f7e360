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

from controller import __version__, conditions, logs
from controller.api import (
    API_VERSION,
    FAILED,
    GENERATION,
    JOB_CREATED,
    JOB_FAILED,
    JOB_MANAGER,
    MANAGED_BY,
    PENDING,
    READY_PHASE,
    REPLAY,
    SNAPSHOT,
    SNAPSHOT_NOT_READY,
    SYSTEM_NAMESPACE,
    TERMINAL_PHASES,
    UID_LABEL,
)
from controller.durations import parse_duration
from controller.gitops.leader import NotLeader
from controller.kube import Kube, KubeError

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


def job_name(obj: Mapping[str, Any], prefix: str = "replay") -> str:
    """A DNS label unique to the object's uid and generation."""
    meta = obj["metadata"]
    digest = hashlib.sha256(f"{meta['uid']}/{meta.get('generation', 1)}".encode()).hexdigest()[:10]
    return f"{prefix}-{meta['name'][:40].rstrip('-.')}-{digest}"


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


def _job(name: str, uid: str, annotations: dict[str, str], work: dict[str, Any], deadline: int,
         ttl: int | None, config: JobConfig) -> dict[str, Any]:
    """A Job of ours running the image with ``work`` (args, ports, probes) on the store's volume."""
    labels = {MANAGED_BY: JOB_MANAGER, UID_LABEL: uid, "app.kubernetes.io/part-of": "replayops"}
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": deadline,
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
    if ttl is not None:
        job_spec["ttlSecondsAfterFinished"] = ttl
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": config.namespace, "labels": labels, "annotations": annotations},
            "spec": job_spec}


def render(replay: Mapping[str, Any], config: JobConfig) -> dict[str, Any]:
    """The Job that runs ``replay``: the generator, or for mocks-only the responder."""
    meta, spec = replay["metadata"], replay.get("spec") or {}
    ref = f"{meta['namespace']}/{meta['name']}"
    if mocks_only(replay):
        work: dict[str, Any] = {"args": ["mock", "--resource", ref, "--listen", str(MOCKS_PORT), "--host", "0.0.0.0",
                                         "--url", mocks_url(replay, config)],
                                "ports": [{"name": "mocks", "containerPort": MOCKS_PORT}],
                                "readinessProbe": {"httpGet": {"path": "/__replayops/status", "port": "mocks"}}}
    else:
        work = {"args": ["replay", "--resource", ref, "--no-progress"]}
    # mocks serve for the timeout and stop by themselves: their deadline leaves room for the pod's start
    deadline = max(1, int(parse_duration(spec.get("timeout") or "30m") or 1800)) \
        + (MOCKS_DEADLINE_MARGIN_S if mocks_only(replay) else 0)
    ttl = int(parse_duration(spec["ttlAfterFinished"]) or 0) if spec.get("ttlAfterFinished") else None
    return _job(job_name(replay), meta["uid"], {REPLAY: ref, GENERATION: str(meta.get("generation", 1))}, work,
                deadline, ttl, config)


SNAPSHOT_DEADLINE_S = 1800
SNAPSHOT_JOB_TTL_S = 3600


def snapshot_job_name(snap: Mapping[str, Any]) -> str:
    return job_name(snap, prefix="snapshot")


def render_snapshot(snap: Mapping[str, Any], config: JobConfig) -> dict[str, Any]:
    """The Job that cuts the Snapshot ``snap`` from the store and writes its status."""
    meta = snap["metadata"]
    ref = f"{meta['namespace']}/{meta['name']}"
    return _job(snapshot_job_name(snap), meta["uid"], {SNAPSHOT: ref, GENERATION: str(meta.get("generation", 1))},
                {"args": ["snapshot", "cut", "--resource", ref]}, SNAPSHOT_DEADLINE_S, SNAPSHOT_JOB_TTL_S, config)


def _job_failure(job: Mapping[str, Any]) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return cond  # type: ignore[no-any-return]
    return None


def _status(phase: str, generation: int, reason: str, message: str, finished: bool = False) -> dict[str, Any]:
    status = {"phase": phase, "observedGeneration": generation,
              "conditions": [conditions.ready(False, reason, message, generation)]}
    return {**status, "finishTime": conditions.now()} if finished else status


def next_status(obj: Mapping[str, Any], job: Mapping[str, Any] | None, *, name: str | None = None,
                terminal: tuple[str, ...] = TERMINAL_PHASES) -> dict[str, Any] | None:
    """The status the controller writes for ``obj`` (a TrafficReplay or Snapshot) given its Job ``name``
    for the current generation (None: the Job is still to be created); None when there is nothing to write."""
    generation = int(obj["metadata"].get("generation", 1))
    status = obj.get("status") or {}
    if status.get("observedGeneration") == generation and status.get("phase") in terminal:
        return None
    if job is None:
        return _status(PENDING, generation, JOB_CREATED, f"waiting for Job {name or job_name(obj)} to start")
    failed = _job_failure(job)
    if failed is None:
        return None
    reason = str(failed.get("reason") or JOB_FAILED)
    message = f"Job {job['metadata']['namespace']}/{job['metadata']['name']} failed: {reason}"
    if failed.get("message"):
        message += f": {failed['message']}"
    return _status(FAILED, generation, reason, message, finished=obj.get("kind", "TrafficReplay") == "TrafficReplay")


def snapshot_block(replay: Mapping[str, Any], snap: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Why ``replay`` cannot start yet (Pending) or ever (Failed) because of the Snapshot it names; None
    when it can (the Snapshot is Ready, or the name is a store snapshot's)."""
    generation = int(replay["metadata"].get("generation", 1))
    if snap is None:
        waited = [c for c in (replay.get("status") or {}).get("conditions") or []
                  if c.get("reason") == SNAPSHOT_NOT_READY and c.get("observedGeneration") == generation]
        if waited:  # it waited for a Snapshot that is gone since: the name no longer means a cut of ours
            name = (replay.get("spec") or {}).get("snapshot")
            return _status(FAILED, generation, SNAPSHOT_NOT_READY,
                           f"Snapshot {replay['metadata']['namespace']}/{name} was deleted before it was cut",
                           finished=True)
        return None
    status = snap.get("status") or {}
    ref = f"{snap['metadata']['namespace']}/{snap['metadata']['name']}"
    current = status.get("observedGeneration") == snap["metadata"].get("generation")
    if current and status.get("phase") == READY_PHASE:
        return None
    if current and status.get("phase") == FAILED:
        why = conditions.ready_condition(status).get("message", "")
        return _status(FAILED, generation, SNAPSHOT_NOT_READY, f"Snapshot {ref} failed: {why}", finished=True)
    return _status(PENDING, generation, SNAPSHOT_NOT_READY, f"waiting for Snapshot {ref} to be cut")


@dataclass
class ReplayJobs:
    """One pass: start Jobs for replays and snapshots that need one, fail those whose Job failed, delete
    orphans. A replay naming a Snapshot of its namespace waits for it to be Ready."""

    kube: Kube
    config: JobConfig = field(default_factory=JobConfig)
    dry_run: bool = False

    def sync(self) -> list[str]:
        """Bring Jobs and statuses up to the cluster's Snapshots and TrafficReplays; return what was done."""
        done: list[str] = []
        try:
            snapshots = self.kube.list(API_VERSION, "Snapshot")
        except KubeError as exc:  # e.g. the controller upgraded before its CRD: replays still run
            log.error("snapshots not listed", extra=logs.fields(error=str(exc)))
            snapshots = []
        by_ref = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in snapshots}
        jobs = {j["metadata"]["name"]: j for j in self.kube.list(
            "batch/v1", "Job", self.config.namespace, label_selector=f"{MANAGED_BY}={JOB_MANAGER}")}
        wanted = set()
        for obj, name in [(s, snapshot_job_name(s)) for s in snapshots] + [
                (r, job_name(r)) for r in self.kube.list(API_VERSION, "TrafficReplay")]:
            wanted.add(name)
            meta = obj["metadata"]
            try:
                if obj["kind"] == "Snapshot":
                    done += self._snapshot(obj, jobs.get(name))
                else:
                    snap = by_ref.get((meta["namespace"], str((obj.get("spec") or {}).get("snapshot"))))
                    done += self._replay(obj, jobs.get(name), snap)
            except NotLeader:  # the lease is gone: nothing more of this pass (not an error per replay)
                raise
            except KubeError as exc:
                log.error(f"{obj['kind']} not run", extra=logs.fields(
                    resource=f"{meta['namespace']}/{meta['name']}", error=str(exc)))
        for name, job in jobs.items():
            if name not in wanted:
                if not self.dry_run:
                    self.kube.delete("batch/v1", "Job", name, self.config.namespace)
                notes = job["metadata"].get("annotations", {})
                done.append(f"deleted Job {name} of {notes.get(REPLAY) or notes.get(SNAPSHOT) or '?'}")
        for line in done:
            log.info(line)
        return done

    def _write(self, obj: Mapping[str, Any], status: dict[str, Any]) -> list[str]:
        meta = obj["metadata"]
        self.kube.apply_status({"apiVersion": API_VERSION, "kind": obj["kind"],
                                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                                "status": status})
        if status["phase"] == FAILED:
            return [f"{obj['kind']} {meta['namespace']}/{meta['name']} failed: {status['conditions'][0]['message']}"]
        return []

    def _snapshot(self, snap: Mapping[str, Any], job: Mapping[str, Any] | None) -> list[str]:
        name = snapshot_job_name(snap)
        status = next_status(snap, job, name=name, terminal=(READY_PHASE, FAILED))
        if status is None or self.dry_run:
            return []
        out = self._write(snap, status)  # Pending first: the Job's pod may write Ready before this pass ends
        if job is None:
            self.kube.apply(render_snapshot(snap, self.config))
            out.append(f"created Job {name} for Snapshot {snap['metadata']['namespace']}/{snap['metadata']['name']}")
        return out

    def _replay(self, replay: Mapping[str, Any], job: Mapping[str, Any] | None,
                snap: Mapping[str, Any] | None) -> list[str]:
        meta = replay["metadata"]
        ref = f"{meta['namespace']}/{meta['name']}"
        status = next_status(replay, job)
        if status is None or self.dry_run:
            return []
        out = []
        if job is None:
            blocked = snapshot_block(replay, snap)
            if blocked is not None:
                had = replay.get("status") or {}
                said = [c.get("message") for c in had.get("conditions") or []]
                same = had.get("phase") == blocked["phase"] and said == [c["message"] for c in blocked["conditions"]]
                return [] if same else self._write(replay, blocked)
            out += self._write(replay, status)  # Pending first: the Job's pod may write Running before this ends
            created = self.kube.apply(render(replay, self.config))
            out.append(f"created Job {job_name(replay)} for TrafficReplay {ref}")
            if mocks_only(replay):
                self.kube.apply(render_service(replay, self.config, created["metadata"]["uid"]))
                out.append(f"created Service {job_name(replay)} for the mocks of TrafficReplay {ref}")
            return out
        return out + self._write(replay, status)
