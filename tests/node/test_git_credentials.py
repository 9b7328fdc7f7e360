"""A private repository from a pod: the Secret ``replayops-git`` mounted as the manifests mount it (the
inspector's and the controller's volume, mode and fsGroup) lets the image fetch with pygit2 and push with
git, over https (token, private CA) and ssh (key, known_hosts) — as the user the image runs as."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from controller import paths
from controller.devcluster import host
from tests.gitrepo import Repo, serve_https, serve_ssh
from tests.node.conftest import NodeCluster, job_outcome, python_job

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: note, namespace: team}\ndata: {a: '1'}\n"


def shipped_pod(component: str, path: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The git-credentials volume, its mount and the pod securityContext of a Deployment as shipped."""
    from ruamel.yaml import YAML

    docs = YAML(typ="safe").load_all(paths.source_dir("manifests").joinpath(path).read_text())
    pod = next(d for d in docs if d and d["kind"] == "Deployment" and d["metadata"]["name"] == component)
    spec = pod["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "git-credentials")
    mount = next(m for c in spec["containers"] for m in c["volumeMounts"] if m["name"] == "git-credentials")
    args = next(c["args"] for c in spec["containers"])
    assert args[args.index("--git-credentials") + 1] == mount["mountPath"]
    return volume, mount, spec["securityContext"]


def test_the_shipped_credentials_volume_lets_the_image_fetch_and_push_over_https_and_ssh(
        node: NodeCluster, node_ns: str, tmp_path: Path) -> None:
    https_repo, ssh_repo = Repo(tmp_path / "srv" / "team.git"), Repo(tmp_path / "ssh" / "team")
    for repo in (https_repo, ssh_repo):
        repo.commit("seed", {"README": "team"})
        repo.git("config", "receive.denyCurrentBranch", "updateInstead")
    port, server = serve_https(tmp_path / "srv", "s3cret-token", tmp_path, host.NODE_IP)
    try:
        with serve_ssh(tmp_path, host.NODE_IP) as sshd:
            creds = {p.name: p.read_bytes() for p in sshd.credentials.iterdir()}
            creds |= {"token": b"s3cret-token", "ca.crt": (tmp_path / "git-ca.pem").read_bytes()}
            node.kube.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                             "metadata": {"name": "replayops-git", "namespace": node_ns},
                             "data": {k: base64.b64encode(v).decode() for k, v in creds.items()}})
            urls = {"https": f"https://{host.NODE_IP}:{port}/team.git", "ssh": sshd.url(ssh_repo.path)}
            for component, manifest in (("replayops-inspector", "components/inspector/inspector.yaml"),
                                        ("replayops-controller", "base/controller.yaml")):
                volume, mount, security = shipped_pod(component, manifest)
                code = f"""
                    import json, sys
                    from pathlib import Path
                    from controller.gitops.auth import Auth
                    from controller.gitops.source import GitSource
                    from controller.inspector.gitwrite import GitWriter
                    auth = Auth.from_dir(Path({mount["mountPath"]!r}))
                    for scheme, url in json.loads({json.dumps(urls)!r}).items():
                        seen = GitSource(url, cache=Path("/tmp/cache-" + scheme), auth=auth).fetch()
                        done = GitWriter(url, Path("/tmp/work-" + scheme), auth=auth).change(
                            "from " + scheme, {{"team/" + scheme + ".yaml": {CONFIGMAP!r}}})
                        print(scheme, seen.sha, done.sha)
                """
                job = python_job(component.removeprefix("replayops-"), node_ns, node.image, code)
                pod = job["spec"]["template"]["spec"]
                pod["securityContext"] |= {k: v for k, v in security.items() if k == "fsGroup"}
                pod["volumes"] = [volume]
                pod["containers"][0]["volumeMounts"] = [mount]
                node.kube.apply(job)
                ok, log = job_outcome(node, node_ns, job["metadata"]["name"], timeout=180)
                assert ok, f"{component}: {log}"
                for scheme, repo in (("https", https_repo), ("ssh", ssh_repo)):
                    assert f"team/{scheme}.yaml" in repo.git("ls-files"), (component, log)
                    line = next(ln for ln in log.splitlines() if ln.startswith(scheme + " "))
                    assert line.split()[2] == repo.git("rev-parse", "HEAD"), (component, log)
                https_repo.git("reset", "-q", "--hard", "HEAD~1")
                ssh_repo.git("reset", "-q", "--hard", "HEAD~1")
                assert "s3cret-token" not in log
    finally:
        server.shutdown()  # type: ignore[attr-defined]
