"""The demo's client: realistic traffic to the server, continuously (stdlib only).

``client.py URL [--rate N]``: quotes for a few items, now and then an order, an unknown item and a
card number in an order (the capture's DLP redacts it). Errors are printed and retried: the server
may be rolling (its capture sidecar is being injected).
"""

import argparse
import json
import random
import time
import urllib.error
import urllib.request

ITEMS = ["apple", "pear", "fig"]


def send(base: str, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.1:
        body = json.dumps({"items": [rng.choice(ITEMS)], "card": "4111 1111 1111 1111"}).encode()
        req = urllib.request.Request(f"{base}/api/orders", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    elif roll < 0.15:
        req = urllib.request.Request(f"{base}/api/quote?item=kiwi")
    else:
        req = urllib.request.Request(f"{base}/api/quote?item={rng.choice(ITEMS)}&qty={rng.randint(1, 5)}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return f"{req.get_method()} {req.full_url} {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"{req.get_method()} {req.full_url} {exc.code}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second")
    args = parser.parse_args()
    rng = random.Random(7)
    while True:
        try:
            print(send(args.url.rstrip("/"), rng), flush=True)
        except OSError as exc:
            print(f"not answered: {exc}", flush=True)
        time.sleep(1 / args.rate)


if __name__ == "__main__":
    main()
