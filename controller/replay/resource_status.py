"""The status of a TrafficReplay: what a run writes (Running with its target, then the verdict), and the
Ready condition and timestamps the controller writes too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from controller.api import (
    API_VERSION,
    FAILED,
    GOALS_MET,
    GOALS_NOT_MET,
    MOCKS_SERVED,
    REPLAY_FAILED,
    RUNNING,
    SUCCEEDED,
)
from controller.conditions import now, ready

if TYPE_CHECKING:
    from controller.replay.cli import Outcome

SUMMARY_KEYS = ("requests", "successRate", "p50Ms", "p95Ms", "p99Ms", "mismatches", "mockMatchRate")


class Writer:
    """Status bodies (for server-side apply) of one TrafficReplay."""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name

    def _body(self, status: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": "TrafficReplay",
                "metadata": {"name": self.name, "namespace": self.namespace}, "status": status}

    def running(self, generation: int, what: str, reason: str = RUNNING) -> dict[str, Any]:
        return self._body({"phase": RUNNING, "observedGeneration": generation, "startTime": now(),
                           "conditions": [ready(False, reason, what, generation)]})

    def mocks_served(self, generation: int, seconds: float, match_rate: float | None) -> dict[str, Any]:
        """A mocks-only replay that served its time; the match rate is of the requests the mocks saw."""
        summary = {} if match_rate is None else {"mockMatchRate": round(match_rate, 4)}
        return self._body({"phase": SUCCEEDED, "observedGeneration": generation, "finishTime": now(),
                           "summary": summary, "conditions": [ready(
                               True, MOCKS_SERVED, f"served mocks for {seconds:g}s", generation)]})

    def finished(self, generation: int, outcome: Outcome) -> dict[str, Any]:
        """Succeeded with the summary and report when the replay ran and met its goals; Failed with them and
        the reason (missed goals, first differing fields) when it missed them; Failed with the error when it
        did not run."""
        rep = outcome.report
        if rep is None:
            return self._body({"phase": FAILED, "observedGeneration": generation, "finishTime": now(),
                               "conditions": [ready(False, REPLAY_FAILED, outcome.error, generation)]})
        summary: dict[str, Any] = {k: rep["summary"][k] for k in SUMMARY_KEYS if rep["summary"].get(k) is not None}
        summary["goalsMet"] = bool(rep["goalsMet"])
        missed = [g for g in rep.get("goals", []) if not g.get("met")]
        if rep["goalsMet"]:
            condition = ready(True, GOALS_MET, outcome.error or "every goal met", generation)
        else:
            detail = "; ".join([f"{g.get('goal')}: {g.get('actual')} (limit {g.get('limit')})" for g in missed]
                               + differences(rep))
            condition = ready(False, GOALS_NOT_MET, "; ".join(filter(None, [outcome.error, detail]))
                              or "goals not met", generation)
        ref = {"id": rep["id"]}
        if outcome.where is not None:
            ref["path"] = str(outcome.where / "report.json")
        return self._body({"phase": SUCCEEDED if rep["goalsMet"] else FAILED, "observedGeneration": generation,
                           "finishTime": now(), "summary": summary, "reportRef": ref, "conditions": [condition]})


def differences(rep: dict[str, Any], most: int = 3) -> list[str]:
    """The first fields that differed from the recording, per endpoint (``GET /x: $.total: recorded 3, got
    2.7``), so a Failed replay names what changed."""
    out: list[str] = []
    for name, ep in (rep.get("endpoints") or {}).items():
        for example in ep.get("examples") or []:
            if example and len(out) < most:
                out.append(f"{name}: {example[0]}")
    return out
