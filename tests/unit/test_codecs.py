"""Bounded decompression: every codec stops at the limit (a bomb costs no more), and a body cut short on
the wire decodes as far as it goes."""

from __future__ import annotations

import tracemalloc

import pytest

from controller.capture import codecs

TEXT = b"".join(b'{"line": %d, "note": "some text that repeats a bit"}\n' % i for i in range(20000))


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_a_whole_body_decodes_and_says_so(codec: str) -> None:
    assert codecs.decompress_prefix(codecs.compress(TEXT, codec), codec, len(TEXT)) == (TEXT, True)


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_a_bomb_costs_at_most_the_limit(codec: str) -> None:
    bomb = codecs.compress(b"\0" * (256 << 20), codec)  # 256 MiB of zeros
    tracemalloc.start()
    try:
        out, whole = codecs.decompress_prefix(bomb, codec, 1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == b"\0" * (1 << 20) and not whole
    assert peak < 8 << 20, f"{codec} allocated {peak} bytes to decode 1 MiB of a bomb"
    with pytest.raises(codecs.TooLarge, match="more than 1048576 bytes"):
        codecs.decompress(bomb, codec, 1 << 20)


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_a_body_cut_short_decodes_as_far_as_it_goes(codec: str) -> None:
    packed = codecs.compress(TEXT, codec)
    out, whole = codecs.decompress_prefix(packed[:len(packed) // 2], codec, len(TEXT))
    assert not whole and 0 < len(out) < len(TEXT) and TEXT.startswith(out)


def test_what_is_not_the_codec_raises_one_of_its_errors() -> None:
    for codec in codecs.CODECS:
        with pytest.raises(codecs.ERRORS):
            codecs.decompress(b"\x1f\x8b certainly not compressed " * 4, codec, 1 << 20)


def test_sniff_by_declaration_then_magic() -> None:
    assert codecs.sniff(b"", "x-gzip") == "gzip" and codecs.sniff(b"", " BR ") == "br"
    assert codecs.sniff(codecs.compress(b"x", "gzip")) == "gzip"
    assert codecs.sniff(codecs.compress(b"x", "zstd")) == "zstd"
    assert codecs.sniff(codecs.compress(b"x", "deflate")) == "deflate"
    assert codecs.sniff(b"plain text") is None


def test_every_gzip_member_is_decoded_as_gunzip_does() -> None:
    import gzip

    data = gzip.compress(b"hello ") + gzip.compress(b"jane.doe@example.com")
    assert codecs.decompress_prefix(data, "gzip", 1 << 20) == (b"hello jane.doe@example.com", True)
    assert codecs.decompress_prefix(data, "gzip", 8) == (b"hello ja", False)
