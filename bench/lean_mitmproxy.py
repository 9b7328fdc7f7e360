"""mitmproxy with the sidecar's addon set but without the recorder: the baseline that isolates the addon's cost.

Run: .venv/bin/python bench/lean_mitmproxy.py reverse:http://127.0.0.1:8080@8081
"""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

from mitmproxy import options
from mitmproxy.master import Master

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.capture.proxy import sidecar_addons  # noqa: E402


async def main(mode: str) -> None:
    opts = options.Options()
    master = Master(opts, with_termlog=False)
    master.addons.add(*sidecar_addons())
    opts.update(mode=[mode], keep_host_header=True)
    task = asyncio.create_task(master.run())
    await asyncio.sleep(1)
    gc.freeze()  # as `replayops proxy` does once it listens
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
