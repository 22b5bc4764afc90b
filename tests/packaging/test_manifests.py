"""Static checks of what users install, runnable without a cluster or helm."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from csi_iscsi import __version__
from csi_iscsi.cli import _parser
from tests.packaging.conftest import (
    CHART,
    DEPLOY,
    E2E,
    PACKAGING,
    REPO,
    default_values,
    load_all,
    load_one,
    overlay,
    shipped_manifests,
    values_schema,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema known.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
OWN_IMAGE = f"localhost/csi-iscsi:{__version__}"


def _yaml_files() -> list[Path]:
    files = [*shipped_manifests(), CHART / "Chart.yaml", CHART / "values.yaml", *sorted(E2E.glob("*.yaml")),
             *sorted((PACKAGING / "bad-values").glob("*.yaml"))]
    return [f for f in files if f.exists()]


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_manifest_and_values_file_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} holds no YAML document"


# The snapshot API is a CRD (external-snapshotter's snapshot.storage.k8s.io/v1), not in Kubernetes'
# own schemas: the fields of its openAPIV3Schema that the examples use, as strict as the others.
_NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": _NAME, "namespace": _NAME,
             "labels": {"type": "object"}, "annotations": {"type": "object"}}, "additionalProperties": False}
SNAPSHOT_SCHEMAS: dict[str, dict[str, Any]] = {
    "VolumeSnapshotClass": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "driver", "deletionPolicy"],
        "additionalProperties": False,
        "properties": {"apiVersion": {"const": "snapshot.storage.k8s.io/v1"}, "kind": {"const": "VolumeSnapshotClass"},
                       "metadata": _METADATA, "driver": {"type": "string"},
                       "deletionPolicy": {"enum": ["Delete", "Retain"]},
                       "parameters": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "VolumeSnapshot": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "snapshot.storage.k8s.io/v1"}, "kind": {"const": "VolumeSnapshot"},
            "metadata": _METADATA,
            "spec": {"type": "object", "required": ["source"], "additionalProperties": False, "properties": {
                "volumeSnapshotClassName": {"type": "string"},
                "source": {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
                           "properties": {"persistentVolumeClaimName": {"type": "string"},
                                          "volumeSnapshotContentName": {"type": "string"}}}}}}},
}
# The Prometheus Operator's PrometheusRule (monitoring.coreos.com/v1), also a CRD: the fields of its
# schema that deploy/examples/prometheusrule.yaml uses.
_RULE = {"type": "object", "required": ["expr"], "additionalProperties": False, "properties": {
    "alert": {"type": "string"}, "record": {"type": "string"}, "expr": {"type": "string"},
    "for": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                         "(([0-9]+)s)?(([0-9]+)ms)?)$"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}
_GROUP = {"type": "object", "required": ["name", "rules"], "additionalProperties": False,
          "properties": {"name": {"type": "string"}, "interval": {"type": "string"},
                         "rules": {"type": "array", "items": _RULE}}}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    **SNAPSHOT_SCHEMAS,
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {"type": "object", "additionalProperties": False, "properties": {"groups": {
                "type": "array", "items": _GROUP}}}}},
}
CRD_GROUPS = ("snapshot.storage.k8s.io/", "monitoring.coreos.com/")


@pytest.mark.parametrize("path", shipped_manifests(), ids=lambda p: str(p.relative_to(REPO)))
def test_deploy_validates_against_kubernetes_schemas(path: Path) -> None:
    for doc in load_all(path):
        if doc.get("apiVersion", "").startswith(CRD_GROUPS):
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelled_field() -> None:
    """Proves the check above would fail on the mistake it exists for."""
    daemonset = next(d for d in load_all(DEPLOY / "csi-iscsi.yaml") if d["kind"] == "DaemonSet")
    daemonset["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, K8S_VERSIONS[0], strict=True)


def test_values_yaml_passes_the_schema() -> None:
    schema = values_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(default_values(), schema)


def test_e2e_values_pass_the_schema() -> None:
    jsonschema.validate(overlay(default_values(), load_one(E2E / "values-kind.yaml")), values_schema())


@pytest.mark.parametrize("path", sorted((PACKAGING / "bad-values").glob("*.yaml")), ids=lambda p: p.stem)
def test_wrong_values_are_rejected_by_the_schema(path: Path) -> None:
    expect = re.search(r"^# expect: (\S+)", path.read_text(), re.M)
    assert expect, f"{path} must say which key the schema should name (# expect: KEY)"
    values = overlay(default_values(), load_one(path))
    errors = list(jsonschema.Draft7Validator(values_schema()).iter_errors(values))
    assert errors, f"{path.name} passed the schema"
    said = " ".join(f"{'/'.join(map(str, e.absolute_path))} {e.message}" for e in errors)
    assert expect.group(1) in said, f"{path.name}: errors do not mention {expect.group(1)}: {said}"


def _published() -> set[str]:
    lines = (PACKAGING / "published-images.txt").read_text().splitlines()
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


def _pod_images(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", spec) if doc.get("kind") != "Pod" else spec
    return [c["image"] for key in ("initContainers", "containers") for c in pod.get(key, []) or []]


def _shipped_image_refs() -> dict[str, str]:
    refs: dict[str, str] = {}
    for path in shipped_manifests():
        for doc in load_all(path):
            for image in _pod_images(doc):
                refs[image] = str(path.relative_to(REPO))
    values = default_values()
    refs[f"{values['image']['repository']}:{values['image']['tag']}"] = "values.yaml image"
    for name, sidecar in values["sidecars"].items():
        if isinstance(sidecar, dict) and "repository" in sidecar:
            for key in ("tag", "tagBeforeKube134"):
                if key in sidecar:
                    refs[f"{sidecar['repository']}:{sidecar[key]}"] = f"values.yaml sidecars.{name}.{key}"
    for node in load_one(E2E / "kind-config.yaml")["nodes"]:
        refs[node["image"]] = "tests/e2e/kind-config.yaml"
    for path in E2E.glob("*.py"):
        for image in re.findall(r'"((?:registry\.k8s\.io|docker\.io|localhost)/[^"\s]+)"', path.read_text()):
            refs[image] = str(path.relative_to(REPO))
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert base, "Dockerfile must pin its base in ARG BASE_IMAGE"
    refs[base.group(1)] = "Dockerfile"
    return refs


def test_every_image_reference_is_pinned_to_a_published_tag() -> None:
    published = _published()
    refs = _shipped_image_refs()
    assert len(refs) >= 8
    wrong = {}
    for ref, where in refs.items():
        name = ref.split("@")[0]
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            wrong[ref] = f"{where}: not pinned to a tag"
        elif ref != OWN_IMAGE and ref not in published:
            wrong[ref] = f"{where}: not in tests/packaging/published-images.txt"
    assert not wrong, wrong


def test_deploy_uses_the_chart_defaults() -> None:
    """Without helm the two cannot be rendered and compared; the facts that drift first can."""
    values = default_values()
    docs = {(d["kind"], d["metadata"]["name"]): d for d in load_all(DEPLOY / "csi-iscsi.yaml")}
    images = {img for d in docs.values() for img in _pod_images(d)}
    # deploy/ is for a cluster without the snapshot API: no csi-snapshotter (its enabled is auto),
    # and no health monitor (off by default).
    expected = {f"{s['repository']}:{s['tag']}" for s in values["sidecars"].values()
                if isinstance(s, dict) and "repository" in s and s.get("enabled", True) is True}
    assert expected | {OWN_IMAGE} == images
    assert ("CSIDriver", values["driverName"]) in docs
    assert {d["metadata"].get("labels", {}).get("app.kubernetes.io/version") for d in docs.values()} == {__version__}
    chart = load_one(CHART / "Chart.yaml")
    assert chart["appVersion"] == __version__ == values["image"]["tag"]


def _driver_argv(kind: str) -> list[str]:
    doc = next(d for d in load_all(DEPLOY / "csi-iscsi.yaml") if d["kind"] == kind)
    container = next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "csi-iscsi")
    env = {"HOST_IP": "192.0.2.10", "NODE_NAME": "worker-1"}
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container["args"]]


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet"])
def test_deploy_driver_args_are_flags_the_cli_accepts(kind: str) -> None:
    argv = _driver_argv(kind)
    args = _parser().parse_args(argv)
    assert args.mode == ("controller" if kind == "Deployment" else "node")
    assert args.endpoint == "unix:///csi/csi.sock"
    assert str(args.state_dir) == default_values()["stateDir"], shlex.join(argv)


def test_node_plugin_mounts_the_kubelet_dir_bidirectionally() -> None:
    ds = next(d for d in load_all(DEPLOY / "csi-iscsi.yaml") if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    driver = next(c for c in pod["containers"] if c["name"] == "csi-iscsi")
    kubelet = next(m for m in driver["volumeMounts"] if m["name"] == "kubelet-dir")
    assert kubelet["mountPropagation"] == "Bidirectional"
    assert driver["securityContext"]["privileged"] is True
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert "hostPath" in state, "stage state must outlive the pod"


def test_sidecars_run_without_privileges() -> None:
    for doc in load_all(DEPLOY / "csi-iscsi.yaml"):
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            if c["name"] != "csi-iscsi":
                ctx = c["securityContext"]
                assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"], c["name"]
