"""Offline validation of our custom resources, driven by the CRDs in ``crds/``.

The CRDs' ``openAPIV3Schema`` is the single source of truth: this module
defaults an object as the apiserver does (structural defaults), checks it with
jsonschema under the same strictness as ``fieldValidation=Strict`` (unknown
fields are errors), and evaluates the ``x-kubernetes-validations`` CEL rules
with cel-python. Every error names the field path the apiserver would name.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
from ruamel.yaml import YAML

from controller import paths
from controller.api import GROUP, KINDS


def crds_dir() -> Path:
    """Where the CRDs live: ``crds/`` of the replayops tree."""
    return paths.source_dir("crds")


@dataclass(frozen=True)
class FieldError:
    """One violation: the field path (``spec.target.url``), the message and the rule kind."""

    path: str
    message: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@cache
def load_crds() -> tuple[dict[str, Any], ...]:
    """All CustomResourceDefinitions in ``crds_dir()``, parsed."""
    yaml = YAML(typ="safe")
    docs: list[dict[str, Any]] = []
    for path in sorted(crds_dir().glob("*.yaml")):
        docs.extend(d for d in yaml.load_all(path.read_text()) if d and d.get("kind") == "CustomResourceDefinition")
    return tuple(docs)


def _path(parts: Iterator[Any] | list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _strict(schema: Any) -> Any:
    """A jsonschema copy of a structural schema where objects with properties are closed."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        if "properties" in out and "metadata" in out["properties"]:
            out["properties"]["metadata"] = {"type": "object"}
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Fill structural ``default``s into ``value`` in place, as the apiserver does on write."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)
    return value


@cache
def _cel_program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_errors(schema: Mapping[str, Any], value: Any, path: list[Any]) -> Iterator[FieldError]:
    """Evaluate x-kubernetes-validations bottom-up, as the apiserver reports them."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                yield from _cel_errors(sub, value[name], [*path, name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _cel_errors(schema["items"], item, [*path, i])
    for check in schema.get("x-kubernetes-validations", ()):
        if "oldSelf" in check["rule"]:  # a transition rule: only the apiserver, on update, has the old object
            continue
        try:
            ok = _cel_program(check["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as exc:  # celpy raises its own evaluation errors
            yield FieldError(_path(path), f"rule {check['rule']!r} could not be evaluated: {exc}", "cel")
            continue
        if isinstance(ok, celpy.CELEvalError) or not bool(ok):
            message = check.get("message") or f"failed rule: {check['rule']}"
            yield FieldError(_path(path), message, "cel")


@cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_strict(schema_for(api_version, kind)))


def _schema_errors(validator: jsonschema.Draft202012Validator, obj: Any) -> Iterator[FieldError]:
    for err in validator.iter_errors(obj):
        parts = list(err.absolute_path)
        if err.validator == "required":
            missing = [p for p in err.validator_value if p not in err.instance]
            for name in missing:
                yield FieldError(_path([*parts, name]), "Required value", "required")
        elif err.validator == "additionalProperties":
            extra = set(err.instance) - set(err.schema.get("properties", {}))
            for name in sorted(extra):
                yield FieldError(_path([*parts, name]), "unknown field", "unknown-field")
        else:
            yield FieldError(_path(parts), err.message, str(err.validator))


@cache
def schema_for(api_version: str, kind: str) -> dict[str, Any] | None:
    """The openAPIV3Schema of one of our kinds, or None for any other kind."""
    group, _, version = api_version.partition("/")
    for crd in load_crds():
        spec = crd["spec"]
        if spec["group"] != group or spec["names"]["kind"] != kind:
            continue
        for ver in spec["versions"]:
            if ver["name"] == version:
                return ver["schema"]["openAPIV3Schema"]
    return None


def is_ours(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is one of the kinds our CRDs define (any served version)."""
    return str(obj.get("apiVersion", "")).startswith(GROUP + "/") and obj.get("kind") in KINDS


def validate(obj: Mapping[str, Any]) -> list[FieldError]:
    """Default a copy of ``obj`` and return every schema and CEL violation, with field paths (judged once
    per content: a revision's unchanged objects, a resync's, cost no CEL evaluation)."""
    return list(_validate_json(json.dumps(obj, sort_keys=True, default=str)))


@lru_cache(maxsize=8192)
def _validate_json(text: str) -> tuple[FieldError, ...]:
    return tuple(_validate(json.loads(text)))


def _validate(obj: Mapping[str, Any]) -> list[FieldError]:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    schema = schema_for(str(api_version), str(kind))
    if schema is None:
        return [FieldError("apiVersion", f"no schema for {kind} in {api_version}", "kind")]
    errors: list[FieldError] = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        errors.append(FieldError("metadata.name", "Required value", "required"))
    defaulted = apply_defaults(schema, copy.deepcopy(dict(obj)))
    errors.extend(_schema_errors(_validator(str(api_version), str(kind)), defaulted))
    if not errors:  # as the apiserver, CEL rules only judge objects of the right shape
        errors.extend(_cel_errors(schema, defaulted, []))
    return errors
