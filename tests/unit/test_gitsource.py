"""Git source on real repositories: refs, sub-paths, force-pushes, trees read without checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controller.gitops.source import GitError, GitSource
from tests.gitrepo import Repo, git_daemon


def test_branch_head_is_read_without_a_checkout(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "src")
    repo.commit("one", {"replays/a.yaml": "x", "README": "not yaml"})
    repo.write("replays/b.yml", "y")
    sha = repo.commit("two")
    source = GitSource(repo.url, cache=tmp_path / "cache")
    rev = source.fetch()
    assert str(rev) == f"main@sha1:{sha}"
    assert source.files(rev) == {"replays/a.yaml": b"x", "replays/b.yml": b"y"}
    assert not list((tmp_path / "cache").rglob("b.yml")), "the cache holds no working tree"


def test_sub_path_tag_and_pinned_commit(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "src")
    first = repo.commit("one", {"deploy/p.yaml": "v: 1", "other/q.yaml": "v: 0"})
    repo.git("tag", "v1")
    repo.commit("two", {"deploy/p.yaml": "v: 2"})
    cache = tmp_path / "cache"
    head = GitSource(repo.url, cache=cache, path="deploy")
    assert head.files(head.fetch()) == {"deploy/p.yaml": b"v: 2"}
    tagged = GitSource(repo.url, cache=cache, tag="v1", path="deploy")
    assert tagged.files(tagged.fetch()) == {"deploy/p.yaml": b"v: 1"}
    pinned = GitSource(repo.url, cache=cache, commit=first, path="deploy")
    assert pinned.fetch().sha == first
    missing = GitSource(repo.url, cache=cache, path="nope")
    with pytest.raises(GitError, match="path 'nope' does not exist"):
        missing.files(missing.fetch())


def test_force_push_to_an_older_commit_is_followed(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "src")
    old = repo.commit("one", {"a.yaml": "1"})
    repo.commit("two", {"a.yaml": "2"})
    source = GitSource(repo.url, cache=tmp_path / "cache")
    assert source.fetch().sha != old
    repo.git("reset", "-q", "--hard", old)
    repo.commit("rewritten", {"b.yaml": "3"})
    rewritten = repo.git("rev-parse", "HEAD")
    rev = source.fetch()
    assert rev.sha == rewritten
    assert source.files(rev) == {"a.yaml": b"1", "b.yaml": b"3"}


def test_unknown_branch_and_unreachable_remote_are_clear_errors(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "src")
    repo.commit("one")
    with pytest.raises(GitError, match="ref 'release' not found"):
        GitSource(repo.url, cache=tmp_path / "c1", branch="release").fetch()
    with pytest.raises(GitError, match="fetch file:///nonexistent"):
        GitSource("file:///nonexistent", cache=tmp_path / "c2").fetch()


def test_fetch_over_git_daemon_on_loopback(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "src" / "repo")
    sha = repo.commit("one", {"a.yaml": "1"})
    with git_daemon(tmp_path / "src") as port:
        source = GitSource(f"git://127.0.0.1:{port}/repo", cache=tmp_path / "cache")
        rev = source.fetch()
        assert rev.sha == sha
        assert source.files(rev) == {"a.yaml": b"1"}


def test_fetch_over_https_with_a_token(tmp_path: Path) -> None:
    from controller.gitops.source import Auth
    from tests.gitrepo import serve_https

    repo = Repo(tmp_path / "root" / "team.git")
    sha = repo.commit("one", {"replays/a.yaml": "v: 1"})
    port, server = serve_https(tmp_path / "root", "s3cret-token", tmp_path)
    try:
        url = f"https://127.0.0.1:{port}/team.git"
        source = GitSource(url, cache=tmp_path / "cache",
                           auth=Auth(token="s3cret-token", ca_file=tmp_path / "git-ca.pem"))
        rev = source.fetch()
        assert rev.sha == sha and source.files(rev) == {"replays/a.yaml": b"v: 1"}
        wrong = GitSource(url, cache=tmp_path / "cache2", auth=Auth(token="guess", ca_file=tmp_path / "git-ca.pem"))
        with pytest.raises(GitError, match=f"fetch {url}"):
            wrong.fetch()
    finally:
        server.shutdown()  # type: ignore[attr-defined]


def test_fetch_over_ssh_with_the_credentials_secret(tmp_path: Path) -> None:
    """The key, the user name and the server's host key come from a Secret-shaped directory (no ~/.ssh):
    the fetch succeeds; with another server's host key in known_hosts it is refused."""
    import sys

    from tests.gitrepo import serve_ssh

    repo = Repo(tmp_path / "srv" / "team.git")
    sha = repo.commit("one", {"a.yaml": "v: 1"})
    probe = ("import sys; from pathlib import Path; from controller.gitops.source import Auth, GitSource;"
             "s = GitSource(sys.argv[1], cache=Path(sys.argv[2]), auth=Auth.from_dir(Path(sys.argv[3])));"
             "r = s.fetch(); print(r.sha, sorted(s.files(r)))")
    with serve_ssh(tmp_path) as server:
        def fetch(cache: str) -> subprocess.CompletedProcess[str]:  # libgit2's ssh settings are per process
            return subprocess.run([sys.executable, "-c", probe, server.url(repo.path), str(tmp_path / cache),
                                   str(server.credentials)], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                                  capture_output=True, text=True)
        out = fetch("cache")
        assert out.returncode == 0, out.stderr
        assert out.stdout.split(" ", 1) == [sha, "['a.yaml']\n"]
        known = server.credentials / "known_hosts"
        host, kind, _ = known.read_text().split()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
        known.write_text(f"{host} {kind} {(tmp_path / 'other.pub').read_text().split()[1]}\n")
        refused = fetch("cache2")
        assert refused.returncode != 0 and "is not trusted: an ssh host key not in known_hosts" in refused.stderr


