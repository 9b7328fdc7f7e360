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
