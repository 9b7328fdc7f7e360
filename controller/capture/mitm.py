"""mitmproxy's Master and the seven addons the sidecar runs, without the ``addons`` package's ``__init__``.

That ``__init__`` imports all 31 default addons (onboarding's Flask app, proxyauth's LDAP and htpasswd
libraries, ...): over half a second of every sidecar's start, for addons it never loads. A bare package
module with the same ``__path__`` stands in for it, so ``mitmproxy.addons.core`` and the rest import as usual.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path


def _bare_addons_package() -> None:
    if "mitmproxy.addons" in sys.modules:
        return
    spec = importlib.util.find_spec("mitmproxy")
    assert spec is not None and spec.origin is not None, "mitmproxy is not installed"
    package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("mitmproxy.addons", None,
                                                                             is_package=True))
    package.__path__ = [str(Path(spec.origin).parent / "addons")]
    sys.modules["mitmproxy.addons"] = package
    import mitmproxy

    mitmproxy.addons = package  # as an import of the package would bind it: ``mitmproxy.addons.x`` resolves


_bare_addons_package()

from mitmproxy.addons import (  # noqa: E402
    core,
    disable_h2c,
    errorcheck,
    next_layer,
    proxyserver,
    tlsconfig,
    update_alt_svc,
)
from mitmproxy.master import Master  # noqa: E402  (it imports mitmproxy.addons.termlog)

__all__ = ["Master", "core", "disable_h2c", "errorcheck", "next_layer", "proxyserver", "tlsconfig",
           "update_alt_svc"]