@pytest.mark.parametrize(("url", "shown"), [
    ("https://x-access-token:ghp_s3cret@git.example/team.git", "https://***@git.example/team.git"),
    ("https://ghp_s3cret@git.example/team.git", "https://***@git.example/team.git"),
    ("ssh://git@git.example:2222/team.git", "ssh://git@git.example:2222/team.git"),
    ("ssh://git:s3cret@git.example/team.git", "ssh://git:***@git.example/team.git"),
    ("https://git.example/team.git", "https://git.example/team.git"),
])
def test_urls_are_shown_without_their_credentials(url: str, shown: str) -> None:
    from controller.gitops.auth import redact, scrub

    assert redact(url) == shown
    assert "s3cret" not in scrub(f"failed to fetch {url}: 401 for {url.split('@')[0]}@", url)


def test_a_token_in_the_url_never_reaches_the_error(tmp_path: Path) -> None:
    from controller.gitops.source import Auth
    from tests.gitrepo import serve_https

    Repo(tmp_path / "root" / "team.git").commit("one", {"a.yaml": "v: 1"})
    port, server = serve_https(tmp_path / "root", "right-token", tmp_path)
    try:
        url = f"https://x-token:wrong-s3cret@127.0.0.1:{port}/team.git"
        source = GitSource(url, cache=tmp_path / "cache", auth=Auth(ca_file=tmp_path / "git-ca.pem"))
        with pytest.raises(GitError) as err:
            source.fetch()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    assert f"fetch https://***@127.0.0.1:{port}/team.git" in str(err.value)
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize("scheme", ["git", "http"])
def test_a_git_server_that_accepts_and_never_answers_fails_the_fetch_after_the_timeout(scheme: str,
                                                                                     tmp_path: Path) -> None:
    import socket
    import threading

    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nothing ever answers
    port = silent.getsockname()[1]
    source = GitSource(f"{scheme}://127.0.0.1:{port}/team.git", cache=tmp_path / "cache", timeout=1)
    failed: list[BaseException] = []

    def fetch() -> None:
        try:
            source.fetch()
        except GitError as exc:
            failed.append(exc)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(60)  # a hang guard far above the 1 s timeout, not a measurement
    silent.close()
    assert not worker.is_alive(), "the fetch hung on a server that never answers"
    assert failed and f"fetch {scheme}://127.0.0.1:{port}/team.git" in str(failed[0])


def test_a_failed_fetch_is_transient_a_missing_branch_is_not(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: refused
    with pytest.raises(GitError) as refused:
        GitSource(f"git://127.0.0.1:{port}/team.git", cache=tmp_path / "a").fetch()
    assert refused.value.transient
    repo = Repo(tmp_path / "team")
    repo.commit("one", {"a.yaml": "v: 1"})
    with pytest.raises(GitError) as missing:
        GitSource(repo.url, cache=tmp_path / "b", branch="no-such-branch").fetch()
    assert not missing.value.transient and "ref 'no-such-branch' not found" in str(missing.value)
