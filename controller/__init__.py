"""replayops: declarative GitOps traffic capture and replay for Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("replayops")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
