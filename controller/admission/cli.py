"""``replayops webhook serve``: the admission webhook over HTTPS under gunicorn."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from controller import logs
from controller.admission import admissible, certs, inject, register, rules, secret
from controller.admission.app import Deps, create_app
from controller.admission.lookup import ClusterLookup
from controller.admission.notices import Notices
from controller.admission.serve import WebhookServer
from controller.api import SYSTEM_NAMESPACE
from controller.kube import KubeError, connect
from controller.store import FileStore, Manifest, StoreError

log = logs.get("webhook")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 86400 seconds")
    return value


def _csv(text: str) -> frozenset[str]:
    return frozenset(p.strip() for p in text.split(",") if p.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hook = sub.add_parser("webhook", help="the admission webhook (injection, defaulting, validation)")
    verbs = hook.add_subparsers(dest="verb", required=True)
    serve = verbs.add_parser("serve", help="serve AdmissionReviews over HTTPS")
    serve.add_argument("--port", type=int, required=True, help="HTTPS port")
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    serve.add_argument("--cert-dir", type=Path, required=True,
                       help="holds tls.crt/tls.key (and ca.crt); generated when absent")
    serve.add_argument("--kubeconfig", type=Path, default=None, help="cluster access (default: $KUBECONFIG "
                       "or in-cluster)")
    serve.add_argument("--cert-secret", metavar="NAME", default=None,
                       help="keep the certificate in this kubernetes.io/tls Secret (created when absent), shared "
                            "by every replica and re-read every --cert-sync-interval; the files go into --cert-dir")
    serve.add_argument("--cert-secret-namespace", metavar="NS",
                       default=os.environ.get("POD_NAMESPACE", SYSTEM_NAMESPACE),
                       help=f"namespace of --cert-secret (default $POD_NAMESPACE or {SYSTEM_NAMESPACE})")
    serve.add_argument("--cert-sync-interval", type=_positive, default=60.0, metavar="SECONDS",
                       help="how often to re-read --cert-secret (default 60)")
    serve.add_argument("--register", metavar="URL", default=None,
                       help="apply our webhook configurations pointing at URL (local development)")
    serve.add_argument("--patch-ca-bundle", action="store_true",
                       help="patch the CA bundle into our installed webhook configurations (nothing else of them)")
    serve.add_argument("--capture-namespaces", type=_csv, default=None,
                       help="comma-separated namespaces where capture is allowed (default: any)")
    serve.add_argument("--capture-label", default=None,
                       help="a namespace labelled LABEL=true allows capture")
    serve.add_argument("--max-copies", type=int, default=rules.Limits.max_copies)
    serve.add_argument("--max-rps", type=float, default=rules.Limits.max_rps)
    serve.add_argument("--image", default=None, help="the sidecar image (default: in a pod, the pod's own image; "
                       f"else {inject.InjectConfig.image})")
    serve.add_argument("--forwarder-url", default=inject.InjectConfig.forwarder_url)
    serve.add_argument("--store", type=Path, default=None,
                       help="snapshot store root (holds snapshots/), to check that replayed snapshots exist")
    serve.add_argument("--pod-security-default", choices=admissible.LEVELS, default="privileged",
                       help="the Pod Security level of namespaces without a pod-security.kubernetes.io/enforce "
                            "label: set it to the apiserver's PodSecurity default (default privileged)")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--threads", type=int, default=8)
    hook.set_defaults(func=run)


def _snapshot_check(store: Path | None) -> Callable[[str], Manifest | bool | None]:
    def manifest(name: str) -> Manifest | bool | None:
        if store is None or not store.is_dir():
            return None
        try:
            return FileStore(store).manifest(name)
        except StoreError:  # none of that name (or not a valid one), or an unreadable manifest
            return False
    return manifest


def run(args: argparse.Namespace) -> int:
    logs.setup()
    if not 0 < args.port < 65536:
        print(f"replayops webhook serve: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    ips = ("127.0.0.1",) if args.host in ("0.0.0.0", "127.0.0.1") else ("127.0.0.1", args.host)
    try:
        kube = connect(args.kubeconfig)

        registered: list[bytes] = []

        def patch_ca(bundle: bytes) -> None:
            if args.register:  # whole configurations: applied again only for a new bundle
                if registered == [bundle]:
                    return
                done = register.register(kube, bundle, args.register)
                registered[:] = [bundle]
            else:  # the bundle alone, every sync: no write where it is current
                done = register.patch_ca_bundle(kube, bundle)
            if done:
                log.info("webhook configurations given the CA bundle", extra=logs.fields(configurations=done))

        on_ca = patch_ca if args.register or args.patch_ca_bundle else None
        if args.cert_secret:
            sync = secret.CertSync(kube, args.cert_secret_namespace, args.cert_secret, args.cert_dir,
                                   on_ca=on_ca, ips=ips)
            paths = sync.sync()
            sync.start(args.cert_sync_interval)
        else:
            paths = certs.ensure(args.cert_dir, ips=ips)
            if on_ca:
                on_ca(certs.ca_bundle(paths))
    except (OSError, KubeError, ValueError) as err:
        print(f"replayops webhook serve: {err}", file=sys.stderr)
        return 1
    limits = rules.Limits(args.max_copies, args.max_rps, args.capture_namespaces, args.capture_label)
    config = inject.InjectConfig(image=args.image or kube.own_image() or inject.InjectConfig.image,
                                 forwarder_url=args.forwarder_url)

    def factory() -> object:
        kube = connect(args.kubeconfig)
        lookup = ClusterLookup(kube, snapshot=_snapshot_check(args.store))
        return create_app(Deps(lookup=lookup, policies=lookup.policy, limits=limits, inject_config=config,
                               quotas=lookup.quotas, limit_ranges=lookup.limit_ranges,
                               notify=Notices(kube),
                               pod_security_default=args.pod_security_default))

    WebhookServer(factory, host=args.host, port=args.port, certs=paths,  # type: ignore[arg-type]
                  workers=args.workers, threads=args.threads).run()
    return 0
