"""Webhook replicas share one certificate through a Secret: created once (the loser of a race reads the
winner's), served by every replica, trusted by the apiserver, and rotated without a restart."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509

from controller.admission import register
from controller.admission.secret import Material, fetch_or_create
from tests.cluster.test_webhook_tls import _served_serial
from tests.conftest import Cluster, start_webhook

SECRET = "replayops-webhook-tls"


def _serial(pem: bytes) -> int:
    return int(x509.load_pem_x509_certificate(pem).serial_number)


def _ca_bundle(cluster: Cluster) -> bytes:
    config = cluster.kube.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration",
                              "replayops-webhook") or {}
    return base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"])


def test_a_replica_losing_the_race_to_create_the_secret_uses_the_winners(cluster: Cluster, namespace: str) -> None:
    winner = Material.generated(("127.0.0.1",))

    def generate_while_another_replica_creates_it() -> Material:
        cluster.kube.create(winner.secret(namespace, SECRET))
        return Material.generated(("127.0.0.1",))

    got = fetch_or_create(cluster.kube, namespace, SECRET, generate=generate_while_another_replica_creates_it)
    assert got == winner
    assert fetch_or_create(cluster.kube, namespace, SECRET) == winner


def test_two_replicas_serve_the_secrets_certificate_and_the_apiserver_trusts_each(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    flags = ("--cert-secret", SECRET, "--cert-secret-namespace", namespace)
    first = start_webhook(cluster, tmp_path / "a", *flags)
    try:
        second = start_webhook(cluster, tmp_path / "b", *flags)  # registers itself: the apiserver calls it
        try:
            stored = Material.from_secret(cluster.kube.get("v1", "Secret", SECRET, namespace) or {}, SECRET)
            ca = tmp_path / "ca.pem"
            ca.write_bytes(stored.ca)
            assert _served_serial(first.port, ca) == _served_serial(second.port, ca) == _serial(stored.cert)
            assert _ca_bundle(cluster) == stored.ca
            register.register(cluster.kube, stored.ca, first.url)  # back to the first: same CA, trusted
            register.wait_until_called(cluster.kube)
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_rotated_secret_is_served_without_restart_with_both_cas_trusted(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    hook = start_webhook(cluster, tmp_path, "--cert-secret", SECRET, "--cert-secret-namespace", namespace,
                         "--cert-sync-interval", "0.5")
    try:
        old = Material.from_secret(cluster.kube.get("v1", "Secret", SECRET, namespace) or {}, SECRET)
        new = Material.generated(("127.0.0.1",))
        cluster.kube.apply(new.secret(namespace, SECRET))
        ca = tmp_path / "new-ca.pem"
        ca.write_bytes(new.ca)
        deadline = time.monotonic() + 30
        while True:
            try:
                if _served_serial(hook.port, ca) == _serial(new.cert):
                    break
            except OSError:  # still the old certificate: the new CA does not verify it
                pass
            assert time.monotonic() < deadline, f"the rotated certificate was never served:\n{hook.log.read_text()}"
            time.sleep(0.2)
        bundle = _ca_bundle(cluster)
        assert new.ca in bundle and old.ca in bundle
        register.wait_until_called(cluster.kube)
    finally:
        hook.stop()


def test_a_malformed_secret_stops_the_start_naming_the_secret_and_key(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    good = Material.generated(("127.0.0.1",))
    broken = good.secret(namespace, SECRET)
    broken["data"] = {**broken["data"], "tls.key": base64.b64encode(b"not a key").decode()}
    cluster.kube.create(broken)
    out = subprocess.run([sys.executable, "-m", "controller.cli", "webhook", "serve", "--port", "1", "--cert-dir",
                          str(tmp_path), "--kubeconfig", str(cluster.kubeconfig), "--cert-secret", SECRET,
                          "--cert-secret-namespace", namespace], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"Secret {namespace}/{SECRET}: tls.key is not PEM" in out.stderr


def test_the_ca_bundle_patch_changes_only_the_bundle_and_keeps_what_an_overlay_set(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    """In a cluster the configurations come from the manifests (an overlay may change them): the webhook
    patches only ``caBundle``, as its own field manager, writes nothing when it is current, and names a
    configuration that is not installed."""
    import json


    hook = start_webhook(cluster, tmp_path, "--cert-secret", SECRET, "--cert-secret-namespace", namespace)
    api = "admissionregistration.k8s.io/v1"
    kinds = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    stored = Material.from_secret(cluster.kube.get("v1", "Secret", SECRET, namespace) or {}, SECRET)
    try:
        path = cluster.kube.resource(api, kinds[0]).path(name="replayops-webhook")
        cluster.kube.call("PATCH", path, body=[{"op": "replace", "path": "/webhooks/0/timeoutSeconds", "value": 7}],
                          content_type="application/json-patch+json", query=[("fieldManager", "an-overlay")])
        bundle = stored.ca + Material.generated(("127.0.0.1",)).ca  # the next CA trusted beside the current
        assert register.patch_ca_bundle(cluster.kube, bundle) == [f"{k}/replayops-webhook" for k in kinds]
        for kind in kinds:
            live = cluster.kube.get(api, kind, "replayops-webhook") or {}
            assert {base64.b64decode(h["clientConfig"]["caBundle"]) for h in live["webhooks"]} == {bundle}
            assert all(h["clientConfig"]["url"].startswith(hook.url) for h in live["webhooks"])
            ours = [m for m in live["metadata"]["managedFields"] if m["manager"] == "replayops-webhook"]
            owned = json.dumps(ours[0]["fieldsV1"])
            assert "caBundle" in owned and "timeoutSeconds" not in owned and "url" not in owned, owned
        mutating = cluster.kube.get(api, kinds[0], "replayops-webhook") or {}
        assert mutating["webhooks"][0]["timeoutSeconds"] == 7, "the overlay's field stays"
        writes = cluster.kube.writes
        assert register.patch_ca_bundle(cluster.kube, bundle) == [] and cluster.kube.writes == writes
        register.wait_until_called(cluster.kube)  # the apiserver still trusts the webhook
        register.unregister(cluster.kube)
        assert register.patch_ca_bundle(cluster.kube, bundle) == [], "not installed (yet): nothing, no error"
    finally:
        register.register(cluster.kube, stored.ca, hook.url)  # as the other tests expect to find them
        hook.stop()


def test_configurations_installed_after_the_webhook_or_re_created_get_their_ca_bundle_back(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    """As the manifests run it (--patch-ca-bundle with the Secret): configurations applied after the
    webhook started, or re-created later without a caBundle, are given it within one sync interval."""
    api = "admissionregistration.k8s.io/v1"
    kinds = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    register.unregister(cluster.kube)
    hook = start_webhook(cluster, tmp_path, "--cert-secret", SECRET, "--cert-secret-namespace", namespace,
                         "--patch-ca-bundle", "--cert-sync-interval", "0.5", register=False)
    stored = Material.from_secret(cluster.kube.get("v1", "Secret", SECRET, namespace) or {}, SECRET)

    def bundles() -> set[bytes]:
        found = set()
        for kind in kinds:
            for h in (cluster.kube.get(api, kind, "replayops-webhook") or {}).get("webhooks") or [{}]:
                found.add(base64.b64decode((h.get("clientConfig") or {}).get("caBundle") or ""))
        return found

    try:
        assert hook.proc.poll() is None, "no configuration installed yet is not fatal"
        for doc in register.configurations(b"", hook.url):  # installed now, as a user's apply without caBundle
            for h in doc["webhooks"]:
                h["clientConfig"].pop("caBundle", None)
            cluster.kube.apply(doc, field_manager="kubectl")
        cluster.kube.wait_for("the caBundle set", lambda: bundles() == {stored.ca}, timeout=30)
        path = cluster.kube.resource(api, kinds[1]).path(name="replayops-webhook")
        cluster.kube.call("PATCH", path, body=[{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}],
                          content_type="application/json-patch+json", query=[("fieldManager", "kubectl")])
        cluster.kube.wait_for("the caBundle set again", lambda: bundles() == {stored.ca}, timeout=30)
        register.wait_until_called(cluster.kube)
    finally:
        register.register(cluster.kube, stored.ca, hook.url)
        hook.stop()
