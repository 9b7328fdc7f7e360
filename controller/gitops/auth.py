"""Credentials for a git remote, shared by the controller (pygit2 fetch) and the inspector (git push).

In a pod they come from the optional Secret ``replayops-git`` mounted as a directory
(``--git-credentials``), with any of the keys of Kubernetes' Secret types ``basic-auth`` and
``ssh-auth``: ``username``, ``password`` (or ``token``), ``ssh-privatekey`` (``ssh-publickey``),
``known_hosts``, ``ca.crt``. A key that is absent is simply not used, so one Secret serves https
and ssh remotes alike, and a public repository needs none.
"""

from __future__ import annotations

import argparse
import base64
import os
import shlex
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

SECRET = "replayops-git"


def redact(url: str) -> str:
    """``url`` safe to show: an http(s) URL's user info (a token is often the user name) and any
    password become ``***``; an ssh user name (``git@``) is kept."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if parts.scheme in ("http", "https"):
        userinfo = "***"
    elif colon:
        userinfo = f"{user}:***"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def scrub(text: str, url: str) -> str:
    """``text`` (an error from git or libgit2) with ``url``'s credentials replaced as ``redact`` does."""
    shown = redact(url)
    if shown == url:
        return text
    secret = urllib.parse.urlsplit(url).netloc.rpartition("@")[0]
    return text.replace(url, shown).replace(secret, "***") if secret else text.replace(url, shown)


@dataclass(frozen=True)
class Auth:
    """Credentials for https (token) or ssh (key pair) remotes."""

    token: str | None = None
    username: str | None = None
    ssh_private_key: Path | None = None
    ssh_public_key: Path | None = None
    known_hosts: Path | None = None  # ssh host keys; default ~/.ssh/known_hosts
    ca_file: Path | None = None  # extra CA for https remotes (a private git server)

    @classmethod
    def from_dir(cls, path: Path) -> Auth:
        """The credentials of a mounted Secret's directory; a missing key is not used, an unreadable one
        is refused (ValueError naming it), here at start rather than at every fetch."""
        def file(*names: str) -> Path | None:
            found = next((path / n for n in names if (path / n).is_file()), None)
            if found and not os.access(found, os.R_OK):
                raise ValueError(f"{found} is not readable by uid {os.getuid()} gid {os.getgid()}: in a pod the "
                                 "Secret's volume needs the pod's fsGroup (65532 in the manifests)")
            return found

        secret = file("token", "password")
        username = file("username")
        return cls(token=secret.read_text().strip() if secret else None,
                   username=username.read_text().strip() if username else None,
                   ssh_private_key=file("ssh-privatekey"), ssh_public_key=file("ssh-publickey"),
                   known_hosts=file("known_hosts"), ca_file=file("ca.crt"))

    def git_env(self) -> dict[str, str]:
        """Environment for the ``git`` command line that makes it use these credentials (nothing on argv)."""
        config: list[tuple[str, str]] = []
        if self.token:
            basic = base64.b64encode(f"{self.username or 'x-access-token'}:{self.token}".encode()).decode()
            config.append(("http.extraHeader", f"Authorization: Basic {basic}"))
        if self.ca_file:
            config.append(("http.sslCAInfo", str(self.ca_file)))
        env = {"GIT_CONFIG_COUNT": str(len(config))}
        for i, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        if self.ssh_private_key:
            ssh += ["-i", str(self.ssh_private_key), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            ssh += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        return env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The credential flags of every command that talks to a git remote."""
    parser.add_argument("--git-credentials", type=Path, default=None, metavar="DIR",
                        help=f"directory of a mounted Secret ({SECRET}): any of username, password or token, "
                        "ssh-privatekey, ssh-publickey, known_hosts, ca.crt")
    parser.add_argument("--token-file", type=Path, help="https token (overrides --git-credentials)")
    parser.add_argument("--ssh-key", type=Path, help="ssh private key (overrides --git-credentials); the host "
                        "must be in known_hosts (--git-credentials) or ~/.ssh/known_hosts")
    parser.add_argument("--ca-file", type=Path, help="CA bundle for an https git server with a private CA")


def from_args(args: argparse.Namespace) -> Auth:
    """The credentials the flags name; raise ValueError naming a flag whose file cannot be read."""
    if args.git_credentials is not None and not args.git_credentials.is_dir():
        raise ValueError(f"--git-credentials {args.git_credentials} is not a directory")
    base = Auth.from_dir(args.git_credentials) if args.git_credentials else Auth()
    for flag, value in (("--token-file", args.token_file), ("--ssh-key", args.ssh_key), ("--ca-file", args.ca_file)):
        if value is not None and not value.is_file():
            raise ValueError(f"{flag} {value} is not a readable file")
    return Auth(token=args.token_file.read_text().strip() if args.token_file else base.token,
                username=base.username, ssh_private_key=args.ssh_key or base.ssh_private_key,
                ssh_public_key=None if args.ssh_key else base.ssh_public_key, known_hosts=base.known_hosts,
                ca_file=args.ca_file or base.ca_file)
