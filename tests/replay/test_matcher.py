"""The mock matcher as a pure function: exact, sequence, fuzzy, ignores and misses."""

from __future__ import annotations

from controller.replay.matcher import Hit, Ignore, Matcher, Miss
from controller.store import rrpair


def out(url: str, status: int, body: str = "", method: str = "GET", req_body: bytes = b"") -> dict:  # type: ignore[type-arg]
    return rrpair.make(method=method, url=url, request_headers=[], request_body=req_body or None, status=status,
                       response_headers=[], response_body=body.encode(), started=1, finished=1.01,
                       direction="outbound", service="s")


def matcher(*records: dict, **kw: object) -> Matcher:  # type: ignore[type-arg]
    m = Matcher(**kw)  # type: ignore[arg-type]
    m.load(records)
    return m


def test_nth_identical_request_gets_nth_response_then_the_last() -> None:
    m = matcher(out("http://dep/n?a=1", 200, "one"), out("http://dep/n?a=1", 200, "two"))
    bodies = [m.match("GET", "http://dep/n?a=1", b"").record["response"]["body"] for _ in range(4)]  # type: ignore[union-attr]
    assert bodies == ["one", "two", "two", "two"]


def test_query_order_and_ignored_keys_do_not_matter() -> None:
    m = matcher(out("http://dep/p?b=2&a=1&ts=100", 200, "x"), ignore=Ignore(query=frozenset({"ts"})))
    hit = m.match("GET", "http://dep/p?a=1&b=2&ts=999", b"")
    assert isinstance(hit, Hit) and not hit.fuzzy


def test_json_bodies_match_ignoring_paths() -> None:
    m = matcher(out("http://dep/o", 201, "ok", "POST", b'{"item":"a","nonce":"1"}'),
                ignore=Ignore(json_paths=("$.nonce",)))
    assert isinstance(m.match("POST", "http://dep/o", b'{"nonce":"2","item":"a"}'), Hit)


def test_fuzzy_fallback_picks_the_closest_recording_of_the_route() -> None:
    m = matcher(out("http://dep/p?item=apple&qty=1", 200, "apple"), out("http://dep/p?item=pear&qty=1", 200, "pear"))
    hit = m.match("GET", "http://dep/p?item=pear&qty=2", b"")
    assert isinstance(hit, Hit) and hit.fuzzy and hit.record["response"]["body"] == "pear"


def test_miss_says_what_was_closest_and_why() -> None:
    m = matcher(out("http://dep/p?item=apple", 200, "apple"), fuzzy=False)
    miss = m.match("GET", "http://dep/p?item=kiwi", b"")
    assert isinstance(miss, Miss) and "query item='kiwi' vs recorded 'apple'" in miss.reason
    other = m.match("DELETE", "http://dep/elsewhere", b"")
    assert isinstance(other, Miss) and "no recording of DELETE /elsewhere" in other.reason


def test_host_counts_through_a_proxy_but_not_when_called_directly() -> None:
    m = matcher(out("http://prices.svc/p", 200, "x"), fuzzy=False)
    assert isinstance(m.match("GET", "http://other.svc/p", b""), Miss)
    assert isinstance(m.match("GET", "http://127.0.0.1:9000/p", b"", host_known=False), Hit)


def test_inbound_records_are_not_mocks() -> None:
    m = Matcher()
    rec = out("http://dep/x", 200)
    rec["direction"] = "inbound"
    assert m.load([rec]) == 0
