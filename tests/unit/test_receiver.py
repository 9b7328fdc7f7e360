"""The push receiver: only verified pushes to the watched branch trigger a fetch."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from controller.gitops import receiver

SECRET = b"s3cret"
PUSH = json.dumps({"ref": "refs/heads/main", "after": "abc"}).encode()


def client(pushed: list[str]):  # type: ignore[no-untyped-def]
    return receiver.create_app(SECRET, "main", pushed.append).test_client()


def sig(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(("provider", "headers"), [
    ("github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sig(PUSH)}),
    ("gitea", {"X-Gitea-Event": "push", "X-Gitea-Signature": sig(PUSH)}),
    ("gitlab", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.decode()}),
])
def test_verified_push_triggers_a_fetch(provider: str, headers: dict[str, str]) -> None:
    pushed: list[str] = []
    resp = client(pushed).post(f"/hooks/{provider}", data=PUSH, headers=headers)
    assert resp.status_code == 202 and pushed == ["refs/heads/main"]


@pytest.mark.parametrize(("provider", "headers"), [
    ("github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sig(PUSH, b"wrong")}),
    ("github", {"X-GitHub-Event": "push"}),
    ("github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": sig(PUSH)}),
    ("gitea", {"X-Gitea-Event": "push", "X-Gitea-Signature": sig(PUSH + b" ")}),
    ("gitlab", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "guess"}),
])
def test_bad_signature_is_401_and_changes_nothing(provider: str, headers: dict[str, str]) -> None:
    pushed: list[str] = []
    resp = client(pushed).post(f"/hooks/{provider}", data=PUSH, headers=headers)
    assert resp.status_code == 401 and pushed == []


def test_malformed_payload_other_branch_other_event_and_oversize() -> None:
    pushed: list[str] = []
    c = client(pushed)
    bad = b"{not json"
    assert c.post("/hooks/github", data=bad, headers={"X-GitHub-Event": "push",
                                                      "X-Hub-Signature-256": "sha256=" + sig(bad)}).status_code == 400
    other = json.dumps({"ref": "refs/heads/dev"}).encode()
    resp = c.post("/hooks/github", data=other, headers={"X-GitHub-Event": "push",
                                                        "X-Hub-Signature-256": "sha256=" + sig(other)})
    assert resp.status_code == 202 and "ignored" in resp.get_json()["message"]
    resp = c.post("/hooks/github", data=PUSH, headers={"X-GitHub-Event": "issues",
                                                       "X-Hub-Signature-256": "sha256=" + sig(PUSH)})
    assert resp.status_code == 202 and "ignored" in resp.get_json()["message"]
    huge = b"x" * (receiver.MAX_BODY + 1)
    assert c.post("/hooks/github", data=huge, headers={"X-GitHub-Event": "push"}).status_code == 400
    assert c.post("/hooks/bitbucket", data=PUSH).status_code == 404
    assert pushed == []
