"""A real git repository for tests, driven by the git command line as a person would."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENV = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "Test",
       "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin:/usr/local/bin"}


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, env=ENV, check=True, capture_output=True,
                              text=True).stdout.strip()

    def write(self, name: str, text: str) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def commit(self, message: str, files: dict[str, str] | None = None) -> str:
        """Write ``files`` (path → text) and commit everything; return the sha."""
        for name, text in (files or {}).items():
            self.write(name, text)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def remove(self, name: str, message: str) -> str:
        self.git("rm", "-q", name)
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")


def serve_https(root: Path, token: str, cert_dir: Path, address: str = "127.0.0.1") -> tuple[int, object]:
    """A smart-HTTP git server over TLS (git http-backend behind Basic auth with ``token`` as password).
    Returns (port, server); call ``server.shutdown()`` when done."""
    import base64
    import os
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    from controller import pki

    ca = pki.make_ca("git-test-ca")
    (cert_dir / "git-ca.pem").write_bytes(ca.cert_pem)
    pki.issue(ca, "git", ips=(address,)).write(cert_dir / "git.crt", cert_dir / "git.key")

    class Handler(BaseHTTPRequestHandler):
        def _run(self) -> None:
            given = self.headers.get("Authorization", "")
            if not given.startswith("Basic ") or base64.b64decode(given[6:]).decode().split(":", 1)[-1] != token:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {**os.environ, "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
                   "PATH_INFO": url.path, "QUERY_STRING": url.query, "REQUEST_METHOD": self.command,
                   "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                   "REMOTE_USER": "git", "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
            out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode().split("\r\n"):
                name, _, value = line.partition(": ")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    headers.append((name, value))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _run  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((address, 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_dir / "git.crt", cert_dir / "git.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], server


@contextlib.contextmanager
def git_daemon(base: Path, address: str = "127.0.0.1", *, push: bool = False, port: int = 0) -> Iterator[int]:
    """``git daemon`` serving the repositories under ``base`` (``git://ADDRESS:PORT/<dir>``, accepting pushes
    with ``push``) until the block ends; yields the port (``port``, or a free one) once it accepts connections."""
    if not port:
        with socket.socket() as sock:
            sock.bind((address, 0))
            port = int(sock.getsockname()[1])
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
                               f"--listen={address}", f"--port={port}",
                               *(["--enable=receive-pack"] if push else []), str(base)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((address, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError(f"git daemon on {address}:{port} did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


@dataclass(frozen=True)
class SshServer:
    address: str
    port: int
    user: str
    credentials: Path  # as the README's Secret replayops-git mounts: ssh-privatekey, known_hosts (+ https's username)

    def url(self, repo: Path) -> str:
        """The URL names the ssh user, as ``git@host`` does."""
        return f"ssh://{self.user}@{self.address}:{self.port}{repo}"


@contextlib.contextmanager
def serve_ssh(work: Path, address: str = "127.0.0.1") -> Iterator[SshServer]:
    """An sshd on ``address`` that lets in one client key (git over ssh to any local path, as this user),
    until the block ends; ``credentials`` holds that key and the server's host key in ``known_hosts``, as
    the README's Secret does, and an https ``username`` that ssh must ignore."""
    import os
    import shutil

    if not shutil.which("sshd", path="/usr/sbin:/usr/bin") or not shutil.which("ssh-keygen"):
        import pytest

        pytest.skip("sshd or ssh-keygen missing: apt-get install openssh-server openssh-client (make test does)")
    keys, creds = work / "sshd", work / "git-credentials"
    keys.mkdir(parents=True)
    creds.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    with socket.socket() as s:
        s.bind((address, 0))
        port = s.getsockname()[1]
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress {address}\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {keys / 'sshd.pid'}\n")
    os.makedirs("/run/sshd", exist_ok=True)
    shutil.copyfile(keys / "client", creds / "ssh-privatekey")
    (creds / "ssh-privatekey").chmod(0o600)
    kind, key = (keys / "host.pub").read_text().split()[:2]
    (creds / "known_hosts").write_text(f"[{address}]:{port} {kind} {key}\n")
    (creds / "username").write_text("https-bot\n")  # the https user of the same Secret: ssh must not use it
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(keys / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection((address, port), timeout=1) as conn:
                    if conn.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or sshd.poll() is not None:
                raise RuntimeError(f"sshd on {address}:{port} did not start")
            time.sleep(0.1)
        yield SshServer(address, port, user, creds)
    finally:
        sshd.terminate()
        sshd.wait(10)
