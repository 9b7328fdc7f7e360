"""DLP finds a corpus of secrets in every place a pair carries them: path, query, headers, cookies, bodies
(JSON, form, multipart, text, binary, compressed, gRPC frames) and WebSocket messages both ways."""

from __future__ import annotations

import base64
import gzip
import json
import struct
import zlib
from typing import Any
from urllib.parse import quote

import brotli
import pytest
import zstandard

from controller.capture import codecs, dlp
from controller.store import rrpair

CARD, EMAIL, AWS = "4111 1111 1111 1111", "jane.doe@example.com", "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
CUSTOM = "EMP-123456"
SECRETS = [CARD, EMAIL, AWS, JWT, CUSTOM, CARD.replace(" ", "")]
TEXT = f"card {CARD} mail {EMAIL} key {AWS} jwt {JWT} employee {CUSTOM}"
POLICY = {"patterns": [{"type": "custom", "name": "employee", "regex": r"EMP-\d{6}"}]}


def redactor() -> dlp.Redactor:
    return dlp.Redactor(dlp.Rules.from_policy(POLICY), b"k" * 32)


def pair(*, url: str = "http://svc/api", headers: list[list[str]] | None = None, body: bytes | None = None,
         response: bytes | None = None, response_headers: list[list[str]] | None = None) -> dict[str, Any]:
    return rrpair.make(method="POST", url=url, request_headers=headers or [], request_body=body, status=200,
                       response_headers=response_headers or [], response_body=response, started=1.0, finished=2.0,
                       direction="inbound", service="svc")


def leaks(found: bytes | str) -> list[str]:
    text = found if isinstance(found, str) else found.decode("latin-1")
    return [s for s in SECRETS if s in text]


def body(message: dict[str, Any]) -> bytes:
    return rrpair.decode_body(message)


def test_custom_patterns_add_to_the_built_in_ones_unless_the_policy_replaces_them() -> None:
    assert set(dlp.Rules.from_policy(POLICY).patterns) == {*dlp.PATTERNS, "employee"}
    only = dlp.Rules.from_policy({**POLICY, "replacePatterns": True})
    assert set(only.patterns) == {"employee"}


def test_the_path_query_headers_and_cookies() -> None:
    out = redactor().record(pair(url=f"http://svc/users/{EMAIL}/cards/{CARD.replace(' ', '')}?note={AWS}",
                                 headers=[["X-Note", JWT], ["Cookie", f"session={CUSTOM}"]]))
    assert not leaks(json.dumps(out)), out["request"]
    assert out["request"]["url"].startswith("http://svc/users/%5Bredacted%3Aemail%3A") or \
        "/users/%5Bredacted:email:" in out["request"]["url"], out["request"]["url"]


@pytest.mark.parametrize("ctype,data", [
    ("application/json", json.dumps({"note": TEXT, "nested": [{"x": TEXT}]}).encode()),
    ("application/x-www-form-urlencoded", f"note={TEXT}&b=2".encode()),
    ("text/plain", TEXT.encode()),
])
def test_text_bodies(ctype: str, data: bytes) -> None:
    out = redactor().record(pair(headers=[["Content-Type", ctype]], body=data, response=data,
                                 response_headers=[["Content-Type", ctype]]))
    assert not leaks(body(out["request"])) and not leaks(body(out["response"]))


def test_multipart_parts_text_and_binary() -> None:
    boundary = "XyZ"
    data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n{TEXT}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nhunter2\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + b"\xff\x00" + TEXT.encode() + \
        f"\r\n--{boundary}--\r\n".encode()
    out = redactor().record(pair(headers=[["Content-Type", f"multipart/form-data; boundary={boundary}"]], body=data))
    got = body(out["request"])
    assert not leaks(got) and b"hunter2" not in got
    assert got.count(f"--{boundary}".encode()) == 4, "the parts and their boundaries stay"


def test_a_binary_body_is_masked_in_place_with_the_same_length() -> None:
    proto = b"\x0a" + bytes([len(EMAIL)]) + EMAIL.encode() + b"\x12" + bytes([len(AWS)]) + AWS.encode() + b"\xff"
    out = redactor().record(pair(headers=[["Content-Type", "application/x-protobuf"]], body=proto))
    got = body(out["request"])
    assert len(got) == len(proto) and got[0] == 0x0A and got[1] == len(EMAIL) and not leaks(got)
    again = redactor().record(pair(headers=[["Content-Type", "application/x-protobuf"]], body=proto))
    assert body(again["request"]) == got, "the same secret, the same mask: replays still correlate"


