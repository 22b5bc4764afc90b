"""A thin layer over the kubernetes client for the e2e tests: create, wait, exec, clean up."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 300.0, every: float = 2.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Kube:
    def __init__(self, kubeconfig: str, driver_namespace: str) -> None:
        api = config.new_client_from_config(config_file=kubeconfig)
        self.api = api
        self.core = client.CoreV1Api(api)
        self.storage = client.StorageV1Api(api)
        self.driver_namespace = driver_namespace

    # Cluster facts -----------------------------------------------------------------------
    def workers(self) -> list[str]:
        nodes = self.core.list_node().items
        names = [n.metadata.name for n in nodes
                 if "node-role.kubernetes.io/control-plane" not in (n.metadata.labels or {})]
        assert len(names) >= 2, f"the e2e cluster needs two workers, found {names}"
        return sorted(names)

    def controller_pod(self) -> str:
        pods = self.core.list_namespaced_pod(self.driver_namespace,
                                             label_selector="app.kubernetes.io/component=controller").items
        running = [p.metadata.name for p in pods if p.status.phase == "Running"]
        assert len(running) == 1, f"expected one running controller pod, found {running}"
        return str(running[0])

    # Namespaces ---------------------------------------------------------------------------
    def make_namespace(self) -> str:
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name

    def delete_namespace(self, name: str) -> None:
        self.core.delete_namespace(name)
        wait_for(f"namespace {name} deleted", lambda: self._gone(lambda: self.core.read_namespace(name)))

    # Claims -------------------------------------------------------------------------------
    def make_pvc(self, ns: str, name: str, size: str, storage_class: str = "csi-iscsi", *,
                 block: bool = False, access: str = "ReadWriteOnce") -> None:
        spec = client.V1PersistentVolumeClaimSpec(
            access_modes=[access], storage_class_name=storage_class,
            volume_mode="Block" if block else "Filesystem",
            resources=client.V1VolumeResourceRequirements(requests={"storage": size}))
        self.core.create_namespaced_persistent_volume_claim(
            ns, client.V1PersistentVolumeClaim(metadata=client.V1ObjectMeta(name=name), spec=spec))

    def make_pvc_from(self, ns: str, name: str, size: str, kind: str, source: str,
                      storage_class: str = "csi-iscsi") -> None:
        """A claim made from a VolumeSnapshot (kind "VolumeSnapshot") or another claim ("PersistentVolumeClaim")."""
        group = "snapshot.storage.k8s.io" if kind == "VolumeSnapshot" else None
        spec = client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"], storage_class_name=storage_class,
            data_source=client.V1TypedLocalObjectReference(api_group=group, kind=kind, name=source),
            resources=client.V1VolumeResourceRequirements(requests={"storage": size}))
        self.core.create_namespaced_persistent_volume_claim(
            ns, client.V1PersistentVolumeClaim(metadata=client.V1ObjectMeta(name=name), spec=spec))

    def make_snapshot(self, ns: str, name: str, claim: str, snapshot_class: str = "csi-iscsi") -> None:
        body = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": name},
                "spec": {"volumeSnapshotClassName": snapshot_class,
                         "source": {"persistentVolumeClaimName": claim}}}
        client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            "snapshot.storage.k8s.io", "v1", ns, "volumesnapshots", body)

    def wait_snapshot_ready(self, ns: str, name: str) -> dict[str, Any]:
        objects = client.CustomObjectsApi(self.api)

        def probe() -> dict[str, Any] | None:
            snap = objects.get_namespaced_custom_object("snapshot.storage.k8s.io", "v1", ns, "volumesnapshots", name)
            return snap if (snap.get("status") or {}).get("readyToUse") else None
        return wait_for(f"VolumeSnapshot {ns}/{name} ready", probe)

    def delete_snapshot(self, ns: str, name: str) -> None:
        client.CustomObjectsApi(self.api).delete_namespaced_custom_object(
            "snapshot.storage.k8s.io", "v1", ns, "volumesnapshots", name)

    def pvc(self, ns: str, name: str) -> Any:
        return self.core.read_namespaced_persistent_volume_claim(name, ns)

    def wait_bound(self, ns: str, name: str) -> str:
        """The PV name once the claim is bound."""
        return wait_for(f"PVC {ns}/{name} bound",
                        lambda: self.pvc(ns, name).spec.volume_name if self.pvc(ns, name).status.phase == "Bound"
                        else None)

    def volume_handle(self, pv: str) -> str:
        return str(self.core.read_persistent_volume(pv).spec.csi.volume_handle)

    def resize_pvc(self, ns: str, name: str, size: str) -> None:
        self.core.patch_namespaced_persistent_volume_claim(
            name, ns, {"spec": {"resources": {"requests": {"storage": size}}}})

    def wait_pv_gone(self, pv: str) -> None:
        wait_for(f"PV {pv} deleted", lambda: self._gone(lambda: self.core.read_persistent_volume(pv)))

    # Pods ---------------------------------------------------------------------------------
    def run_pod(self, ns: str, name: str, claim: str, node: str, script: str, *, block: bool = False) -> None:
        container = client.V1Container(name="c", image=BUSYBOX, command=["sh", "-c", script])
        if block:
            container.volume_devices = [client.V1VolumeDevice(name="v", device_path="/dev/xvda")]
        else:
            container.volume_mounts = [client.V1VolumeMount(name="v", mount_path="/data")]
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(
                containers=[container], restart_policy="Never", termination_grace_period_seconds=1,
                node_selector={"kubernetes.io/hostname": node},
                volumes=[client.V1Volume(name="v", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=claim))]))
        self.core.create_namespaced_pod(ns, pod)

    def wait_phase(self, ns: str, name: str, *phases: str, timeout: float = 300.0) -> str:
        def probe() -> str | None:
            phase = self.core.read_namespaced_pod(name, ns).status.phase
            if phase == "Failed" and "Failed" not in phases:
                raise AssertionError(f"pod {ns}/{name} failed: {self.logs(ns, name)}")
            return str(phase) if phase in phases else None
        return wait_for(f"pod {ns}/{name} in {phases}", probe, timeout)

    def logs(self, ns: str, name: str) -> str:
        return str(self.core.read_namespaced_pod_log(name, ns))

    def delete_pod(self, ns: str, name: str) -> None:
        self.core.delete_namespaced_pod(name, ns)
        wait_for(f"pod {ns}/{name} deleted", lambda: self._gone(lambda: self.core.read_namespaced_pod(name, ns)))

    def pod_events(self, ns: str, name: str) -> list[str]:
        events = self.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        return [f"{e.reason}: {e.message}" for e in events]

    def exec(self, ns: str, pod: str, command: list[str], container: str | None = None) -> str:
        return str(stream(self.core.connect_get_namespaced_pod_exec, pod, ns, command=command, container=container,
                          stderr=True, stdin=False, stdout=True, tty=False))

    def on_target(self, command: list[str]) -> str:
        return self.exec(self.driver_namespace, self.controller_pod(), command, container="csi-iscsi")

    def va_count(self, pv: str) -> int:
        attachments = self.storage.list_volume_attachment().items
        return sum(1 for va in attachments if va.spec.source.persistent_volume_name == pv)

    @staticmethod
    def _gone(read: Callable[[], object]) -> bool:
        try:
            read()
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False
