"""wrk (Debian's package) as the benchmarks' load tool: flat out (closed loop), or open loop at a fixed rate.

wrk's own pacing (a Lua ``delay()``) makes every connection wait the same time after its
response, so the connections fire in bursts and a server is measured queueing behind its own
load. ``rate_script`` instead hands request k the slot start + k/rate (evenly spaced, whichever
connection is free), read from the monotonic clock through LuaJIT's FFI.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

RATE_LUA = """local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } rops_timespec;
int clock_gettime(int clk_id, rops_timespec *tp);
]]
local ts = ffi.new("rops_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval, start, k = 1000 / {rate}, nil, 0
delay = function()
  local now = now_ms()
  start = start or now
  local slot = start + k * interval
  k = k + 1
  if slot <= now then return 0 end
  return math.ceil(slot - now)
end
"""


def script(path: Path, *, rate: float | None = None, body: bytes | None = None) -> Path:
    """A wrk Lua script: paced at ``rate`` req/s when given; a JSON POST of ``body`` when given."""
    lines = [RATE_LUA.replace("{rate}", repr(float(rate)))] if rate else []
    if body is not None:
        body_file = path.with_suffix(".body")
        body_file.write_bytes(body)
        lines += ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"',
                  f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*a"); f:close()']
    path.write_text("\n".join(lines) + "\n")
    return path


def run(url: str, seconds: float, connections: int, lua: Path | None = None, threads: int = 1) -> dict[str, float]:
    """req/s and latency p50/p90/p99 (ms) of one wrk run."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--latency"]
    if lua:
        argv += ["-s", str(lua)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    result = {"rps": float(rps.group(1))}
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)", out, re.M)
        assert m, out
        result[f"p{q}"] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return result
