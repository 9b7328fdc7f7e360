"""Forwarder tokens bound to a namespace: derived, checked in constant time, and nothing else accepted."""

from __future__ import annotations

import pytest

from controller import tokens

MASTER = "m4ster-token-of-the-forwarder"


def test_a_namespaces_token_says_its_namespace_and_the_master_any() -> None:
    team = tokens.for_namespace(MASTER, "team-web")
    assert team.startswith("v1.team-web.") and tokens.namespace_of(MASTER, team) == "team-web"
    assert tokens.namespace_of(MASTER, MASTER) == tokens.ANY
    assert tokens.for_namespace(MASTER, "team-web") == team, "the same every time: no list to keep"
    assert tokens.for_namespace("another-master", "team-web") != team, "rotating the master rotates it"


@pytest.mark.parametrize("token", [
    "", "wrong", f"v1.team-web.{'0' * 64}",  # a guessed HMAC
    "v1.team-ops." + tokens.for_namespace(MASTER, "team-web").rpartition(".")[2],  # another namespace's HMAC
    tokens.for_namespace(MASTER, "team-web") + "x", "v1.Team_Web.abc", "v2." + MASTER])
def test_anything_else_is_refused(token: str) -> None:
    with pytest.raises(tokens.TokenError, match="missing or wrong bearer token"):
        tokens.namespace_of(MASTER, token)


def test_a_namespace_name_is_checked() -> None:
    with pytest.raises(tokens.TokenError, match="is not a namespace name"):
        tokens.for_namespace(MASTER, "../etc")


class Apiserver:
    """TokenReview answers as the apiserver gives them, or its outage."""

    def __init__(self) -> None:
        self.reviews: list[dict] = []  # type: ignore[type-arg]
        self.down = False

    def create(self, body: dict) -> dict:  # type: ignore[type-arg]
        if self.down:
            raise ConnectionRefusedError("apiserver down")
        self.reviews.append(body)
        token = body["spec"]["token"]
        if token.startswith("good"):
            return {"status": {"authenticated": True, "audiences": body["spec"]["audiences"], "user": {
                "username": "system:serviceaccount:shop:app", "groups": ["system:serviceaccounts"],
                "extra": {tokens.POD_NAME: ["checkout-1"], tokens.POD_UID: ["u-1"]}}}}
        if token.startswith("elsewhere"):
            return {"status": {"authenticated": True, "audiences": ["https://vault"], "user": {"username": "x"}}}
        return {"status": {"authenticated": False, "error": "invalid bearer token"}}


def test_the_reviewer_names_the_pod_and_asks_the_apiserver_once_a_minute_per_token() -> None:
    api = Apiserver()
    reviewer = tokens.Reviewer(api.create, [tokens.FORWARDER_AUDIENCE])
    who = reviewer.identify("good-1")
    assert (who.namespace, who.pod, who.pod_uid, who.user) == ("shop", "checkout-1", "u-1",
                                                              "system:serviceaccount:shop:app")
    assert reviewer.identify("good-1") == who and len(api.reviews) == 1, "answered from memory"
    assert api.reviews[0]["spec"]["audiences"] == [tokens.FORWARDER_AUDIENCE]
    assert all("good-1" not in key for key in reviewer._seen), "the token itself is never kept"
    for refused, why in (("bad", "invalid bearer token"), ("elsewhere", "not for replayops-forwarder")):
        with pytest.raises(tokens.TokenError, match=why):
            reviewer.identify(refused)
        with pytest.raises(tokens.TokenError, match=why):
            reviewer.identify(refused)
    assert len(api.reviews) == 3, "a refusal is remembered too (for seconds)"


def test_an_accepted_token_rides_out_an_apiserver_outage_and_an_unknown_one_is_not_guessed() -> None:
    api = Apiserver()
    reviewer = tokens.Reviewer(api.create, [tokens.FORWARDER_AUDIENCE], ttl=0, stale=600)
    who = reviewer.identify("good-1")
    api.down = True
    assert reviewer.identify("good-1") == who, "accepted a moment ago: still accepted while it cannot be asked"
    api.down = False
    assert reviewer.identify("good-1") == who and len(api.reviews) == 1, \
        "the apiserver failed a moment ago: a known token is not asked about again for a while (no pile-up)"
    api.down = True
    with pytest.raises(ConnectionRefusedError):
        reviewer.identify("good-2")  # never seen: the caller answers 503, the sidecar retries
    expired = tokens.Reviewer(api.create, [tokens.FORWARDER_AUDIENCE], ttl=0, stale=0)
    api.down = False
    expired.identify("good-1")
    api.down = True
    with pytest.raises(ConnectionRefusedError):
        expired.identify("good-1")


def test_the_reviewer_remembers_at_most_its_size() -> None:
    api = Apiserver()
    reviewer = tokens.Reviewer(api.create, [tokens.FORWARDER_AUDIENCE], size=3)
    for i in range(5):
        reviewer.identify(f"good-{i}")
    assert len(reviewer._seen) == 3
    reviewer.identify("good-0")
    assert len(api.reviews) == 6, "the oldest was forgotten: asked again"
