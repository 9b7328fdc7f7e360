"""The control-plane build says what failed and what to do next."""

from __future__ import annotations

import pytest


def test_no_go_toolchain_is_one_clear_line_with_the_next_step(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from controller.devcluster import DevClusterError, ensure_binaries

    for name in ("TEST_ASSET_KUBE_APISERVER", "TEST_ASSET_KUBE_CONTROLLER_MANAGER", "TEST_ASSET_ETCD",
                 "KUBEBUILDER_ASSETS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DevClusterError) as err:
        ensure_binaries()
    assert "no Go toolchain" in str(err.value) and "KUBEBUILDER_ASSETS" in str(err.value)
    assert "KUBECONFIG" in str(err.value)


def test_a_node_part_that_fails_to_start_is_named_with_its_log_and_its_pid_is_recorded_for_teardown(
        tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """containerd (the node's first part) exits at once: ``dev up`` names it, what it waited for and the
    tail of its log, and the state file already holds its pid (a crash mid-start is still torn down).
    Only the failing part runs; nothing of the host is touched (the state file is this test's own)."""
    import json
    from pathlib import Path

    from controller.devcluster import DevClusterError, host
    from controller.devcluster.build import Binaries, NodeBinaries
    from controller.devcluster.cluster import DevCluster

    monkeypatch.setattr(host, "STATE_FILE", tmp_path / "node.json")
    parts = tmp_path / "containerd-bin"
    parts.mkdir()
    (parts / "containerd").write_text("#!/bin/sh\necho 'containerd: failed to load TOML: invalid plugin key' >&2\n"
                                      "exit 1\n")
    (parts / "containerd").chmod(0o755)
    none = Path("/nonexistent")
    binaries = NodeBinaries(kubelet=none, kube_scheduler=none, kube_proxy=none, containerd_bin=parts,
                            cni_bin=none, coredns=none, crictl=none)
    cluster = DevCluster(tmp_path, Binaries(none, none, none), node=binaries)
    assert cluster.node is not None
    state = host.HostState(workdir=str(tmp_path))
    with pytest.raises(DevClusterError) as err:
        cluster.node.start(cluster._spawn, state, timeout=60)
    message = str(err.value)
    assert message.startswith("containerd exited while waiting for containerd's socket"), message
    assert f"log {tmp_path / 'logs' / 'containerd.log'}:" in message
    assert "invalid plugin key" in message, "the tail of its log is shown"
    recorded = json.loads((tmp_path / "node.json").read_text())["pids"]
    assert recorded == {"containerd": cluster.procs[0].pid}


def test_a_node_without_its_host_tools_names_the_packages_before_touching_anything(
        tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from controller.devcluster import errors, host
    from controller.devcluster.build import Binaries, NodeBinaries
    from controller.devcluster.cluster import DevCluster
    from controller.devcluster.errors import MissingTools

    monkeypatch.setattr(host, "STATE_FILE", tmp_path / "node.json")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # none of nft, iptables, ip, runc
    monkeypatch.setattr(errors, "SYSTEM_DIRS", ())  # nor a system directory to find them in
    none = Path("/nonexistent")
    node = NodeBinaries(kubelet=none, kube_scheduler=none, kube_proxy=none, containerd_bin=none, cni_bin=none,
                        coredns=none, crictl=none)
    with pytest.raises(MissingTools) as err:
        DevCluster(tmp_path / "dev", Binaries(none, none, none), node=node).start()
    assert str(err.value) == ("missing iproute2, iptables, nftables, runc; install with: "
                              "apt-get install iproute2 iptables nftables runc")
    assert not (tmp_path / "dev").exists() and not (tmp_path / "node.json").exists()


def test_tools_in_the_system_directories_are_found_when_path_lacks_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A root shell from ``su`` (no ``-``) has no /usr/sbin on PATH, where nft, iptables and runc live."""
    import shutil

    from controller.devcluster.errors import MissingTools, require_tools

    if not shutil.which("nft", path="/usr/sbin:/sbin"):
        pytest.skip("nftables is not installed here (make test installs it)")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    require_tools({"nft": "nftables"})
    assert shutil.which("nft"), "found, and the directory put on PATH for the node's own calls"
    with pytest.raises(MissingTools, match="missing no-such-package; install with: apt-get install no-such-package"):
        require_tools({"no-such-tool": "no-such-package"})
