"""Benchmark the forwarder's DLP: MB/s of realistic JSON bodies through the forwarder on one core, with DLP
and with DLP off (the same forwarder, its redactor replaced by the identity), in one run. Target: the ratio
DLP on / DLP off >= 0.5.

Each batch is what a sidecar sends: 200 gzip'd RRPairs of an e-commerce API (JSON requests and responses of
1-12 KB, some carrying emails, card numbers, tokens, and URL-encoded queries), posted to the real Flask app
(``create_app``) with its real store on a temporary directory.

Run: .venv/bin/python bench/dlp.py [--batches 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.capture import dlp  # noqa: E402
from controller.capture.forwarder import create_app  # noqa: E402
from controller.store import FileStore, rrpair  # noqa: E402

NAMES = ["apple", "pear", "plum", "kiwi", "fig", "lime", "date", "melon"]


def _order(rng: random.Random, items: int) -> dict[str, Any]:
    return {"id": f"ord-{rng.randrange(10**9)}", "status": rng.choice(["new", "paid", "shipped"]),
            "customer": {"id": rng.randrange(10**6), "email": f"user{rng.randrange(10**5)}@example.com"
                         if rng.random() < 0.3 else None, "tier": "gold"},
            "payment": {"card": "4111 1111 1111 1111" if rng.random() < 0.1 else None, "method": "card"},
            "items": [{"sku": f"SKU-{rng.randrange(10**6)}", "name": rng.choice(NAMES), "qty": rng.randint(1, 5),
                       "price": round(rng.uniform(0.5, 99), 2), "note": "fresh, ripe and ready to eat"}
                      for _ in range(items)]}


def batch(rng: random.Random, size: int = 200) -> tuple[bytes, int]:
    """A gzip'd batch of ``size`` pairs, and the bytes of their bodies."""
    records, body_bytes = [], 0
    for i in range(size):
        request = json.dumps({"cart": [rng.choice(NAMES) for _ in range(3)], "coupon": None}).encode()
        response = json.dumps(_order(rng, rng.randint(5, 60))).encode()
        body_bytes += len(request) + len(response)
        query = f"page={rng.randint(1, 9)}" + ("&email=jane.doe%40example.com" if rng.random() < 0.2 else "")
        records.append(rrpair.make(
            method="POST", url=f"http://shop/api/orders/{i}?{query}",
            request_headers=[["Content-Type", "application/json"], ["Authorization", "Bearer abcDEF123ghiJKL456"]],
            request_body=request, status=200, response_headers=[["Content-Type", "application/json"]],
            response_body=response, started=1.0, finished=1.1, direction="inbound", service="shop"))
    data = {"policy": "", "stream": "bench", "records": records}
    return gzip.compress(json.dumps(data).encode(), 1), body_bytes


def throughput(batches: list[tuple[bytes, int]], dlp_on: bool) -> float:
    """MB/s of bodies through the forwarder app (one thread: one core)."""
    with tempfile.TemporaryDirectory() as tmp:
        client = create_app(FileStore(Path(tmp)), "tok", b"k" * 32, lambda ref: {}).test_client()
        headers = {"Authorization": "Bearer tok", "Content-Encoding": "gzip", "Content-Type": "application/json"}
        identity = mock.patch.object(dlp.Redactor, "record", lambda self, record: dict(record))
        with contextlib.nullcontext() if dlp_on else identity:
            started = time.perf_counter()
            for body, _ in batches:
                resp = client.post("/v1/batches", data=body, headers=headers)
                assert resp.status_code == 202, resp.get_data(as_text=True)
            elapsed = time.perf_counter() - started
    return sum(n for _, n in batches) / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(7)
    batches = [batch(rng) for _ in range(args.batches)]
    mb = sum(n for _, n in batches) / 1e6
    print(f"{args.batches} batches of 200 pairs, {mb:.1f} MB of JSON bodies; best of {args.rounds} rounds each")
    on = off = 0.0
    for _ in range(args.rounds):  # interleaved: both see the same machine
        off = max(off, throughput(batches, dlp_on=False))
        on = max(on, throughput(batches, dlp_on=True))
    print(f"forwarder, DLP off: {off:7.1f} MB/s of bodies")
    print(f"forwarder, DLP on:  {on:7.1f} MB/s of bodies")
    print(f"ratio on/off: {on / off:.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
