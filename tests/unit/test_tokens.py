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
