"""The inspector shows the real cluster and turns its buttons into commits to a real git repository,
which the controller then converges: capture on/off end to end, replays started and deleted, secrets
shown without values, bad input refused with the validator's words and nothing committed. The last
test drives the served UI in a real Chromium."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from controller.admission import register
from controller.api import API_VERSION, CAPTURE
from controller.devcluster.cluster import free_port
from controller.gitops.reconcile import Options, Reconciler
from controller.gitops.source import GitSource
from controller.inspector.app import Deps, create_app
from controller.inspector.gitwrite import GitWriter
from tests.conftest import Cluster
from tests.gitrepo import Repo
from tests.helpers import wait_200

ROOT = Path(__file__).resolve().parents[2]
SECRET_VALUE = "hunter2-do-not-show"


@dataclass
class Setup:
    cluster: Cluster
    ns: str
    repo: Repo
    client: FlaskClient
    reconciler: Reconciler
    reports: Path

    def page(self, path: str) -> str:
        resp = self.client.get(f"{path}?namespace={self.ns}")
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return html.unescape(resp.get_data(as_text=True))

    def post(self, path: str, **fields: str) -> str:
        token = re.search(r'name="csrf" value="([^"]+)"', self.page("/workloads"))
        assert token
        resp = self.client.post(path, data={"csrf": token.group(1), **fields}, follow_redirects=True)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return html.unescape(resp.get_data(as_text=True))

    def log(self) -> list[str]:
        return self.repo.git("log", "--format=%an: %s").splitlines()


@pytest.fixture
def setup(cluster: Cluster, namespace: str, tmp_path: Path) -> Setup:
    register.unregister(cluster.kube)  # no webhook from an earlier test refusing our objects
    repo = Repo(tmp_path / "repo")
    repo.git("config", "receive.denyCurrentBranch", "updateInstead")  # the inspector pushes to it
    repo.commit("start", {"README.md": "desired state\n", "team/settings.yaml": (  # a repository with content
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: team-settings, namespace: {namespace}}}\n")})
    labels = {"app": "web"}
    cluster.kube.create({"apiVersion": "apps/v1", "kind": "Deployment",
                         "metadata": {"name": "web", "namespace": namespace},
                         "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                                  "template": {"metadata": {"labels": labels},
                                               "spec": {"containers": [{"name": "app", "image": "shop/web:1"}]}}}})
    cluster.kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": namespace},
                         "stringData": {"password": SECRET_VALUE, "user": "app"}})
    git = GitWriter(repo.url, tmp_path / "work")
    client = create_app(Deps(cluster.kube, git, cluster="test", reports=tmp_path / "reports",
                             status_namespace=namespace)).test_client()
    options = Options(name=namespace, namespace=namespace, status_namespace=namespace, prune=True,
                      self_heal=True)  # as the manifests run it
    reconciler = Reconciler(cluster.kube, GitSource(repo.url, cache=tmp_path / "cache"), options)
    return Setup(cluster, namespace, repo, client, reconciler, tmp_path / "reports")


def annotations(setup: Setup) -> dict[str, str]:
    web = setup.cluster.kube.get("apps/v1", "Deployment", "web", setup.ns) or {}
    return web["spec"]["template"]["metadata"].get("annotations") or {}


def test_capture_on_and_off_are_commits_the_controller_converges(setup: Setup) -> None:
    assert "Capture on" in setup.page("/workloads")
    shown = setup.post("/actions/capture", namespace=setup.ns, kind="Deployment", name="web", capture="on")
    assert f"Capture traffic of Deployment {setup.ns}/web" in shown and "committed" in shown
    assert setup.log()[0] == f"replayops inspector: Capture traffic of Deployment {setup.ns}/web"
    policy = (setup.repo.path / "policies" / setup.ns / "web.yaml").read_text()
    assert "kind: CapturePolicy" in policy and "app: web" in policy
    assert setup.reconciler.reconcile().error == ""
    assert annotations(setup)[CAPTURE] == "web"
    sha = setup.repo.git("rev-parse", "HEAD")
    assert f"main@sha1:{sha}" in setup.page("/gitops"), "the page says the commit was applied"
    assert "Capture off" in setup.page("/workloads")

    setup.post("/actions/capture", namespace=setup.ns, kind="Deployment", name="web", capture="off")
    assert setup.log()[0] == f"replayops inspector: Stop capturing Deployment {setup.ns}/web"
    assert not (setup.repo.path / "policies" / setup.ns / "web.yaml").exists()
    setup.reconciler.reconcile()
    assert CAPTURE not in annotations(setup)


def test_capture_off_refuses_a_policy_it_did_not_create(setup: Setup) -> None:
    setup.repo.commit("team policy", {"team.yaml": f"""apiVersion: replayops.dev/v1alpha1
