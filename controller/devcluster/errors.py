"""The one error type of the local control plane: what failed and the next step."""


class DevClusterError(RuntimeError):
    """A control-plane build, start or wait failed; the message says what and what to do."""
