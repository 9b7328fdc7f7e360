"""A real local Kubernetes control plane, built from the Go module proxy and cached.

``ensure_binaries`` finds or builds kube-apiserver, kube-controller-manager and
etcd; ``DevCluster`` starts them on loopback with TLS and RBAC and writes a
kubeconfig. See ../shared/control-plane.md for the researched recipe.
"""

from controller.devcluster.build import K8S_VERSION, Binaries, ensure_binaries
from controller.devcluster.cluster import DevCluster, read_state
from controller.devcluster.errors import DevClusterError
from controller.devcluster.process import pid_alive, stop_pid

__all__ = [
    "K8S_VERSION", "Binaries", "DevCluster", "DevClusterError", "ensure_binaries",
    "pid_alive", "read_state", "stop_pid",
]
