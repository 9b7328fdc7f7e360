"""Git as the source of desired state: fetch a remote into a bare cache, read trees without checkout.

``GitSource.fetch()`` brings the remote's branches and tags into a bare
repository under the cache (force-updating refs, so force-pushes and history
rewrites are followed) and resolves the configured branch, tag or pinned
commit to a ``Revision``. ``files(revision)`` reads the YAML blobs under the
configured sub-path straight from the commit's tree.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pygit2

from controller.gitops.auth import Auth, redact, scrub

YAML_SUFFIXES = (".yaml", ".yml")
REFSPECS = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]


class GitError(RuntimeError):
    """Fetching or reading the repository failed; the message names the URL and the ref. ``transient``:
    the fetch itself failed (the server, the network), worth retrying soon — not a missing ref or path."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Revision:
    """A resolved ref: ``main@sha1:<hash>``."""

    ref: str
    sha: str

    def __str__(self) -> str:
        return f"{self.ref}@sha1:{self.sha}"


class _Callbacks(pygit2.RemoteCallbacks):  # type: ignore[misc]
    def __init__(self, auth: Auth) -> None:
        super().__init__()
        self.auth = auth

    def credentials(self, url: str, username_from_url: str | None,
                    allowed_types: int) -> pygit2.Username | pygit2.UserPass | pygit2.Keypair:
        user = username_from_url or "git"  # ssh: the URL's user (git@host); the Secret's username is https's
        if allowed_types & pygit2.enums.CredentialType.USERNAME:  # ssh asks for the user name first
            return pygit2.Username(user)
        if self.auth.ssh_private_key and allowed_types & pygit2.enums.CredentialType.SSH_KEY:
            public = self.auth.ssh_public_key or Path(f"{self.auth.ssh_private_key}.pub")
            return pygit2.Keypair(user, str(public) if public.is_file() else None, str(self.auth.ssh_private_key), "")
        if self.auth.token and allowed_types & pygit2.enums.CredentialType.USERPASS_PLAINTEXT:
            return pygit2.UserPass(self.auth.username or "x-access-token", self.auth.token)
        raise GitError(f"{redact(url)} asks for credentials this source has none of")

    def certificate_check(self, certificate: None, valid: bool, host: bytes) -> bool:
        """Trust only what libgit2 verified: pygit2 alone would let every ssh host key through."""
        if not valid:
            raise GitError(f"{host.decode(errors='replace')} is not trusted: an ssh host key not in known_hosts "
                           "(--git-credentials or ~/.ssh/known_hosts), or an https certificate of an unknown CA "
                           "(ca.crt or --ca-file)")
        return True


class GitSource:
    """One remote, one ref (branch, tag or commit) and one sub-path."""

    def __init__(self, url: str, *, cache: Path, branch: str = "main", tag: str | None = None,
                 commit: str | None = None, path: str = ".", auth: Auth | None = None,
                 timeout: float = 60.0) -> None:
        self.url, self.shown = url, redact(url)  # shown: in errors, status, Events and logs
        self.branch, self.tag, self.commit = branch, tag, commit
        self.path = str(PurePosixPath(path)).strip("/") if path not in ("", ".", "/") else ""
        self.auth = auth or Auth()
        self.timeout = timeout  # seconds to connect, and without a byte from the server, before a fetch fails
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        self.dir = cache / key
        self._repo: pygit2.Repository | None = None

    @property
    def ref(self) -> str:
        return self.commit[:12] if self.commit else (self.tag or self.branch)

    def _open(self) -> pygit2.Repository:
        if self._repo is None:
            if (self.dir / "HEAD").exists():
                self._repo = pygit2.Repository(str(self.dir))
            else:
                if self.dir.exists():
                    shutil.rmtree(self.dir)
                self.dir.parent.mkdir(parents=True, exist_ok=True)
                repo = pygit2.init_repository(str(self.dir), bare=True)
                repo.remotes.create("origin", self.url)
                self._repo = repo
        return self._repo

    def fetch(self) -> Revision:
        """Fetch the remote and resolve the configured ref; raise GitError saying what failed."""
        repo = self._open()
        if self.auth.ca_file:
            pygit2.settings.set_ssl_cert_locations(str(self.auth.ca_file), None)
        if self.auth.known_hosts:  # libgit2 reads <homedir>/.ssh/known_hosts
            home = self.dir.parent / "ssh-home"
            (home / ".ssh").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.auth.known_hosts, home / ".ssh" / "known_hosts")
            pygit2.settings.homedir = str(home)
        pygit2.settings.server_connect_timeout = pygit2.settings.server_timeout = int(self.timeout * 1000)
        try:
            repo.remotes["origin"].fetch(REFSPECS, callbacks=_Callbacks(self.auth),
                                         prune=pygit2.enums.FetchPrune.PRUNE)
        except (pygit2.GitError, GitError) as exc:
            raise GitError(f"fetch {self.shown}: {scrub(str(exc), self.url)}",
                           transient="credentials" not in str(exc) and "not trusted" not in str(exc)) from exc
        return self.resolve()

    def resolve(self) -> Revision:
        """The configured ref in the local cache (no network)."""
        repo = self._open()
        try:
            if self.commit:
                commit = repo.revparse_single(self.commit).peel(pygit2.Commit)
            else:
                ref = f"refs/tags/{self.tag}" if self.tag else f"refs/heads/{self.branch}"
                commit = repo.references[ref].peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError) as exc:
            raise GitError(f"{self.shown}: ref {self.ref!r} not found") from exc
        return Revision(self.ref, str(commit.id))

    def files(self, revision: Revision) -> dict[str, bytes]:
        """Every YAML file under the sub-path at ``revision``, by repository path (no checkout)."""
        repo = self._open()
        tree = repo.revparse_single(revision.sha).peel(pygit2.Tree)
        if self.path:
            try:
                sub = repo[tree[self.path].id]
            except KeyError as exc:
                raise GitError(f"{self.shown} at {revision}: path {self.path!r} does not exist") from exc
            if not isinstance(sub, pygit2.Tree):
                raise GitError(f"{self.shown} at {revision}: path {self.path!r} is not a directory")
            tree = sub
        out: dict[str, bytes] = {}
        self._walk(repo, tree, self.path, out)
        return out

    def _walk(self, repo: pygit2.Repository, tree: pygit2.Tree, prefix: str, out: dict[str, bytes]) -> None:
        for entry in tree:
            name = f"{prefix}/{entry.name}" if prefix else str(entry.name)
            obj = repo[entry.id]
            if isinstance(obj, pygit2.Tree):
                self._walk(repo, obj, name, out)
            elif isinstance(obj, pygit2.Blob) and name.endswith(YAML_SUFFIXES):
                out[name] = obj.data
