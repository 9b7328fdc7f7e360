"""The only layer that talks to the Kubernetes API (through the official client).

``connect`` builds a client from a kubeconfig; ``Kube`` offers the few verbs the
rest of replayops needs — server-side apply, get, list, delete, wait — on plain
dicts, and translates API errors into ``KubeError`` with the server's message.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError, ResourceNotFoundError

from controller.api import FIELD_MANAGER
from controller.kube import fence

if TYPE_CHECKING:
    from controller.kube.cache import Caches

# a hung apiserver fails the call (connect, read seconds) instead of blocking its caller for ever
REQUEST_TIMEOUT = (10.0, 60.0)
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
# the client retries only a connection that was never made (the request not sent); every other retry,
# honouring Retry-After, is the caller's, with its backoff — urllib3's own would sleep inside the call
RETRIES = urllib3.util.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=5,
                             respect_retry_after_header=False, raise_on_status=False)
API_ERRORS = (DynamicApiError, ApiException, urllib3.exceptions.HTTPError)
PAGE = 500  # objects per list call: a big list is paged (limit/continue), as client-go's pager does


class KubeError(RuntimeError):
    """An API call failed; ``status`` is the HTTP code (0: no answer) and ``reason`` the API reason.

    ``transient``: worth retrying (no answer, a timeout, 429, 5xx); ``retry_after``: the server's
    Retry-After, in seconds."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "", transient: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.transient = transient
        self.retry_after = retry_after


def _retry_after(exc: Exception) -> float | None:
    value = (getattr(exc, "headers", None) or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _translate(exc: Exception, what: str) -> KubeError:
    import json

    if isinstance(exc, urllib3.exceptions.HTTPError):  # refused, reset, timed out: no answer at all
        cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
        return KubeError(f"{what}: the API server did not answer: {cause}", reason="Unavailable", transient=True)
    status = getattr(exc, "status", 0) or 0
    body = getattr(exc, "body", None) or getattr(exc, "summary", lambda: "")()
    message, reason = str(body), ""
    try:
        parsed = json.loads(body) if isinstance(body, str | bytes) else {}
        message, reason = parsed.get("message", message), parsed.get("reason", "")
    except ValueError:
        pass
    return KubeError(f"{what}: {message[:2000]}", status=status, reason=reason,
                     transient=status in TRANSIENT_STATUS, retry_after=_retry_after(exc))


def connect(kubeconfig: str | Path | None = None) -> Kube:
    """A client from ``kubeconfig`` (or $KUBECONFIG / ~/.kube/config / in-cluster)."""
    cfg = client.Configuration()
    cfg.retries = RETRIES
    try:
        config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None,
                                client_configuration=cfg)
    except (config.ConfigException, OSError) as outside:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as inside:
            where = f"kubeconfig {kubeconfig}" if kubeconfig else "no kubeconfig ($KUBECONFIG, ~/.kube/config)"
            raise KubeError(f"no cluster to talk to: {where}: {outside}; not in a pod: {inside}") from None
    cfg.proxy = None
    return Kube(client.ApiClient(cfg))