kind: CapturePolicy
metadata: {{name: team, namespace: {setup.ns}}}
spec: {{selector: {{matchLabels: {{app: web}}}}}}
"""})
    setup.reconciler.reconcile()
    shown = setup.post("/actions/capture", namespace=setup.ns, kind="Deployment", name="web", capture="off")
    assert f"captured by CapturePolicy {setup.ns}/team, defined in team.yaml" in shown
    assert setup.log()[0] == "Test: team policy", "nothing committed"


def test_replays_start_and_delete_as_commits_and_bad_input_commits_nothing(setup: Setup) -> None:
    shown = setup.post("/actions/replays", namespace=setup.ns, name="smoke", snapshot="web-1", workload="web",
                       port="8080", copies="2")
    assert "committed" in shown
    assert setup.log()[0] == f"replayops inspector: Replay web-1 against Deployment {setup.ns}/web"
    setup.reconciler.reconcile()
    assert 'data-replay="' + f'{setup.ns}/smoke"' in setup.page("/replays")

    bad = setup.post("/actions/replays", namespace=setup.ns, name="Bad_Name", snapshot="web-1", workload="web")
    assert "the change would make the repository invalid" in bad and "metadata.name 'Bad_Name'" in bad
    assert len(setup.log()) == 2, "nothing committed"

    setup.post("/actions/replays/delete", namespace=setup.ns, name="smoke")
    assert setup.log()[0] == f"replayops inspector: Delete TrafficReplay {setup.ns}/smoke"
    assert not (setup.repo.path / "replays" / setup.ns / "smoke.yaml").exists()


def test_a_replays_report_is_linked_and_served_and_nothing_outside_the_reports_is(setup: Setup) -> None:
    report_id = "web-1-20261122-063000-123"
    (setup.reports / report_id).mkdir(parents=True)
    (setup.reports / report_id / "report.html").write_text("<h1>Replay web-1-20261122: goals met</h1>")
    (setup.reports.parent / "secret.txt").write_text("not a report")
    setup.cluster.kube.create({"apiVersion": "replayops.dev/v1alpha1", "kind": "TrafficReplay",
                               "metadata": {"name": "done", "namespace": setup.ns},
                               "spec": {"snapshot": "web-1", "target": {"url": "http://web"}}})
    setup.cluster.kube.apply_status({"apiVersion": "replayops.dev/v1alpha1", "kind": "TrafficReplay",
                                     "metadata": {"name": "done", "namespace": setup.ns},
                                     "status": {"phase": "Succeeded", "reportRef": {"id": report_id}}})
    assert f'<a href="/reports/{report_id}">' in setup.page("/replays")
    assert "goals met" in setup.client.get(f"/reports/{report_id}").get_data(as_text=True)
    for bad in ("..%2Fsecret.txt", "nope-1", "%2E%2E", "Web-1"):
        resp = setup.client.get(f"/reports/{bad}")
        assert resp.status_code == 404 and "not a report" not in resp.get_data(as_text=True), bad


def test_secrets_show_names_and_keys_never_values(setup: Setup) -> None:
    shown = setup.page("/secrets")
    assert "db" in shown and "password, user" in shown
    assert SECRET_VALUE not in shown
    import base64
    assert base64.b64encode(SECRET_VALUE.encode()).decode() not in shown


def test_snapshots_declared_in_the_cluster_show_with_their_cut(setup: Setup) -> None:
    setup.cluster.kube.create({"apiVersion": API_VERSION, "kind": "Snapshot",
                               "metadata": {"name": "morning", "namespace": setup.ns},
                               "spec": {"stream": "a.b.c", "window": {"last": "10m"}}})
    assert f"Snapshot {setup.ns}/morning" in setup.page("/snapshots") and "Pending" in setup.page("/snapshots")
    setup.cluster.kube.apply_status({
        "apiVersion": API_VERSION, "kind": "Snapshot", "metadata": {"name": "morning", "namespace": setup.ns},
        "status": {"phase": "Ready", "observedGeneration": 1, "pairs": 42, "storeName": f"{setup.ns}.morning",
                   "window": {"from": "2026-12-01T09:50:00Z", "to": "2026-12-01T10:00:00Z"},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "SnapshotCut", "message": "42 pairs",
                                   "lastTransitionTime": "2026-12-01T10:00:01Z"}]}})
    shown = setup.page("/snapshots")
    assert "stream a.b.c" in shown and "Ready" in shown and "2026-12-01T09:50:00Z .. 2026-12-01T10:00:00Z" in shown


def test_a_post_without_the_csrf_token_is_refused(setup: Setup) -> None:
    resp = setup.client.post("/actions/capture", data={"namespace": setup.ns, "kind": "Deployment", "name": "web",
                                                       "capture": "on"})
    assert resp.status_code == 403 and "CSRF" in resp.get_data(as_text=True)
    assert len(setup.log()) == 1


@pytest.fixture
def served(setup: Setup, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "inspector", "serve", "--port", str(port),
                             "--repo", setup.repo.url, "--workdir", str(tmp_path / "served-work"),
                             "--kubeconfig", str(setup.cluster.kubeconfig)], cwd=ROOT,
                            env={**os.environ, "REPLAYOPS_HOME": str(tmp_path / "home")})
    try:
        wait_200(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_in_chromium_the_capture_button_commits_and_the_page_says_so(setup: Setup, served: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{served}/workloads?namespace={setup.ns}")
            row = page.locator(f'tr[data-workload="{setup.ns}/Deployment/web"]')
            row.get_by_role("button", name="Capture on").click()
            page.wait_for_load_state()
            status: Any = page.get_by_role("status")
            assert f"Capture traffic of Deployment {setup.ns}/web" in status.inner_text()
            page.goto(f"{served}/secrets?namespace={setup.ns}")
            assert SECRET_VALUE not in page.content()
        finally:
            browser.close()
    deadline = time.monotonic() + 10
    while setup.log()[0] != f"replayops inspector: Capture traffic of Deployment {setup.ns}/web":
        assert time.monotonic() < deadline
        time.sleep(0.2)