@pytest.mark.parametrize("codec", ["gzip", "deflate", "zstd", "br"])
def test_bodies_the_app_compressed(codec: str) -> None:
    raw = json.dumps({"note": TEXT}).encode()
    packed = {"gzip": gzip.compress, "deflate": zlib.compress, "zstd": zstandard.ZstdCompressor().compress,
              "br": brotli.compress}[codec](raw)
    headers = [["Content-Type", "application/json"], ["Content-Encoding", codec]]
    out = redactor().record(pair(headers=headers, body=packed))
    got = body(out["request"])
    assert not leaks(got)
    unpacked = codecs.decompress(got, codec, 1 << 20)
    assert not leaks(unpacked) and json.loads(unpacked)["note"].startswith("card [redacted:creditCard:")


def test_grpc_messages_compressed_or_not_are_masked_and_reframed() -> None:
    message = b"\x0a" + bytes([len(TEXT)]) + TEXT.encode()
    packed = gzip.compress(message)
    frames = b"\x00" + struct.pack(">I", len(message)) + message + b"\x01" + struct.pack(">I", len(packed)) + packed
    headers = [["Content-Type", "application/grpc"], ["grpc-encoding", "gzip"]]
    out = redactor().record(pair(headers=headers, body=frames))
    got = body(out["request"])
    first_len = struct.unpack(">I", got[1:5])[0]
    first = got[5:5 + first_len]
    second = got[5 + first_len + 5:]
    assert first_len == len(message) and first[1] == len(TEXT) and not leaks(first)
    assert got[5 + first_len] == 1 and not leaks(gzip.decompress(second))


def test_websocket_messages_both_ways() -> None:
    record = pair()
    record["websocket"] = [
        {"fromClient": True, "type": "text", "ts": 1.0, "data": json.dumps({"msg": TEXT})},
        {"fromClient": False, "type": "text", "ts": 1.1, "data": TEXT},
        {"fromClient": False, "type": "binary", "ts": 1.2, "data": base64.b64encode(b"\x00" + TEXT.encode()).decode()},
    ]
    out = redactor().record(record)
    assert not leaks(json.dumps(out["websocket"]))
    assert not leaks(base64.b64decode(out["websocket"][2]["data"]))


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_a_decompression_bomb_is_not_kept(codec: str) -> None:
    bomb = codecs.compress(b"\0" * (1 << 24), codec)  # 16 MiB of zeros in a few KiB
    red = dlp.Redactor(dlp.Rules.from_policy(POLICY), b"k" * 32, limit=1 << 16)
    out = red.record(pair(headers=[["Content-Encoding", codec]], body=bomb))
    assert out["request"]["body"] == "[not recorded: decompresses to more than 65536 bytes]"
    assert red.counts["unscanned"] == 1


def test_a_compressed_body_without_secrets_keeps_its_bytes() -> None:
    packed = gzip.compress(b'{"fine": "nothing here"}', mtime=12345)
    out = redactor().record(pair(headers=[["Content-Encoding", "gzip"]], body=packed))
    assert body(out["request"]) == packed


def test_secrets_url_encoded_inside_other_text_are_found() -> None:
    """A query or form echoed inside a JSON string or a log line carries its secrets URL-encoded."""
    red = redactor()
    line = f"GET /q?email=jane.doe%40example.com&card={CARD.replace(' ', '+')}&auth=Bearer+abcDEF123ghiJKL456 ok"
    out = red.text(line)
    assert "%40example" not in out and "4111+1111" not in out and "abcDEF123" not in out, out
    assert out.startswith("GET /q?email=[redacted:email:") and out.endswith(" ok")
    assert red.text("a+b=c%20d is fine") == "a+b=c%20d is fine", "encoded text without secrets stays"
    blob = b"\x0a\x20" + b"x=jane.doe%40example.com&n=1" + b"\x00"
    masked = red.binary(blob)
    assert len(masked) == len(blob) and b"jane.doe" not in masked and masked.startswith(b"\x0a\x20")


