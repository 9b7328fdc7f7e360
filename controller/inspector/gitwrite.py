"""Desired-state changes as git commits: what the inspector's buttons do.

``GitWriter`` keeps a working copy of the GitOps repository. ``change`` brings it to the remote
branch, writes or removes files under the source path, validates the resulting tree exactly as
the controller will (``desired.build`` offline: schemas and cross-object rules), commits as the
inspector with the user's words, and pushes. A push that loses a race with another commit is
redone on the new tip; an invalid result is never committed.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controller import logs
from controller.admission import rules
from controller.gitops import desired
from controller.gitops.auth import Auth, redact, scrub

log = logs.get("inspector.git")


class ChangeError(ValueError):
    """The change cannot be made; the message says why (and where, for an invalid tree)."""


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    files: tuple[str, ...]


class GitWriter:
    """Commits to ``branch`` of ``url``, under ``path``, as ``author`` (``Name <email>``)."""

    def __init__(self, url: str, workdir: Path, *, branch: str = "main", path: str = ".",
                 author: str = "replayops inspector <inspector@replayops.dev>", attempts: int = 3,
                 auth: Auth | None = None) -> None:
        self.url, self.workdir, self.branch, self.path = url, workdir, branch, path
        self.shown = redact(url)  # in errors and logs
        name, _, email = author.partition(" <")
        self.env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email.rstrip(">"), "GIT_COMMITTER_NAME": name,
                    "GIT_COMMITTER_EMAIL": email.rstrip(">"), "PATH": "/usr/bin:/bin:/usr/local/bin",
                    "GIT_TERMINAL_PROMPT": "0", **(auth or Auth()).git_env()}
        self.attempts = attempts
        self._lock = threading.Lock()

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["git", *args], cwd=self.workdir, env=self.env, capture_output=True, text=True,
                             timeout=120)
        if check and out.returncode != 0:
            raise ChangeError(f"git {args[0]} failed: {scrub(out.stderr.strip() or out.stdout.strip(), self.url)}")
        return out

    def _sync(self) -> None:
        """The working copy at the remote branch's tip, with nothing of ours left over."""
        if not (self.workdir / ".git").is_dir():
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._git("init", "-q")
            self._git("remote", "add", "origin", self.url)
        self._git("fetch", "-q", "origin", self.branch)
        self._git("checkout", "-q", "-f", "-B", self.branch, "FETCH_HEAD")
        self._git("clean", "-qfdx")

    @property
    def root(self) -> Path:
        return self.workdir / self.path

    def read(self) -> dict[str, bytes]:
        """The YAML files under the source path at the remote tip."""
        with self._lock:
            self._sync()
            return desired.read_dir(self.root) if self.root.exists() else {}

    def change(self, message: str, write: Mapping[str, str] | None = None,
               remove: tuple[str, ...] = ()) -> Commit:
        """Commit ``write`` (path under the source path → text) and ``remove``, validated, and push."""
        write = dict(write or {})
        files = tuple(sorted({*write, *remove}))
        with self._lock:
            for attempt in range(1, self.attempts + 1):
                self._sync()
                for name, text in write.items():
                    target = self.root / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text)
                for name in remove:
                    if not (self.root / name).is_file():
                        raise ChangeError(f"{name} is not in {self.shown} ({self.branch})")
                    self._git("rm", "-q", "--", str(Path(self.path) / name))
                self._validate()
                self._git("add", "-A", "--", self.path)
                self._git("commit", "-q", "-m", message)
                pushed = self._git("push", "-q", "origin", f"HEAD:refs/heads/{self.branch}", check=False)
                if pushed.returncode == 0:
                    sha = self._git("rev-parse", "HEAD").stdout.strip()
                    log.info("committed", extra=logs.fields(sha=sha, message=message, files=list(files)))
                    return Commit(sha, message, files)
                log.warning("push lost a race; redoing the change on the new tip",
                            extra=logs.fields(attempt=attempt, error=scrub(pushed.stderr.strip(), self.url)))
            raise ChangeError(f"push to {self.shown} ({self.branch}) failed {self.attempts} times: "
                              f"{scrub(pushed.stderr.strip(), self.url)}")

    def _validate(self) -> None:
        offline = rules.StaticLookup.offline()
        try:
            desired.build(desired.read_dir(self.root), lookup=offline)
        except desired.InvalidRevision as exc:
            raise ChangeError(f"the change would make the repository invalid:\n{exc}") from exc
