"""The reconcile loop: git revision → desired state → converged cluster.

One ``Reconciler.reconcile()`` runs Flux-style ordered steps — fetch, build
(parse and validate the whole revision), apply, prune, converge workloads —
and always writes status at the end, even on failure. A rejected revision
changes nothing in the cluster: the last good revision stays applied and the
reason (file:line) goes to status, an Event and the logs. A reconcile with
nothing to change makes no write call.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from controller import logs
from controller.admission import defaults, rules
from controller.admission.lookup import ClusterLookup
from controller.api import (
    API_VERSION,
    APPLIED_HASH,
    CONFIG_HASH,
    CONFLICT,
    FIELD_MANAGER,
    INJECTED,
    KINDS,
    MANAGED_BY,
    PRUNE,
    READY,
    RECONCILE_FAILED,
    RECOVERED,
    RESTARTED_AT,
    REVISION,
    REVISION_APPLIED,
    REVISION_REJECTED,
    ROLLED_FOR,
    SELECTED,
    SOURCE,
    SYSTEM_NAMESPACE,
    WORKLOAD_API,
    WORKLOAD_KINDS,
    source_manager,
)
from controller.gitops import converge, desired, forwardersecrets
from controller.gitops.leader import NotLeader
from controller.gitops.source import GitError, GitSource, Revision
from controller.kube import Kube, KubeError
from controller.policy import selector_matches

log = logs.get("reconcile")



@dataclass(frozen=True)
class Options:
    name: str = "default"  # this source's name: labels its objects, names its status ConfigMap
    namespace: str = "default"  # for objects that name none
    status_namespace: str = SYSTEM_NAMESPACE
    forwarder_namespace: str = ""  # where the forwarder and its token are (every source must name the same);
    # empty: the status namespace
    self_heal: bool = False
    prune: bool = False
    dry_run: bool = False
    allowed_kinds: frozenset[str] = desired.DEFAULT_ALLOWED_KINDS
    allow_empty: bool = False  # with prune: may a revision with no objects delete all this source applied?
    service_account: tuple[str, str] | None = None  # (namespace, name) to impersonate when applying and pruning
    limits: rules.Limits = field(default_factory=rules.Limits)


IMMUTABLE_KINDS = frozenset({"Snapshot"})  # their CRD refuses spec updates (self == oldSelf)


@dataclass
class Outcome:
    revision: str = ""
    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # immutable objects whose spec changed: deleted, recreated
    drifted: list[str] = field(default_factory=list)
    annotated: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # objects of the revision another source applied: left
    warnings: list[str] = field(default_factory=list)  # what this pass could not do and did not fail for
    error: str = ""
    stalled: bool = False
    transient: bool = False  # the error may pass (no answer, 429, 5xx, a git fetch): retry with backoff
    retry_after: float | None = None  # the API server's Retry-After

    def retry_for(self, exc: KubeError) -> None:
        """Fold an API error of a later step into when to retry (transient if either is; the longer wait)."""
        self.transient = self.transient or exc.transient
        self.retry_after = max(self.retry_after or 0.0, exc.retry_after or 0.0) or None


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.duration = Histogram("replayops_reconcile_duration_seconds", "Reconcile duration", registry=r)
        self.revisions = Counter("replayops_revisions", "Revisions by outcome", ["outcome"], registry=r)
        self.applied = Counter("replayops_objects_applied", "Objects applied", registry=r)
        self.pruned = Counter("replayops_objects_pruned", "Objects pruned", registry=r)
        self.drift = Counter("replayops_drift_corrections", "Drifted objects re-applied", registry=r)
        self.retries = Counter("replayops_reconcile_retries", "Passes retried after a transient failure",
                               registry=r)


def subset(want: Any, have: Any) -> bool:
    """Whether every field of ``want`` is in ``have`` with the same value (lists item by item)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(subset, want, have))
    return bool(want == have)


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Reconciler:
    """One source's steps; the cluster-wide ones (converge workloads from every policy, policy status, the
    forwarder token's copies) only while ``converging()`` — one converger for all sources — and on the
    ``cluster`` client, fenced by the converger's lease."""

    def __init__(self, kube: Kube, source: GitSource, options: Options, metrics: Metrics | None = None, *,
                 cluster: Kube | None = None, converging: Callable[[], bool] | None = None) -> None:
        self.kube = kube
        self.cluster = cluster or kube
        self.converging = converging or (lambda: True)
        self.source = source
        self.options = options
        # applies and prunes as the source's ServiceAccount (as Flux's serviceAccountName): a team's
        # repository can do no more than that team may; converging workloads and status stay the controller's
        sa = options.service_account
        self.applier = kube.impersonating(f"system:serviceaccount:{sa[0]}:{sa[1]}") if sa else kube
        self.metrics = metrics or Metrics()
        self.lookup = ClusterLookup(kube)
        self.last_applied: Revision | None = None
        self._last_error = ""
        self._built: tuple[str, desired.Desired] | None = None
        self._others: dict[tuple[str, str, str, str], str] = {}  # objects of other sources, this pass
        self._stamped: tuple[str, dict[tuple[str, str, str, str], dict[str, Any]]] = ("", {})

    # -- the steps ----------------------------------------------------------------------------

    def reconcile(self, *, fetch: bool = True) -> Outcome:
        """One pass; never raises for bad git content or API errors (they land in status). The cluster-wide
        steps run whatever this source's revision did: one broken repository never stops the converger."""
        started = time.perf_counter()
        out = Outcome()
        state: desired.Desired | None = None
        try:
            state = self._source(fetch, out)
        except NotLeader as exc:  # the lease was lost mid-pass: stop quietly, the new leader takes over
            log.info("pass stopped: leadership lost", extra=logs.fields(error=str(exc)))
            self.metrics.duration.observe(time.perf_counter() - started)
            return out
        except desired.InvalidRevision as exc:
            out.error, out.stalled = f"revision {out.revision} rejected:\n{exc}", True
            self.metrics.revisions.labels("rejected").inc()
        except GitError as exc:
            out.error, out.transient = str(exc), exc.transient
            self.metrics.revisions.labels("failed").inc()
        except KubeError as exc:
            out.error, out.transient, out.retry_after = str(exc), exc.transient, exc.retry_after
            self.metrics.revisions.labels("failed").inc()
        else:
            self.metrics.revisions.labels("applied").inc()
        if self.converging():
            self._cluster_wide(state, out)
        self.metrics.duration.observe(time.perf_counter() - started)
        self._report(out)
        return out

    def _source(self, fetch: bool, out: Outcome) -> desired.Desired:
        """This source's steps: fetch, build, apply, prune."""
        revision = self.source.fetch() if fetch else self.source.resolve()
        out.revision = str(revision)
        live = self._managed()
        state = self._desired(revision, live)
        if self.options.prune and not state.items and live and not self.options.allow_empty:
            raise desired.InvalidRevision([desired.Problem(
                self.source.path or ".", 0, f"no objects: applying it would prune all {len(live)} objects "
                f"source {self.options.name} applied (an empty or wrong --path?); --allow-empty allows it")])
        self._apply(state, revision, live, out)
        if self.options.prune:
            self._prune(state, live, out)
        if not self.options.dry_run:
            self.last_applied = revision
        return state

    def _cluster_wide(self, state: desired.Desired | None, out: Outcome) -> None:
        """The converger's steps; a failure is this pass's (retried), never a reason to skip status."""
        try:
            self._converge(state, out)
        except NotLeader as exc:  # the converger's lease: this source's pass still reports
            log.info("converge stopped: leadership lost", extra=logs.fields(error=str(exc)))
        except KubeError as exc:
            log.error("converge failed", extra=logs.fields(error=str(exc)))
            if out.error:
                out.warnings.append(f"converge failed: {exc}")
            else:
                out.error = f"converge failed: {exc}"
            out.retry_for(exc)

    def _desired(self, revision: Revision, live: Mapping[tuple[str, str, str, str], Mapping[str, Any]]
                 ) -> desired.Desired:
        """The validated desired state of ``revision`` beside the ``live`` objects it updates (built once per
        revision; passes over an unchanged revision only compare it with the cluster)."""
        if self._built and self._built[0] == revision.sha:
            return self._built[1]
        state = desired.build(self.source.files(revision), lookup=rules.MemoLookup(self.lookup),
                              limits=self.options.limits, namespace=self.options.namespace,
                              allowed_kinds=self.options.allowed_kinds, cluster_scoped=self._cluster_scoped,
                              live=live)
        if state.warnings:
            log.warning("revision has warnings", extra=logs.fields(
                revision=str(revision), count=len(state.warnings), first=[str(w) for w in state.warnings[:5]]))
        self._built = (revision.sha, state)
        return state

    @property
    def _forwarder_namespace(self) -> str:
        return self.options.forwarder_namespace or self.options.status_namespace

    def _cluster_scoped(self, api_version: str, kind: str) -> bool:
        """As the cluster's discovery says (a kind it does not serve: as far as known offline)."""
        try:
            return not self.kube.resource(api_version, kind).namespaced
        except KubeError as exc:
            if exc.status != 404:  # no answer: the revision is not built on a guess (it is retried)
                raise
            return desired.known_scope(api_version, kind)

    def _managed(self) -> dict[tuple[str, str, str, str], dict[str, Any]]:
        """Every object this source owns in the cluster, by (apiVersion, kind, namespace, name); what other
        sources own goes to ``self._others`` (key → source): one list per kind, never a read per object."""
        out, self._others = {}, {}
        ours = {f"{API_VERSION}/{kind}" for kind in KINDS}
        for kind_ref in sorted(self.options.allowed_kinds | ours):
            api, _, kind = kind_ref.rpartition("/")
            for obj in self.kube.list(api, kind, label_selector=f"{MANAGED_BY}=replayops"):
                meta = obj["metadata"]
                key, owner = (api, kind, meta.get("namespace") or "", meta["name"]), meta["labels"].get(SOURCE)
                if owner == self.options.name:
                    out[key] = obj
                elif owner:
                    self._others[key] = owner
        return out

    def _apply(self, state: desired.Desired, revision: Revision, live: dict[Any, dict[str, Any]],
               out: Outcome) -> None:
        manager = source_manager(self.options.name)
        if self._stamped[0] != revision.sha:  # stamped once per revision (a pass over it only compares)
            self._stamped = (revision.sha, {i.key: desired.stamp(i.obj, self.options.name, revision.sha)
                                            for i in state.items})
        for item in state.items:
            want = self._stamped[1][item.key]
            have = live.get(item.key)
            if have is None and (other := self._others.get(item.key)):
                out.conflicts.append(f"{item} ({item.file}:{item.line}): applied by source {other}; left as it is")
                continue
            stamped_with = (have or {}).get("metadata", {}).get("annotations") or {}
            digest = want["metadata"]["annotations"][APPLIED_HASH]
            # git says what it said when the object was applied (an object an earlier version applied has no
            # hash: it is unchanged when it carries this revision, as then): it keeps that revision
            unchanged = have is not None and (stamped_with.get(APPLIED_HASH) == digest or (
                APPLIED_HASH not in stamped_with and stamped_with.get(REVISION) == revision.sha))
            if unchanged:
                notes = {**want["metadata"]["annotations"], REVISION: stamped_with.get(REVISION, revision.sha)}
                if APPLIED_HASH not in stamped_with:  # in sync without it: no write only to add it
                    del notes[APPLIED_HASH]
                want = {**want, "metadata": {**want["metadata"], "annotations": notes}}
            if have is not None and unchanged and subset(want, have):
                if self._legacy(have) and not self.options.dry_run:  # in sync: only the manager moves
                    self.applier.apply(want, field_manager=manager)
                    self._release_legacy(have)
                continue
            if unchanged:  # and the cluster differs: drift
                out.drifted.append(str(item))
                if not self.options.self_heal:
                    continue
                self.metrics.drift.inc()
            try:
                if have is not None and item.obj["kind"] in IMMUTABLE_KINDS and have.get("spec") != want.get("spec"):
                    # an immutable spec changed in git: the object is replaced (a new cut for a Snapshot)
                    out.replaced.append(str(item))
                    if self.options.dry_run:
                        continue
                    self.applier.delete(item.obj["apiVersion"], item.obj["kind"], have["metadata"]["name"],
                                     have["metadata"].get("namespace"))
                self.applier.apply(want, field_manager=manager, dry_run=self.options.dry_run)
                if have is not None and self._legacy(have) and not self.options.dry_run:
                    self._release_legacy(have)
            except KubeError as exc:
                raise KubeError(f"{item.file}:{item.line}: {item}: {exc}", status=exc.status, reason=exc.reason,
                                transient=exc.transient, retry_after=exc.retry_after) from exc
            out.applied.append(str(item))
            self.metrics.applied.inc()

    def _legacy(self, have: Mapping[str, Any]) -> bool:
        """Whether an earlier version applied ``have`` from git as ``replayops-controller`` and the source's
        own manager has not applied it yet."""
        applied = {m.get("manager") for m in (have.get("metadata") or {}).get("managedFields") or []
                   if m.get("operation") == "Apply" and not m.get("subresource")}
        return FIELD_MANAGER in applied and source_manager(self.options.name) not in applied

    def _release_legacy(self, have: Mapping[str, Any]) -> None:
        """After the source's manager applied it: the legacy manager lets go (an apply of nothing), so a
        field later removed from git goes from the object. Never on a workload, whose capture annotations
        stay that manager's (its git fields are co-owned by the source's manager now, so they stay)."""
        if have["kind"] in WORKLOAD_KINDS:
            return
        meta = have["metadata"]
        self.applier.apply({"apiVersion": have["apiVersion"], "kind": have["kind"],
                         "metadata": {"name": meta["name"], **({"namespace": meta["namespace"]}
                                                                if meta.get("namespace") else {})}},
                        field_manager=FIELD_MANAGER)

    def _prune(self, state: desired.Desired, live: dict[Any, dict[str, Any]], out: Outcome) -> None:
        wanted = {i.key for i in state.items}
        for key, obj in live.items():
            if key in wanted or (obj["metadata"].get("annotations") or {}).get(PRUNE) == "disabled":
                continue
            api, kind, ns, name = key
            if not self.options.dry_run:
                try:
                    self.applier.delete(api, kind, name, ns or None)
                except KubeError as exc:
                    if exc.status != 403 or self.applier is self.kube:
                        raise
                    # the source's ServiceAccount may not delete it: it stays, reported, the rest goes on
                    out.warnings.append(f"{kind} {ns}/{name} not pruned: {exc}")
                    continue
            out.pruned.append(f"{kind} {ns}/{name}" if ns else f"{kind} {name}")
            self.metrics.pruned.inc()

    def _policies(self, state: desired.Desired | None) -> list[dict[str, Any]]:
        """Every CapturePolicy in the cluster — applied from git by any source, by Argo CD or by kubectl —
        defaulted; in a dry run, this revision's as they would be applied."""
        found = {(p["metadata"]["namespace"], p["metadata"]["name"]): p
                 for p in self.cluster.list(API_VERSION, "CapturePolicy")}
        if self.options.dry_run and state is not None:
            found.update({(i.obj["metadata"]["namespace"], i.obj["metadata"]["name"]): i.obj
                          for i in state.of_kind("CapturePolicy")})
        return [defaults.default_policy(p) for _, p in sorted(found.items())]

    def _converge(self, state: desired.Desired | None, out: Outcome) -> None:
        """Capture annotations on selected workloads' templates, from every CapturePolicy in the cluster;
        policy status lists them."""
        try:
            policies = self._policies(state)
        except KubeError:
            if not self.options.dry_run:  # the forwarder's pod needs its token and key all the same
                forwardersecrets.share(self.cluster, self._forwarder_namespace, ())
            raise
        blocked: dict[str, str] = {}  # namespaces without the token's copy: their workloads are left as they are
        if not self.options.dry_run:  # before any pod rolls: a sidecar reads the token once, when it starts
            forwardersecrets.share(self.cluster, self._forwarder_namespace,
                                   (p["metadata"]["namespace"] for p in policies), failed=blocked)
        workloads = [dict(w, kind=kind) for kind in WORKLOAD_KINDS
                     for w in self.cluster.list(WORKLOAD_API, kind)]
        wanted = converge.plan(policies, workloads)
        for wl in workloads:
            wkey = converge.key(wl)
            if wkey in wanted.conflicts or wkey[0] in blocked:
                continue
            have = converge.ours(wl, FIELD_MANAGER)
            want = wanted.wanted.get(wkey, {})
            if have == want:
                continue
            ns, kind, name = wkey
            body = {"apiVersion": WORKLOAD_API, "kind": kind, "metadata": {"name": name, "namespace": ns},
                    "spec": {"template": {"metadata": {"annotations": want}}}}
            self.cluster.apply(body, dry_run=self.options.dry_run)
            out.annotated.append(f"{kind} {ns}/{name}")
        pods: dict[str, list[dict[str, Any]]] = {}
        for ns in sorted({w[0] for w in wanted.wanted}):
            pods[ns] = self.cluster.list("v1", "Pod", ns)
        stale = {w: self._stale_pods(wl, wanted.wanted[w], pods[w[0]]) for wl in workloads
                 if (w := converge.key(wl)) in wanted.wanted}
        if not self.options.dry_run:
            for pol in policies:
                self._policy_status(pol, wanted, stale)
        for ns, error in sorted(blocked.items()):  # the rest converged; these are reported, retried every pass
            out.warnings.append(f"forwarder token not shared into namespace {ns} (its workloads left as they "
                                f"are): {error}")

    def _stale_pods(self, workload: Mapping[str, Any], want: Mapping[str, str],
                    in_namespace: list[dict[str, Any]]) -> int:
        """Running pods of ``workload`` without the current sidecar; with self-heal, roll once per config hash
        the pods that should have it and do not (the webhook was down when they were made)."""
        selector = (workload.get("spec") or {}).get("selector") or {}
        if not selector:
            return 0
        ns, kind, name = converge.key(workload)
        pods = [p for p in in_namespace if selector_matches(selector, p["metadata"].get("labels") or {})]
        current = [p for p in pods if (p["metadata"].get("annotations") or {}).get(CONFIG_HASH) == want[CONFIG_HASH]]
        missing = [p for p in current if INJECTED not in (p["metadata"].get("annotations") or {})]
        stale = len(pods) - len(current) + len(missing)
        template = converge.template_annotations(workload)
        if missing and self.options.self_heal and template.get(ROLLED_FOR) != want[CONFIG_HASH]:
            body = {"apiVersion": WORKLOAD_API, "kind": kind, "metadata": {"name": name, "namespace": ns},
                    "spec": {"template": {"metadata": {"annotations": {**want, ROLLED_FOR: want[CONFIG_HASH],
                                                                        RESTARTED_AT: _now()}}}}}
            self.cluster.apply(body, dry_run=self.options.dry_run)
            log.info("rolled pods missing the sidecar", extra=logs.fields(workload=f"{kind} {ns}/{name}",
                                                                           pods=len(missing)))
        return stale

    def _policy_status(self, pol: Mapping[str, Any], wanted: converge.Plan,
                       stale: Mapping[converge.WorkloadKey, int]) -> None:
        meta = pol["metadata"]
        selected = wanted.selected.get((meta["namespace"], meta["name"]), [])
        entries = []
        for ns, kind, name in selected:
            entry: dict[str, Any] = {"kind": kind, "name": name}
            if (ns, kind, name) in wanted.conflicts:
                others = [p for p in wanted.conflicts[(ns, kind, name)] if p != meta["name"]]
                entry["conflict"] = f"also selected by {', '.join(others)}"
            else:
                entry["configHash"] = wanted.wanted[(ns, kind, name)][CONFIG_HASH]
                entry["stalePods"] = stale.get((ns, kind, name), 0)
            entries.append(entry)
        conflicted = [e for e in entries if "conflict" in e]
        ready = not conflicted
        message = (f"{len(entries)} workloads selected" if ready else
                   "; ".join(f"{e['kind']} {e['name']}: {e['conflict']}" for e in conflicted))
        live = self.cluster.get(API_VERSION, "CapturePolicy", meta["name"], meta["namespace"]) or {}
        old = live.get("status") or {}
        condition = {"type": READY, "status": "True" if ready else "False",
                     "reason": SELECTED if ready else CONFLICT, "message": message,
                     "observedGeneration": live.get("metadata", {}).get("generation", 0)}
        previous: dict[str, Any] = next((c for c in old.get("conditions", []) if c.get("type") == READY), {})
        same = all(previous.get(k) == v for k, v in condition.items())
        condition["lastTransitionTime"] = previous.get("lastTransitionTime") if same else _now()
        status = {"observedGeneration": condition["observedGeneration"], "selectedCount": len(entries),
                  "selectedWorkloads": entries, "conditions": [condition]}
        if live and not subset(status, old):
            try:
                self.cluster.apply_status({"apiVersion": API_VERSION, "kind": "CapturePolicy", "metadata": meta,
                                           "status": status})
            except KubeError as exc:
                if exc.status != 404:  # deleted meanwhile (its namespace going): nothing to report on
                    raise

    # -- status ---------------------------------------------------------------------------------

    def status_ref(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": f"replayops-status-{self.options.name}",
                             "namespace": self.options.status_namespace}}

    def _report(self, out: Outcome) -> None:
        fields = dict(revision=out.revision, applied=len(out.applied), pruned=len(out.pruned),
                      replaced=len(out.replaced), drifted=out.drifted, annotated=len(out.annotated))
        if out.error:
            log.error("reconcile failed", extra=logs.fields(error=out.error, **fields))
        elif out.applied or out.pruned or out.drifted or out.annotated:
            log.info("reconciled", extra=logs.fields(**fields))
        if out.conflicts:
            log.warning("objects of another source left alone", extra=logs.fields(conflicts=out.conflicts))
        if out.warnings:
            log.warning("pass incomplete", extra=logs.fields(warnings=out.warnings))
        if self.options.dry_run:
            return
        ref = self.status_ref()
        try:
            live = self.kube.get("v1", "ConfigMap", ref["metadata"]["name"], ref["metadata"]["namespace"])
            # before this process applied one, the last applied revision is the one status says (a restart)
            applied = str(self.last_applied) if self.last_applied else ((live or {}).get("data") or {}).get(
                "lastAppliedRevision", "")
            data = {
                "ready": str(not out.error), "reconciling": "False", "stalled": str(out.stalled),
                "lastAttemptedRevision": out.revision,
                "lastAppliedRevision": applied,
                "lastError": out.error,
                "drift": "\n".join(out.drifted),
                "conflicts": "\n".join(out.conflicts),
                "warnings": "\n".join(out.warnings),
            }
            if live is None or live.get("data") != data:
                stored = self.kube.apply({**ref, "metadata": {**ref["metadata"], "labels": {
                    MANAGED_BY: "replayops-status"}}, "data": data})
                ref["metadata"]["uid"] = stored["metadata"].get("uid")
                self._events(out, ref)
        except KubeError as exc:
            log.error("status not written", extra=logs.fields(error=str(exc)))
        self._last_error = out.error

    def _events(self, out: Outcome, ref: dict[str, Any]) -> None:
        """Events only on change or recovery."""
        if out.error and out.error != self._last_error:
            self.kube.event(ref, reason=REVISION_REJECTED if out.stalled else RECONCILE_FAILED,
                            message=out.error, type_="Warning")
        elif not out.error and self._last_error:
            self.kube.event(ref, reason=RECOVERED, message=f"applied {out.revision}")
        elif not out.error and (out.applied or out.pruned):
            self.kube.event(ref, reason=REVISION_APPLIED, message=(
                f"{out.revision}: {len(out.applied)} applied, {len(out.pruned)} pruned"))