def test_json_is_redacted_as_text_when_it_can_be_and_walked_when_it_cannot() -> None:
    red = redactor()
    doc = '{"note": "mail ' + EMAIL + '", "n": 1, "id": 12345678}'
    out = red.record(pair(headers=[["Content-Type", "application/json"]], body=doc.encode()))
    got = body(out["request"]).decode()
    assert got.startswith('{"note": "mail [redacted:email:') and got.endswith('", "n": 1, "id": 12345678}'), \
        "redacted in place: the document's own formatting kept"
    for tricky in ('{"card": 4111111111111111}',  # a number: text redaction would break the JSON
                   '{"note": "mail jane.doe\\u0040example.com"}',  # an escape hides it from the text
                   '{"password": "hunter2", "x": 1}'):  # a key a rule names
        out = red.record(pair(headers=[["Content-Type", "application/json"]], body=tricky.encode()))
        got = body(out["request"]).decode()
        parsed = json.loads(got)
        assert not leaks(got) and "hunter2" not in got and "jane.doe" not in json.dumps(parsed), got


def _proto_string(field: int, value: bytes) -> bytes:
    return bytes([field << 3 | 2, len(value)]) + value


def _grpc_messages(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        size = struct.unpack(">I", data[at + 1:at + 5])[0]
        out.append(data[at + 5:at + 5 + size])
        at += 5 + size
    return out


def test_a_protobuf_that_is_utf8_is_masked_in_place_and_still_parses() -> None:
    """Short ASCII strings make a protobuf valid UTF-8: it is still masked in place, never tagged, and
    length bytes that look like text (``+``, digits, letters) are never touched."""
    from controller.capture.dlp import _protobuf_fields

    inner = _proto_string(1, b"x=" + quote(EMAIL).encode()) + _proto_string(2, EMAIL.encode())
    message = _proto_string(5, inner) + _proto_string(6, b"+" * 43)  # a length byte of 43 is '+'
    frame = b"\x00" + struct.pack(">I", len(message)) + message
    assert frame.decode("utf-8")  # recorded as text
    out = redactor().record(pair(headers=[["Content-Type", "application/grpc"]], body=frame))
    got = body(out["request"])
    (masked,) = _grpc_messages(got)
    assert len(masked) == len(message) and not leaks(got) and "%40example" not in got.decode("latin-1")
    assert _protobuf_fields(masked) is not None, "the redacted message still parses"
    assert masked[:2] == message[:2] and masked[-45:-43] == message[-45:-43], "tags and lengths as they were"


def test_a_grpc_stream_cut_short_stays_a_prefix_of_what_was_sent() -> None:
    message = _proto_string(1, TEXT.encode()[:100])
    stream = (b"\x00" + struct.pack(">I", len(message)) + message) * 2
    cut = stream[:len(stream) - 30]
    got = body(redactor().record(pair(headers=[["Content-Type", "application/grpc"]], body=cut))["request"])
    assert len(got) == len(cut) and got[len(got) - len(message) + 25:][:5] == cut[len(cut) - len(message) + 25:][:5]
    assert got[:5] == cut[:5] and got[5 + len(message):10 + len(message)] == cut[5 + len(message):10 + len(message)]


def test_a_grpc_message_flagged_compressed_that_is_not_is_masked_not_an_error() -> None:
    message = b"\x01" + struct.pack(">I", 24) + b"not gzip " + CARD.replace(" ", "").encode()[:15]
    got = body(redactor().record(pair(headers=[["Content-Type", "application/grpc"], ["grpc-encoding", "gzip"]],
                                      body=message))["request"])
    assert len(got) == len(message)


def test_a_base64_body_is_decoded_redacted_and_encoded_again() -> None:
    data = base64.b64encode(TEXT.encode())
    got = body(redactor().record(pair(headers=[["Content-Type", "text/plain"]], body=data))["request"])
    assert not leaks(base64.b64decode(got)) and b"[redacted:email:" in base64.b64decode(got)


def test_secrets_in_json_keys_and_cards_as_floats_are_found() -> None:
    doc = json.dumps({EMAIL: 1, "n": 4111111111111111.0, "token_hint": "x"}).encode()
    got = body(redactor().record(pair(headers=[["Content-Type", "application/json"]], body=doc))["request"])
    assert not leaks(got) and "4111111111111111" not in got.decode(), got
