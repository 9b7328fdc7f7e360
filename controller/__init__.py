"""replayops: declarative GitOps traffic capture and replay for Kubernetes."""

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it (a sidecar's start skips a metadata scan)
