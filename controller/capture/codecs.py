"""Bounded decompression of recorded bodies (gzip, deflate, zstd, br): a bomb costs at most the limit.

Every decoder stops once it has produced ``limit + 1`` bytes — brotli's too (``brotlicffi``'s
``output_buffer_limit``: the ``brotli`` module mitmproxy pins has no output bound) — and a body cut short
on the wire (a truncated recording) decodes as far as it goes.
"""

from __future__ import annotations

import gzip
import zlib

import brotlicffi
import zstandard

CODECS = ("gzip", "deflate", "zstd", "br")
ERRORS = (zlib.error, zstandard.ZstdError, brotlicffi.error, EOFError)


class TooLarge(ValueError):
    """A body that decompresses to more than the limit."""


def declared(encoding: str) -> str | None:
    """The codec a Content-Encoding (or grpc-encoding) names, when it is one of ``CODECS``."""
    encoding = encoding.strip().lower()
    if encoding == "x-gzip":
        return "gzip"
    return encoding if encoding in CODECS else None


def sniff(data: bytes, encoding: str = "") -> str | None:
    """The compression of ``data``: as declared (Content-Encoding, grpc-encoding), else by its magic."""
    if named := declared(encoding):
        return named
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if len(data) > 2 and data[0] == 0x78 and (data[0] << 8 | data[1]) % 31 == 0:
        return "deflate"
    return None


def decompress_prefix(data: bytes, codec: str, limit: int) -> tuple[bytes, bool]:
    """``data`` decompressed by ``codec``: at most ``limit`` bytes, and whether that is all of it (False:
    more would follow, or the input ends mid-stream). Raises one of ``ERRORS`` on what is not ``codec``."""
    if codec == "zstd":
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
            out = reader.read(limit + 1)
        if len(out) > limit:
            return out[:limit], False
        ended = zstandard.ZstdDecompressor().decompressobj()  # no more than the limit: now safe to ask
        ended.decompress(data)  # whether the frame ended or the input stopped mid-frame
        return out, ended.eof
    if codec == "br":
        decoder = brotlicffi.Decompressor()
        out = decoder.process(data, output_buffer_limit=limit + 1)
        return out[:limit], len(out) <= limit and decoder.is_finished()
    if codec == "deflate":
        try:
            return _inflate(data, 15, limit, members=False)
        except zlib.error:  # raw deflate, as some servers send it
            return _inflate(data, -15, limit, members=False)
    return _inflate(data, 31 if codec == "gzip" else 47, limit, members=True)


def _inflate(data: bytes, wbits: int, limit: int, *, members: bool) -> tuple[bytes, bool]:
    """zlib/gzip decoded up to ``limit`` bytes; with ``members``, every gzip member (as gunzip does)."""
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            return bytes(out[:limit]), False
        if not inflater.eof:
            return bytes(out), False  # the input ends mid-stream, or more output was held back
        data = inflater.unused_data
        if not (members and data.startswith(b"\x1f\x8b")):
            return bytes(out), True


def decompress(data: bytes, codec: str, limit: int) -> bytes:
    """All of ``data`` decompressed by ``codec``; ``TooLarge`` beyond ``limit`` bytes."""
    out, whole = decompress_prefix(data, codec, limit)
    if not whole and len(out) >= limit:
        raise TooLarge(f"decompresses to more than {limit} bytes")
    return out


def compress(data: bytes, codec: str) -> bytes:
    if codec == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if codec == "br":
        return bytes(brotlicffi.compress(data))
    return gzip.compress(data, mtime=0) if codec == "gzip" else zlib.compress(data)
