"""Run our Argo CD health checks as Argo CD does: Lua 5.1, the object as the global ``obj``, no io/os."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa import lua51

ROOT = Path(__file__).resolve().parents[1]
CUSTOMIZATIONS = ROOT / "argo" / "resource_customizations"
ARGO_STATUSES = frozenset({"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"})


def script(group: str, kind: str) -> Path:
    return CUSTOMIZATIONS / group / kind / "health.lua"


def health(path: Path, obj: dict[str, Any]) -> dict[str, str]:
    """``{status, message}`` of ``obj`` by the health check at ``path``."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    env = lua.globals()
    for unsafe in ("io", "os", "debug", "dofile", "loadfile", "load", "loadstring", "require", "python"):
        env[unsafe] = None
    env.obj = lua.table_from(obj, recursive=True)
    result = lua.execute(path.read_text())
    assert result is not None, f"{path} returned nothing"
    out = {k: v for k, v in result.items()}
    assert out.get("status") in ARGO_STATUSES, f"{path}: status {out.get('status')!r} is not an Argo CD health"
    return out
