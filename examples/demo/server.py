"""The demo service under test: quotes prices it asks its dependency for (stdlib only)."""

import argparse
import json
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit


def make_handler(dependency: str, variant: str) -> type[BaseHTTPRequestHandler]:
    opener = urllib.request.build_opener()  # honours HTTP_PROXY / NO_PROXY from the environment

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            if url.path == "/healthz":
                return self._send(200, {"status": "ok"})
            if url.path != "/api/quote":
                return self._send(404, {"error": "not found"})
            item = parse_qs(url.query).get("item", [""])[0]
            qty = int(parse_qs(url.query).get("qty", ["1"])[0])
            try:
                with opener.open(f"{dependency}/price?item={quote(item)}", timeout=5) as resp:
                    price = json.load(resp)["price"]
            except urllib.error.HTTPError as exc:
                return self._send(exc.code, {"error": f"dependency said {exc.code}"})
            except OSError as exc:
                return self._send(502, {"error": f"dependency unreachable: {exc}"})
            total = price * qty * (0.9 if variant == "discount" else 1)
            self._send(200, {"item": item, "price": price, "qty": qty, "total": total, "ts": time.time()})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            order = json.loads(self.rfile.read(length) or b"{}")
            self._send(201, {"order": str(uuid.uuid4()), "items": order.get("items", [])})

        def log_message(self, *args: object) -> None:
            pass

    return Handler


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("dependency")
    parser.add_argument("--variant", default="base", choices=["base", "discount"])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a pod)")
    args = parser.parse_args()
    ThreadingHTTPServer((args.host, args.port), make_handler(args.dependency, args.variant)).serve_forever()
