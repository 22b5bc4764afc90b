"""Shared facts for the packaging checks: where the manifests live and how values files combine."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "csi-iscsi"
DEPLOY = REPO / "deploy"
E2E = REPO / "tests" / "e2e"
PACKAGING = Path(__file__).resolve().parent


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def overlay(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values files combine as `helm -f` does: maps merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def values_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def default_values() -> dict[str, Any]:
    values: dict[str, Any] = load_one(CHART / "values.yaml")
    return values


def shipped_manifests() -> list[Path]:
    """Plain Kubernetes manifests a user applies: deploy/ and its examples."""
    return sorted(DEPLOY.rglob("*.yaml"))