class Kube:
    """Verbs on plain-dict objects, addressed by apiVersion and kind."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        fence.install(api.rest_client.pool_manager)
        self._dynamic: DynamicClient | None = None
        self.writes = 0  # write calls made (a no-op reconcile must make none)
        self.lists = 0  # list calls made to the API server (pages; lists a cache answered are not counted)
        self._caches: Caches | None = None
        self._parent: Kube | None = None  # the client this one impersonates through
        # called before every write: raises to refuse it, or says how many seconds the write may take
        self.fence: Callable[[], float | None] | None = None

    @property
    def dynamic(self) -> DynamicClient:
        """The dynamic client, made on first use: it asks the server for discovery, which may be away."""
        if self._dynamic is None:
            try:
                self._dynamic = DynamicClient(self.api)
            except API_ERRORS as exc:
                raise _translate(exc, "discovery") from exc
        return self._dynamic

    @property
    def caches(self) -> Caches | None:
        """Watch-backed caches that answer the lists and reads they cover (an impersonating client's are
        its parent's, whenever they are set)."""
        return self._parent.caches if self._parent is not None else self._caches

    @caches.setter
    def caches(self, caches: Caches | None) -> None:
        self._caches = caches

    def impersonating(self, user: str) -> Kube:
        """A client acting as ``user`` (``Impersonate-User``; the caller needs the ``impersonate`` verb on
        it): what that user may not do is refused by the API server, whatever this client's own rights. Its
        writes pass this client's fence."""
        import copy

        api = client.ApiClient(copy.copy(self.api.configuration))
        api.set_default_header("Impersonate-User", user)
        api.user_agent = self.api.user_agent
        other = Kube(api)
        other._parent = self  # its writes land in this client's caches
        other.fence = lambda: self.fence() if self.fence else None  # this client's, whenever it is set
        return other

    @contextlib.contextmanager
    def _writing(self) -> Iterator[tuple[float, float]]:
        """A write, counted: refused by the fence now and again right before its bytes leave (fence.py);
        its timeouts: a fenced write gives up by the fence's deadline (a quarter of what is left for the
        connect and for the read: with the connect retries, all of it)."""
        left = self.fence() if self.fence else None
        self.writes += 1
        token = fence.current.set(self.fence)
        try:
            yield REQUEST_TIMEOUT if left is None else (min(REQUEST_TIMEOUT[0], left / 4),
                                                        min(REQUEST_TIMEOUT[1], left / 4))
        finally:
            fence.current.reset(token)

    def resource(self, api_version: str, kind: str) -> Any:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError as exc:
            raise KubeError(f"the server has no resource for {kind} in {api_version}", status=404) from exc
        except API_ERRORS as exc:  # discovery itself failed
            raise _translate(exc, f"discover {kind} in {api_version}") from exc

    def invalidate_discovery(self) -> None:
        """Forget cached discovery (after CRDs change)."""
        self.dynamic.resources.invalidate_cache()

    def call(self, method: str, path: str, *, body: Any = None, query: Iterable[tuple[str, Any]] = (),
             content_type: str = "application/json", what: str = "") -> dict[str, Any]:
        """One raw API call with any query parameters (the dynamic client drops some, e.g.
        ``fieldValidation``); returns the decoded JSON body, raises KubeError."""
        import json

        write = method != "GET" and not any(k == "dryRun" for k, _ in query)
        with self._writing() if write else contextlib.nullcontext(REQUEST_TIMEOUT) as timeout:
            request = self.api.param_serialize(
                method, path, query_params=list(query),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body, auth_settings=["BearerToken"])
            try:
                resp = self.api.call_api(*request, _request_timeout=timeout)
                resp.read()
                if not 200 <= resp.status <= 299:
                    self.api.response_deserialize(resp, {})
            except (ApiException, urllib3.exceptions.HTTPError) as exc:
                raise _translate(exc, what or f"{method} {path}") from exc
        return json.loads(resp.data or b"{}")  # type: ignore[no-any-return]

    def apply(self, obj: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER, force: bool = True,
              dry_run: bool = False, field_validation: str = "Strict") -> dict[str, Any]:
        """Server-side apply ``obj``; return the object the server stored (or would store)."""
        meta = obj.get("metadata", {})
        res = self.resource(obj["apiVersion"], obj["kind"])
        query = [("fieldManager", field_manager), ("force", str(force).lower()),
                 ("fieldValidation", field_validation)] + ([("dryRun", "All")] if dry_run else [])
        return self._record(self.call(
            "PATCH", res.path(name=meta.get("name"), namespace=meta.get("namespace")), body=dict(obj), query=query,
            content_type="application/apply-patch+yaml", what=f"apply {obj['kind']} {_ref(meta)}"), dry_run)

    def _record(self, stored: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        """What the server stored, recorded in the caches (before their watch brings it)."""
        if self.caches is not None and not dry_run and stored.get("metadata"):
            self.caches.record(stored)
        return stored

    def create(self, obj: Mapping[str, Any], *, field_validation: str = "Strict") -> dict[str, Any]:
        meta = obj.get("metadata", {})
        res = self.resource(obj["apiVersion"], obj["kind"])
        return self._record(self.call("POST", res.path(namespace=meta.get("namespace")), body=dict(obj),
                                      query=[("fieldValidation", field_validation)],
                                      what=f"create {obj['kind']} {_ref(meta)}"))

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None when it does not exist (from a ready cache of the whole kind when there is one)."""
        if self.caches is not None and (found := self.caches.serving(api_version, kind, namespace, None)):
            return found[0].get(namespace or "", name)
        try:
            return self.resource(api_version, kind).get(  # type: ignore[no-any-return]
                name=name, namespace=namespace, _request_timeout=REQUEST_TIMEOUT).to_dict()
        except NotFoundError:
            return None
        except API_ERRORS as exc:
            raise _translate(exc, f"get {kind} {namespace}/{name}") from exc

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind (in ``namespace``, matching ``label_selector``): from a ready cache that
        covers the list, else from the API server, page by page. Cached objects are shared: read only."""
        if self.caches is not None and (found := self.caches.serving(api_version, kind, namespace, label_selector)):
            cache, selector = found
            return cache.list(namespace, selector)
        return [item for page in self.pages(api_version, kind, namespace, label_selector) for item in page["items"]]

    def pages(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
              ) -> Iterable[dict[str, Any]]:
        """A list from the API server, one page (a dict with ``items`` and ``metadata``) at a time."""
        res = self.resource(api_version, kind)
        token: str | None = None
        while True:
            self.lists += 1
            try:
                page = res.get(namespace=namespace, label_selector=label_selector, limit=PAGE, _continue=token,
                               _request_timeout=REQUEST_TIMEOUT).to_dict()
            except API_ERRORS as exc:
                raise _translate(exc, f"list {kind} in {namespace or 'all namespaces'}") from exc
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def apply_status(self, obj: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply ``obj['status']`` through the status subresource."""
        meta = obj["metadata"]
        res = self.resource(obj["apiVersion"], obj["kind"])
        body = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                "metadata": {"name": meta["name"], "namespace": meta.get("namespace")}, "status": obj["status"]}
        path = res.path(name=meta["name"], namespace=meta.get("namespace")) + "/status"
        return self._record(self.call(
            "PATCH", path, body=body, query=[("fieldManager", field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml", what=f"apply status of {obj['kind']} {_ref(meta)}"))

    def event(self, regarding: Mapping[str, Any], *, reason: str, message: str, type_: str = "Normal",
              component: str = FIELD_MANAGER) -> None:
        """Record a Kubernetes Event about ``regarding`` (an object with apiVersion, kind and metadata)."""
        import datetime as dt
        import uuid

        meta = regarding["metadata"]
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                              "namespace": meta.get("namespace") or "default"},
                 "involvedObject": {"apiVersion": regarding["apiVersion"], "kind": regarding["kind"],
                                    "name": meta["name"], "namespace": meta.get("namespace"),
                                    "uid": meta.get("uid")},
                 "reason": reason, "message": message[:1024], "type": type_, "firstTimestamp": now,
                 "lastTimestamp": now, "count": 1, "source": {"component": component}}
        self.create(event)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete the object; False when it was already gone."""
        res = self.resource(api_version, kind)  # discovery first: the fence's time is the request's
        try:
            with self._writing() as timeout:
                res.delete(name=name, namespace=namespace, propagation_policy="Background",
                           _request_timeout=timeout)
            found = True
        except NotFoundError:
            found = False
        except API_ERRORS as exc:
            raise _translate(exc, f"delete {kind} {namespace}/{name}") from exc
        if self.caches is not None:  # its watch's DELETED (or a finalizer's MODIFIED) follows
            self.caches.forget(api_version, kind, name, namespace)
        return found

    def own_image(self) -> str | None:
        """In a pod ($POD_NAME, $POD_NAMESPACE from the downward API): its first container's image, which
        kustomize ``images:`` set; None elsewhere or when the pod cannot be read."""
        name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not (name and namespace):
            return None
        try:
            pod = self.get("v1", "Pod", name, namespace)
        except KubeError:
            return None
        return str(pod["spec"]["containers"][0]["image"]) if pod else None

    def wait_for(self, what: str, check: Any, timeout: float = 60.0, interval: float = 0.2) -> Any:
        """Poll ``check()`` until it returns a truthy value; raise KubeError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise KubeError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def install_crds(self, crds: Iterable[Mapping[str, Any]], timeout: float = 60.0) -> None:
        """Apply CRDs and wait until each is Established and served."""
        names, crds_list = [], list(crds)
        for crd in crds_list:
            self.apply(crd)
            names.append(crd["metadata"]["name"])
        for name in names:
            self.wait_for(f"CRD {name} to be Established",
                          lambda n=name: _established(self.get("apiextensions.k8s.io/v1",
                                                               "CustomResourceDefinition", n)),
                          timeout)
        self.invalidate_discovery()
        for crd in crds_list:  # Established is not yet served: storage may still be (re)initializing
            spec = crd["spec"]
            version = next((v for v in spec["versions"] if v.get("storage")), spec["versions"][0])["name"]
            api = f"{spec['group']}/{version}"
            self.wait_for(f"{spec['names']['kind']} to be listable", lambda a=api, k=spec["names"]["kind"]:
                          self._listable(a, k), timeout)

    def _listable(self, api_version: str, kind: str) -> bool:
        try:
            self.list(api_version, kind)
        except KubeError:
            return False
        return True


def _established(crd: Mapping[str, Any] | None) -> bool:
    conditions = (crd or {}).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _ref(meta: Mapping[str, Any]) -> str:
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))
