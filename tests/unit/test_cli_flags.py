"""Flags added this far refuse bad values with a message naming the flag and the value."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@pytest.mark.parametrize(("args", "says"), [
    (("inspector", "serve", "--repo", "file:///x", "--port", "0"), "--port 0 is not a TCP port"),
    (("inspector", "serve", "--repo", "file:///x", "--author", "nobody"), "--author 'nobody' is not 'Name <email>'"),
    (("webhook", "serve", "--port", "8443", "--cert-dir", "/tmp/x", "--cert-sync-interval", "0"),
     "argument --cert-sync-interval: 0 is not between 0 and 86400 seconds"),
    (("webhook", "serve", "--port", "8443", "--cert-dir", "/tmp/x", "--cert-sync-interval", "soon"),
     "argument --cert-sync-interval: 'soon' is not a number of seconds"),
    (("replay", "--resource", "just-a-name"), "argument --resource: 'just-a-name' is not NAMESPACE/NAME"),
    (("replay", "snapshot-only"), "give SNAPSHOT and --target, or --resource NAMESPACE/NAME"),
    (("mock", "--listen", "9300"), "give SNAPSHOT, or --resource NAMESPACE/NAME"),
    (("controller", "run", "--repo", "$(REPLAYOPS_REPO)"),  # the manifests' env var, its ConfigMap missing
     "argument --repo: $(REPLAYOPS_REPO) was not set: in the cluster it comes from ConfigMap replayops-source"),
    (("inspector", "serve", "--repo", "$(REPLAYOPS_REPO)"), "kubectl -n replayops-system create configmap "
     "replayops-source --from-literal=repo=<git URL>"),
    (("inspector", "serve", "--repo", "file:///x", "--git-credentials", "/nonexistent"),
     "--git-credentials /nonexistent is not a directory"),
])
def test_bad_flags_are_refused_by_name(args: tuple[str, ...], says: str) -> None:
    out = cli(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert says in out.stderr


def test_each_command_is_registered_by_the_module_the_dispatch_table_names() -> None:
    from controller import cli as top

    def commands(parser: object) -> set[str]:
        action = next(a for a in parser._actions if a.dest == "command")  # type: ignore[attr-defined]
        return set(action.choices)
    assert commands(top.build_parser()) == set(top.COMMANDS)
    for command in top.COMMANDS:
        assert command in commands(top.build_parser(command)), command


def test_the_sidecar_command_loads_none_of_the_other_commands_libraries() -> None:
    probe = ("import sys, runpy; sys.argv = ['replayops', 'proxy', '--help']\n"
             "try:\n    runpy.run_module('controller.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    loaded = out.stdout.strip().splitlines()[-1]
    for heavy in ("kubernetes", "flask", "gunicorn", "aiohttp", "pygit2", "jsonschema"):
        assert f"'{heavy}'" not in loaded, f"replayops proxy loads {heavy}"


def test_the_sidecars_proxy_loads_only_the_mitmproxy_addons_it_runs() -> None:
    probe = ("import sys, mitmproxy\nimport controller.capture.proxy\n"
             "assert mitmproxy.addons is sys.modules['mitmproxy.addons'], 'mitmproxy.addons is not bound'\n"
             "import mitmproxy.addons.core\nassert mitmproxy.addons.core.Core\n"
             "print(sorted(sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded = set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))
    assert {"mitmproxy.addons.proxyserver", "mitmproxy.addons.next_layer"} <= loaded  # what the sidecar runs
    for unused in ("mitmproxy.addons.onboarding", "mitmproxy.addons.proxyauth", "httpx", "kubernetes", "flask"):
        assert unused not in loaded, f"the sidecar's proxy loads {unused}"


def test_a_forwarder_in_a_pod_that_cannot_read_the_cluster_refuses_to_start(tmp_path: Path) -> None:
    """In a pod (``KUBERNETES_SERVICE_HOST`` set) without a ServiceAccount token it would store batches with
    the built-in DLP only, none of their policies' rules: it says why and exits instead."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {
        "HOME": str(tmp_path), "REPLAYOPS_HOME": str(tmp_path), "REPLAYOPS_FORWARDER_TOKEN": "t",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    out = subprocess.run([sys.executable, "-m", "controller.cli", "forwarder", "--port", "1"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("replayops forwarder: cannot read CapturePolicies:"), out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("args", "prefix"), [
    (("controller", "run", "--repo", "file:///x"),
     "replayops controller run: no cluster access: no cluster to talk to"),
    (("webhook", "serve", "--port", "18443", "--cert-dir", "CERTS"), "replayops webhook serve: no cluster to talk to"),
    (("diff", "."), "replayops diff: no cluster to talk to"),
])
def test_without_any_kubeconfig_outside_a_cluster_a_command_says_so_in_one_line(
        args: tuple[str, ...], prefix: str, tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")} | {
        "HOME": str(tmp_path), "REPLAYOPS_HOME": str(tmp_path)}
    argv = [a.replace("CERTS", str(tmp_path / "certs")) for a in args]
    out = subprocess.run([sys.executable, "-m", "controller.cli", *argv], env=env, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.startswith(prefix) and len(out.stderr.strip().splitlines()) == 1, out.stderr
