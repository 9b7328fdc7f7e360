"""The caches' pure parts: selectors they evaluate, which events wake the loop, which writes they keep."""

from __future__ import annotations

from typing import Any

from controller.kube.cache import Cache, metadata_only, parse_selector, spec_changed


def _obj(rv: str, **fields: Any) -> dict[str, Any]:
    meta = {"name": "web", "namespace": "shop", "resourceVersion": rv, "generation": 1,
            "labels": {"app": "web"}, **fields.pop("meta", {})}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, **fields}


def test_equality_selectors_are_parsed_and_others_left_to_the_api_server() -> None:
    assert parse_selector(None) == {} and parse_selector("") == {}
    assert parse_selector("a=b, c==d") == {"a": "b", "c": "d"}
    for other in ("a!=b", "a in (b,c)", "a", "!a"):
        assert parse_selector(other) is None, other


def test_status_and_bookkeeping_changes_wake_nobody() -> None:
    old = _obj("1", spec={"replicas": 1}, status={"readyReplicas": 0})
    assert not spec_changed(old, _obj("2", spec={"replicas": 1}, status={"readyReplicas": 1},
                                      meta={"managedFields": [{"manager": "kube-controller-manager"}]}))
    assert spec_changed(old, _obj("2", spec={"replicas": 2}, status={"readyReplicas": 0}, meta={"generation": 2}))
    assert spec_changed(old, _obj("2", spec={"replicas": 1}, meta={"labels": {"app": "web", "tier": "x"}}))
    assert spec_changed(old, _obj("2", spec={"replicas": 1}, meta={"deletionTimestamp": "2026-12-03T00:00:00Z"}))
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "1"},
          "data": {"a": "1"}}
    assert spec_changed(cm, {**cm, "metadata": {"name": "c", "resourceVersion": "2"}, "data": {"a": "2"}}), \
        "a kind without generation: its data is what changed"
    assert spec_changed(None, old) and spec_changed(old, None)


def test_a_write_is_kept_until_the_watch_brings_a_later_version() -> None:
    cache = Cache(None, "apps/v1", "Deployment")  # type: ignore[arg-type]  # never started: no watch
    cache._on_list([_obj("5")])
    cache.record(_obj("7", spec={"replicas": 3}))
    cache._on_event("MODIFIED", _obj("6", spec={"replicas": 2}))  # the watch is behind the write
    assert (cache.get("shop", "web") or {})["spec"] == {"replicas": 3}
    cache._on_event("MODIFIED", _obj("8", spec={"replicas": 4}))
    assert (cache.get("shop", "web") or {})["spec"] == {"replicas": 4}
    cache._on_event("DELETED", _obj("9"))
    assert cache.get("shop", "web") is None


def test_a_late_delete_a_ghost_write_and_an_old_relist_never_undo_what_is_known() -> None:
    cache = Cache(None, "apps/v1", "Deployment")  # type: ignore[arg-type]
    cache._on_list([_obj("5")], "5")
    cache.record(_obj("9", spec={"replicas": 1}))  # replaced: deleted at 8 and recreated at 9 by this client
    cache._on_event("DELETED", _obj("8"))  # the old object's delete arrives after the new one was recorded
    assert (cache.get("shop", "web") or {})["spec"] == {"replicas": 1}, "the recreated object stays"

    other = Cache(None, "apps/v1", "Deployment")  # type: ignore[arg-type]
    other._on_list([], "5")
    other._on_event("ADDED", _obj("6"))
    other._on_event("DELETED", _obj("7"))  # someone deleted it ...
    other.record(_obj("6", spec={"replicas": 2}))  # ... before this client's write of version 6 was recorded
    assert other.get("shop", "web") is None, "no ghost of a deleted object"

    cache._on_list([_obj("7", spec={"replicas": 0})], "7")  # a relist older than the recorded write
    assert (cache.get("shop", "web") or {})["spec"] == {"replicas": 1}
    cache._on_list([_obj("10", spec={"replicas": 5})], "10")
    assert (cache.get("shop", "web") or {})["spec"] == {"replicas": 5}


def test_a_write_recorded_after_a_relist_that_no_longer_has_it_is_no_ghost(monkeypatch: Any) -> None:
    import controller.kube.cache as cache_module

    cache = Cache(None, "apps/v1", "Deployment")  # type: ignore[arg-type]
    cache._on_list([_obj("5")], "5")
    cache._on_list([], "9")  # deleted at 8 while the watch was away; the relist lacks it
    cache.record(_obj("7"))  # this client's write of 7, recorded late
    assert cache.get("shop", "web") is None
    cache.record(_obj("10", meta={"name": "new"}))  # made after the list: kept
    assert cache.get("shop", "new") is not None

    monkeypatch.setattr(cache_module, "TOMBSTONE_SECONDS", -1.0)  # every tombstone is old at once
    for i in range(100):
        cache._on_event("DELETED", _obj(str(20 + i), meta={"name": f"pod-{i}"}))
    assert len(cache._gone) <= 1, "deletes are remembered for a while, not for the life of the controller"


def test_a_selected_cache_lists_what_it_covers_and_drops_an_object_that_left_its_selector() -> None:
    cache = Cache(None, "apps/v1", "Deployment", label_selector="app=web")  # type: ignore[arg-type]
    cache._on_list([_obj("1"), _obj("1", meta={"name": "api", "namespace": "other"})])
    assert cache.covers(None, {"app": "web", "x": "y"}) and not cache.covers(None, {})
    assert [o["metadata"]["name"] for o in cache.list("shop", {"app": "web"})] == ["web"]
    assert all(o["kind"] == "Deployment" for o in cache.list()), "a list's items name their kind in the cache"
    cache.record(_obj("2", meta={"labels": {"app": "db"}}))
    assert cache.get("shop", "web") is None


def test_a_pod_is_kept_as_its_metadata() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop", "labels": {"a": "b"},
                                                          "managedFields": [{}]},
           "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}}
    assert metadata_only(pod) == {"apiVersion": "v1", "kind": "Pod",
                                  "metadata": {"name": "p", "namespace": "shop", "labels": {"a": "b"}}}
