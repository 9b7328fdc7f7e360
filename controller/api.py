"""Every name replayops shares with the cluster, in one place.

The API group and kinds, field managers, labels and annotations, container and namespace names,
condition types and reasons, and phases. Other modules import them from here and never spell
them out again; this module imports nothing of ours, so every layer (``kube/`` too) may use it.
"""

from __future__ import annotations

# The API
GROUP = "replayops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KINDS = ("TrafficReplay", "CapturePolicy", "Snapshot")
WORKLOAD_API = "apps/v1"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")

# Field managers (server-side apply) and the component named in Events
FIELD_MANAGER = "replayops-controller"  # fixed by DESIGN; argo/ ignores exactly this name


def source_manager(source: str) -> str:
    """The field manager of what source ``source`` applies from git (workload annotations stay
    ``FIELD_MANAGER``'s): two sources own their own fields, never each other's."""
    return f"replayops-source-{source}"


JOB_MANAGER = "replayops-replay"  # also the managed-by label of replay Jobs

# Namespaces
SYSTEM_NAMESPACE = "replayops-system"
EXCLUDED_NAMESPACES = frozenset({"kube-system", SYSTEM_NAMESPACE})  # never injected

# Secrets of SYSTEM_NAMESPACE the controller creates when absent
FORWARDER_TOKEN_SECRET = "replayops-forwarder-token"  # the forwarder's master token (copies: see forwardersecrets)
DLP_KEY_SECRET = "replayops-dlp-key"  # key ``key``: the forwarder's redaction tags (mounted only there)

# On workloads' pod templates and pods (capture)
CAPTURE = "replayops.dev/capture"
CONFIG_HASH = "replayops.dev/config-hash"
OPT_OUT = "sidecar.replayops.dev/inject"
INJECTED = "replayops.dev/injected"
STATUS = "replayops.dev/status"  # what injection added, so that re-injection is a no-op
ROLLED_FOR = "replayops.dev/rolled-for"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"

# On every object applied from git (ownership, for prune)
MANAGED_BY = "app.kubernetes.io/managed-by"
SOURCE = "replayops.dev/source"
CONVERGER_LEASE = "replayops-converger"  # the Lease of the one controller that converges for every source
REPLAYS_LEASE = "replayops-replays"  # the Lease of the one that runs every replay's and snapshot's Job
REVISION = "replayops.dev/revision"  # the revision that last changed the object (not every later one)
APPLIED_HASH = "replayops.dev/applied-hash"  # of what git says of it: a change in git, or drift in the cluster
PRUNE = "replayops.dev/prune"

# On replay Jobs
UID_LABEL = "replayops.dev/replay-uid"
REPLAY = "replayops.dev/replay"  # annotation: namespace/name of the replay
GENERATION = "replayops.dev/replay-generation"

# Containers
PROXY = "replayops-proxy"
INIT = "replayops-init"

# On snapshot Jobs
SNAPSHOT = "replayops.dev/snapshot"  # annotation: namespace/name of the Snapshot

# TrafficReplay phases
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "Pending", "Running", "Succeeded", "Failed", "Cancelled"
READY_PHASE = "Ready"  # a Snapshot cut and readable
ACTIVE_PHASES = (PENDING, RUNNING)
TERMINAL_PHASES = (SUCCEEDED, FAILED, CANCELLED)

# Conditions and reasons (status conditions and Events)
READY = "Ready"
SELECTED = "Selected"  # CapturePolicy Ready: its workloads are selected
SERVING_MOCKS = "ServingMocks"
REVISION_APPLIED = "RevisionApplied"
REVISION_REJECTED = "RevisionRejected"
RECOVERED = "Recovered"
CONFLICT = "Conflict"  # CapturePolicy not Ready: a workload two policies select
RECONCILE_FAILED = "ReconcileFailed"
JOB_CREATED = "JobCreated"
JOB_FAILED = "JobFailed"
MOCKS_SERVED = "MocksServed"
REPLAY_FAILED = "ReplayFailed"
GOALS_MET = "GoalsMet"
GOALS_NOT_MET = "GoalsNotMet"
SNAPSHOT_CUT = "SnapshotCut"
SNAPSHOT_FAILED = "SnapshotFailed"
CAPTURE_DEGRADED = "CaptureDegraded"  # a pod injected in reverse mode: its namespace forbids the init container
CAPTURE_SKIPPED = "CaptureSkipped"  # a pod not injected: the sidecar would make it refused
SNAPSHOT_NOT_READY = "SnapshotNotReady"  # a TrafficReplay waits for the Snapshot it names
