"""A small storage provisioner for the one-node dev cluster: PersistentVolumeClaims of our class bind.

The StorageClass ``replayops-local`` (the cluster's default) provisions a hostPath volume per claim
under a directory of the node's, pre-bound to the claim (kube-controller-manager's binder finishes
the bind); a released volume is deleted with its directory. One node means every access mode,
ReadWriteMany too, is honest here. Run as ``python -m controller.devcluster.provisioner``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from controller import logs
from controller.kube import Kube, KubeError, connect

CLASS = "replayops-local"
PROVISIONER = "replayops.dev/local-path"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
log = logs.get("provisioner")


def storage_class() -> dict[str, Any]:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": CLASS, "annotations": {DEFAULT_CLASS: "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}


def volume_for(claim: dict[str, Any], root: Path) -> dict[str, Any]:
    """The PersistentVolume that satisfies ``claim``: its size and modes, pre-bound to it."""
    meta, spec = claim["metadata"], claim["spec"]
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {PROVISIONED_BY: PROVISIONER}},
            "spec": {"capacity": {"storage": size}, "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": CLASS,
                     "volumeMode": spec.get("volumeMode", "Filesystem"),
                     "hostPath": {"path": str(root / f"{meta['namespace']}-{meta['name']}-{meta['uid']}"),
                                  "type": "DirectoryOrCreate"},
                     "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                  "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}}}


def _ours(claim: dict[str, Any], default: bool) -> bool:
    cls = claim["spec"].get("storageClassName")
    return (cls == CLASS or (cls is None and default)) and not claim["spec"].get("volumeName")


def sync(kube: Kube, root: Path) -> None:
    """One pass: provision volumes for pending claims of our class, delete released ones."""
    volumes = {v["metadata"]["name"]: v for v in kube.list("v1", "PersistentVolume")}
    for claim in kube.list("v1", "PersistentVolumeClaim"):
        if (claim.get("status") or {}).get("phase") == "Pending" and _ours(claim, default=True):
            pv = volume_for(claim, root)
            if pv["metadata"]["name"] not in volumes:
                Path(pv["spec"]["hostPath"]["path"]).mkdir(mode=0o777, parents=True, exist_ok=True)
                Path(pv["spec"]["hostPath"]["path"]).chmod(0o777)  # pods run as any user
                kube.create(pv)
                ref = f"{claim['metadata']['namespace']}/{claim['metadata']['name']}"
                log.info("provisioned", extra=logs.fields(claim=ref, volume=pv["metadata"]["name"]))
    for name, pv in volumes.items():
        if (pv["metadata"].get("annotations") or {}).get(PROVISIONED_BY) == PROVISIONER and \
                (pv.get("status") or {}).get("phase") == "Released":
            shutil.rmtree(pv["spec"]["hostPath"]["path"], ignore_errors=True)
            kube.delete("v1", "PersistentVolume", name)
            log.info("deleted", extra=logs.fields(volume=name))


def main() -> int:
    parser = argparse.ArgumentParser(prog="replayops-provisioner", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="directory holding the volumes")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    logs.setup()
    kube = connect(args.kubeconfig)
    kube.apply(storage_class())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        try:
            sync(kube, args.root)
        except KubeError as exc:
            log.warning("sync failed; retrying", extra=logs.fields(error=str(exc)))
        stop.wait(args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
