"""The inspector: a web view of the cluster as replayops sees it, whose actions become git commits.

Pages: workloads (capture state, injected pods, TLS out, sidecar readiness), replays (phase,
summary, report), policies, services, secrets (names and keys, never values), events and, with a
store, snapshots. Actions — capture on/off for a workload, start or delete a replay — never touch
the cluster: they commit to the GitOps repository (``GitWriter``), and the controller (or Argo CD)
applies what lands. Forms carry a per-process CSRF token.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, flash, redirect, render_template, request, send_file
from ruamel.yaml import YAML

from controller import conditions
from controller.admission import rules
from controller.api import API_VERSION, MANAGED_BY, SYSTEM_NAMESPACE, WORKLOAD_KINDS
from controller.gitops import desired
from controller.inspector import view
from controller.inspector.gitwrite import ChangeError, GitWriter
from controller.kube import Kube, KubeError
from controller.store import NAME

NAV = (("/gitops", "GitOps"), ("/workloads", "Workloads"), ("/replays", "Replays"), ("/policies", "Policies"),
       ("/services", "Services"), ("/secrets", "Secrets"), ("/events", "Events"), ("/snapshots", "Snapshots"))


@dataclass
class Deps:
    kube: Kube
    git: GitWriter
    cluster: str = "local"
    snapshots: Callable[[], list[Any]] = list  # store manifests, when the inspector is given a store
    reports: Path | None = None  # where replay reports are (<id>/report.html)
    status_namespace: str = SYSTEM_NAMESPACE  # where the controller writes its sources' status ConfigMaps


def _yaml(obj: dict[str, Any]) -> str:
    from io import StringIO

    out = StringIO()
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.dump(obj, out)
    return out.getvalue()


def _defined_in(git: GitWriter, kind: str, namespace: str, name: str) -> tuple[str, int] | None:
    """The file under the source path that defines the object, and how many objects that file holds."""
    offline = rules.StaticLookup.offline()
    try:
        items = desired.build(git.read(), lookup=offline).items
    except desired.InvalidRevision as exc:
        raise ChangeError(f"the repository is invalid as it is; fix it first:\n{exc}") from exc
    for item in items:
        meta = item.obj["metadata"]
        if (item.obj["kind"], meta.get("namespace"), meta["name"]) == (kind, namespace, name):
            return item.file, sum(1 for i in items if i.file == item.file)
    return None


def create_app(deps: Deps) -> Flask:
    app = Flask(__name__)  # templates/ beside this module
    app.secret_key = secrets.token_bytes(32)
    csrf = secrets.token_urlsafe(32)

    def page(template: str, title: str, **context: Any) -> str:
        return render_template(template, title=title, nav=NAV, cluster=deps.cluster, csrf=csrf,
                               namespace=request.args.get("namespace", ""), **context)

    def listed(api: str, kind: str) -> list[dict[str, Any]]:
        return deps.kube.list(api, kind, request.args.get("namespace") or None)

    def form(name: str) -> str:
        value = (request.form.get(name) or "").strip()
        if not value:
            abort(400, f"form field {name!r} is required")
        return value

    @app.before_request
    def check_csrf() -> None:
        if request.method == "POST" and not secrets.compare_digest(request.form.get("csrf", ""), csrf):
            abort(403, "missing or wrong CSRF token: reload the page")

    @app.errorhandler(KubeError)
    def kube_error(exc: KubeError) -> tuple[str, int]:
        return f"the Kubernetes API answered: {exc}", 502

    @app.get("/")
    def index() -> Response:
        return redirect("/workloads")  # type: ignore[return-value]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/gitops")
    def gitops() -> str:
        """Each git source's status ConfigMap: what the controller made of the latest commits."""
        rows = []
        for cm in deps.kube.list("v1", "ConfigMap", deps.status_namespace,
                                 label_selector=f"{MANAGED_BY}=replayops-status"):
            data = cm.get("data") or {}
            rows.append((cm["metadata"]["namespace"], cm["metadata"]["name"].removeprefix("replayops-status-"),
                         data.get("ready", ""), data.get("lastAppliedRevision", ""),
                         data.get("lastAttemptedRevision", ""), data.get("lastError", "")))
        return page("table.html", "GitOps sources", table_id="gitops", rows=sorted(rows),
                    headers=("namespace", "source", "ready", "last applied", "last attempted", "last error"))

    @app.get("/workloads")
    def workloads() -> str:
        pods: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for pod in listed("v1", "Pod"):
            pods[pod["metadata"]["namespace"]].append(pod)
        policies: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for policy in listed(API_VERSION, "CapturePolicy"):
            policies[policy["metadata"]["namespace"]][policy["metadata"]["name"]] = policy
        rows = []
        for kind in WORKLOAD_KINDS:
            for w in listed("apps/v1", kind):
                ns = w["metadata"]["namespace"]
                rows.append(view.workload_row(kind, w, pods[ns], policies[ns]))
        rows.sort(key=lambda r: (r.namespace, r.kind, r.name))
        return page("workloads.html", "Workloads", rows=rows)

    @app.get("/replays")
    def replays() -> str:
        rows = sorted((view.replay_row(r) for r in listed(API_VERSION, "TrafficReplay")),
                      key=lambda r: (r.namespace, r.name))
        return page("replays.html", "Replays", rows=rows, snapshots=[m.name for m in deps.snapshots()],
                    reports=deps.reports is not None)

    @app.get("/reports/<report_id>")
    def replay_report(report_id: str) -> Response:
        """A replay's report.html from the reports directory (ids are store names: no path can escape it)."""
        if deps.reports is None or not NAME.fullmatch(report_id):
            abort(404)
        found = deps.reports / report_id / "report.html"
        if not found.is_file():
            abort(404, f"no report {report_id} in {deps.reports}")
        return send_file(found, mimetype="text/html")

    @app.get("/policies")
    def policies() -> str:
        rows = []
        for p in listed(API_VERSION, "CapturePolicy"):
            status = p.get("status") or {}
            ready = conditions.ready_condition(status)
            workloads = ", ".join(f"{w['kind']}/{w['name']}" for w in status.get("selectedWorkloads") or [])
            rows.append((p["metadata"]["namespace"], p["metadata"]["name"], workloads or "none",
                         ready.get("status", "Unknown"), ready.get("message", "")))
        return page("table.html", "Capture policies", table_id="policies", rows=sorted(rows),
                    headers=("namespace", "policy", "workloads", "ready", "message"))

    @app.get("/services")
    def services() -> str:
        rows = sorted((s["metadata"]["namespace"], s["metadata"]["name"], s["spec"].get("type", "ClusterIP"),
                       ", ".join(f"{p['port']}→{p.get('targetPort', p['port'])}" for p in s["spec"].get("ports") or []),
                       ", ".join(f"{k}={v}" for k, v in (s["spec"].get("selector") or {}).items()))
                      for s in listed("v1", "Service"))
        return page("table.html", "Services", table_id="services", rows=rows,
                    headers=("namespace", "service", "type", "ports", "selector"))

    @app.get("/secrets")
    def secret_list() -> str:
        rows = sorted((r.namespace, r.name, r.type, ", ".join(r.keys))
                      for r in map(view.secret_row, listed("v1", "Secret")))
        return page("table.html", "Secrets (names and keys only)", table_id="secrets", rows=rows,
                    headers=("namespace", "secret", "type", "keys"))

    @app.get("/events")
    def events() -> str:
        rows = sorted((view.event_row(e) for e in listed("v1", "Event")), key=lambda e: e.time, reverse=True)
        return page("table.html", "Events", table_id="events", headers=("time", "type", "reason", "object", "message"),
                    rows=[(e.time, e.type, e.reason, e.object, e.message) for e in rows[:200]])

    @app.get("/snapshots")
    def snapshots() -> str:
        """Snapshots declared in the cluster (with their cut's status), then the store's other snapshots."""
        rows, declared = [], set()
        for snap in listed(API_VERSION, "Snapshot"):
            meta, spec, status = snap["metadata"], snap.get("spec") or {}, snap.get("status") or {}
            store_name = status.get("storeName") or f"{meta['namespace']}.{meta['name']}"
            declared.add(store_name)
            window = status.get("window") or {}
            of = f"CapturePolicy {spec['policy']}" if spec.get("policy") else f"stream {spec.get('stream')}"
            rows.append((f"Snapshot {meta['namespace']}/{meta['name']}", of, status.get("phase", "Pending"),
                         status.get("pairs", ""), f"{window.get('from', '')} .. {window.get('to', '')}"
                         if window else (spec.get("window") or {}).get("last", ""),
                         conditions.ready_condition(status).get("message", "")))
        rows.sort()
        rows += [(m.name, m.policy or m.service or "-", "in the store", m.count, m.source, "")
                 for m in deps.snapshots() if m.name not in declared]
        return page("table.html", "Snapshots", table_id="snapshots", rows=rows,
                    headers=("snapshot", "of", "phase", "pairs", "window", "message"))

    def commit(message: str, back: str, **change: Any) -> Response:
        try:
            done = deps.git.change(message, **change)
            flash(f"committed {done.sha[:12]}: {message}", "ok")
        except ChangeError as exc:
            flash(str(exc), "error")
        return redirect(back, 303)  # type: ignore[return-value]

    @app.post("/actions/capture")
    def capture() -> Response:
        ns, kind, name, want = form("namespace"), form("kind"), form("name"), form("capture")
        if kind not in WORKLOAD_KINDS or want not in ("on", "off"):
            abort(400, f"kind must be one of {', '.join(WORKLOAD_KINDS)} and capture on or off")
        workload = deps.kube.get("apps/v1", kind, name, ns)
        if workload is None:
            abort(404, f"{kind} {ns}/{name} does not exist")
        row = view.workload_row(kind, workload, [], {})
        path = f"policies/{ns}/{name}.yaml"
        if want == "on":
            if row.captured_by or row.opted_out:
                flash(f"{kind} {ns}/{name} is " + (f"already captured by {row.captured_by}" if row.captured_by
                                                    else "opted out of capture"), "error")
                return redirect("/workloads", 303)  # type: ignore[return-value]
            policy = {"apiVersion": API_VERSION, "kind": "CapturePolicy",
                      "metadata": {"name": name, "namespace": ns},
                      "spec": {"selector": {"matchLabels": dict(workload["spec"]["selector"]["matchLabels"])}}}
            return commit(f"Capture traffic of {kind} {ns}/{name}", "/workloads", write={path: _yaml(policy)})
        if not row.captured_by:
            flash(f"{kind} {ns}/{name} is not captured (a new policy captures it once the controller has "
                  f"applied it)", "error")
            return redirect("/workloads", 303)  # type: ignore[return-value]
        try:
            where = _defined_in(deps.git, "CapturePolicy", ns, row.captured_by)
        except ChangeError as exc:
            flash(str(exc), "error")
            return redirect("/workloads", 303)  # type: ignore[return-value]
        if where != (path, 1):
            flash(f"{kind} {ns}/{name} is captured by CapturePolicy {ns}/{row.captured_by}"
                  + (f", defined in {where[0]}" if where else ", which is not in this repository")
                  + ", which the inspector did not create for it: change it in a pull request", "error")
            return redirect("/workloads", 303)  # type: ignore[return-value]
        return commit(f"Stop capturing {kind} {ns}/{name}", "/workloads", remove=(path,))

    @app.post("/actions/replays")
    def start_replay() -> Response:
        ns, name = form("namespace"), form("name")
        target: dict[str, Any] = {"kind": "Deployment", "name": form("workload")}
        try:
            if request.form.get("port"):
                target["port"] = int(request.form["port"])
            copies = int(request.form.get("copies") or 1)
        except ValueError:
            abort(400, "port and virtual users must be whole numbers")
        snapshot = form("snapshot")
        replay = {"apiVersion": API_VERSION, "kind": "TrafficReplay", "metadata": {"name": name, "namespace": ns},
                  "spec": {"snapshot": snapshot, "target": {"workloadRef": target}, "load": {"copies": copies}}}
        return commit(f"Replay {snapshot} against Deployment {ns}/{target['name']}", "/replays",
                      write={f"replays/{ns}/{name}.yaml": _yaml(replay)})

    @app.post("/actions/replays/delete")
    def delete_replay() -> Response:
        ns, name = form("namespace"), form("name")
        try:
            where = _defined_in(deps.git, "TrafficReplay", ns, name)
        except ChangeError as exc:
            flash(str(exc), "error")
            return redirect("/replays", 303)  # type: ignore[return-value]
        if where is None or where[1] != 1:
            flash(f"TrafficReplay {ns}/{name} is " + ("not in this repository" if where is None else
                  f"defined in {where[0]} with other objects: change it in a pull request"), "error")
            return redirect("/replays", 303)  # type: ignore[return-value]
        return commit(f"Delete TrafficReplay {ns}/{name}", "/replays", remove=(where[0],))

    return app
