"""The inspector's commits reach private remotes with the credentials the controller uses: https with a
token and a private CA, ssh with a key and known_hosts — nothing of them on a command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from controller.gitops import auth
from controller.gitops.auth import Auth
from controller.inspector.gitwrite import ChangeError, GitWriter
from tests.gitrepo import Repo, serve_https, serve_ssh

ROOT = Path(__file__).resolve().parents[2]

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: note, namespace: team}\ndata: {a: '1'}\n"


def remote(path: Path) -> Repo:
    repo = Repo(path)
    repo.commit("seed", {"README": "team"})
    repo.git("config", "receive.denyCurrentBranch", "updateInstead")
    return repo


def test_push_over_https_with_a_token_and_a_private_ca(tmp_path: Path) -> None:
    repo = remote(tmp_path / "root" / "team.git")
    port, server = serve_https(tmp_path / "root", "s3cret-token", tmp_path)
    try:
        url = f"https://127.0.0.1:{port}/team.git"
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "token").write_text("s3cret-token\n")
        (creds / "ca.crt").write_bytes((tmp_path / "git-ca.pem").read_bytes())
        commit = GitWriter(url, tmp_path / "work", auth=Auth.from_dir(creds)).change(
            "add a note", {"team/note.yaml": CONFIGMAP})
        assert repo.git("rev-parse", "HEAD") == commit.sha
        assert (repo.path / "team" / "note.yaml").read_text() == CONFIGMAP
        assert "s3cret-token" not in repo.git("config", "--list")  # nothing of it stored in the remote's config
        (creds / "token").write_text("guess")
        with pytest.raises(ChangeError, match="git fetch failed"):
            GitWriter(url, tmp_path / "work2", auth=Auth.from_dir(creds)).read()
        (creds / "token").write_text("s3cret-token")
        (creds / "ca.crt").unlink()
        with pytest.raises(ChangeError, match="certificate"):
            GitWriter(url, tmp_path / "work3", auth=Auth.from_dir(creds)).read()
    finally:
        server.shutdown()  # type: ignore[attr-defined]


def test_push_over_ssh_with_a_key_and_known_hosts(tmp_path: Path) -> None:
    repo = remote(tmp_path / "srv" / "team")
    with serve_ssh(tmp_path) as server:
        commit = GitWriter(server.url(repo.path), tmp_path / "work", auth=Auth.from_dir(server.credentials)).change(
            "add a note", {"team/note.yaml": CONFIGMAP})
        assert repo.git("rev-parse", "HEAD") == commit.sha
        (server.credentials / "known_hosts").write_text("")  # an unknown host is refused, never trusted on first use
        with pytest.raises(ChangeError, match="Host key verification failed"):
            GitWriter(server.url(repo.path), tmp_path / "work2", auth=Auth.from_dir(server.credentials)).read()


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    auth.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_override_the_secret_and_name_what_is_missing(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "username").write_text("bot\n")
    (creds / "password").write_text("from-secret\n")
    (tmp_path / "token").write_text("from-flag\n")
    assert auth.from_args(flags("--git-credentials", str(creds))) == Auth(token="from-secret", username="bot")
    got = auth.from_args(flags("--git-credentials", str(creds), "--token-file", str(tmp_path / "token")))
    assert (got.token, got.username) == ("from-flag", "bot")
    with pytest.raises(ValueError, match="--git-credentials .*missing is not a directory"):
        auth.from_args(flags("--git-credentials", str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="--ssh-key .*nokey is not a readable file"):
        auth.from_args(flags("--ssh-key", str(tmp_path / "nokey")))


def test_git_env_puts_the_token_in_a_header_config_never_in_the_url() -> None:
    env = Auth(token="t0k", username="bot", ca_file=Path("/ca.crt")).git_env()
    assert env["GIT_CONFIG_COUNT"] == "2"
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"] == "Authorization: Basic Ym90OnQwaw=="  # bot:t0k
    assert (env["GIT_CONFIG_KEY_1"], env["GIT_CONFIG_VALUE_1"]) == ("http.sslCAInfo", "/ca.crt")
    assert "StrictHostKeyChecking=yes" in env["GIT_SSH_COMMAND"]


def test_an_unreadable_credential_is_refused_at_start_naming_the_file(tmp_path: Path) -> None:
    """As in a pod without the fsGroup: the Secret's files are root's, mode 0440; the command says so in
    one line instead of failing each fetch."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to run the command as another user")
    import tempfile

    creds = Path(tempfile.mkdtemp(prefix="replayops-creds-", dir="/tmp"))  # reachable by the other user
    creds.chmod(0o755)
    (creds / "ssh-privatekey").write_text("key\n")
    (creds / "ssh-privatekey").chmod(0o440)
    out = subprocess.run(["setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", sys.executable, "-m",
                          "controller.cli", "controller", "run", "--repo", "file:///x", "--git-credentials",
                          str(creds)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (f"replayops controller run: {creds / 'ssh-privatekey'} is not readable by uid "
                                  "65532 gid 65532: in a pod the Secret's volume needs the pod's fsGroup (65532 "
                                  "in the manifests)")
    shutil.rmtree(creds)
