"""What a user does with the driver, on a real (kind) cluster: tests/e2e/run sets it up."""

from __future__ import annotations

import base64
import os

from kubernetes import client

from tests.e2e.kube import Kube, wait_for

WRITE = ("dd if=/dev/urandom of=/data/blob bs=1M count=16 && sync && "
         "sha256sum /data/blob | cut -d' ' -f1 > /data/sum && cat /data/sum")
READ = "sha256sum /data/blob | cut -d' ' -f1"


def test_pvc_binds_pod_writes_and_another_node_reads_the_same_data(kube: Kube, ns: str) -> None:
    first, second = kube.workers()[:2]
    kube.make_pvc(ns, "data", "1Gi")
    kube.run_pod(ns, "writer", "data", first, WRITE)
    pv = kube.wait_bound(ns, "data")
    kube.wait_phase(ns, "writer", "Succeeded")
    written = kube.logs(ns, "writer").strip()
    kube.delete_pod(ns, "writer")
    # The attachment to the first node goes before the second node's begins.
    wait_for("VolumeAttachment of the first node removed", lambda: kube.va_count(pv) == 0)
    kube.run_pod(ns, "reader", "data", second, READ)
    kube.wait_phase(ns, "reader", "Succeeded")
    assert kube.logs(ns, "reader").strip() == written


def test_expansion_reaches_the_filesystem(kube: Kube, ns: str) -> None:
    node = kube.workers()[0]
    kube.make_pvc(ns, "grow", "1Gi")
    kube.run_pod(ns, "before", "grow", node, WRITE)
    pv = kube.wait_bound(ns, "grow")
    kube.wait_phase(ns, "before", "Succeeded")
    written = kube.logs(ns, "before").strip()
    kube.delete_pod(ns, "before")
    wait_for("volume detached", lambda: kube.va_count(pv) == 0)
    # fileio grows offline: the controller expands while no node has the volume.
    kube.resize_pvc(ns, "grow", "2Gi")
    wait_for("PV at 2Gi", lambda: kube.core.read_persistent_volume(pv).spec.capacity["storage"] == "2Gi")
    kube.run_pod(ns, "after", "grow", node, "df -k /data | tail -n1 | awk '{print $2}'; " + READ)
    kube.wait_phase(ns, "after", "Succeeded")
    size_kib, checksum = kube.logs(ns, "after").split()
    assert int(size_kib) > 1_800_000, f"filesystem not grown: {size_kib} KiB"
    assert checksum == written, "data changed across the expansion"
    wait_for("PVC status at 2Gi", lambda: kube.pvc(ns, "grow").status.capacity["storage"] == "2Gi")


def test_block_mode_volume_is_a_raw_device(kube: Kube, ns: str) -> None:
    node = kube.workers()[0]
    kube.make_pvc(ns, "raw", "1Gi", block=True)
    script = ("head -c 4096 /dev/xvda | od -A n -t x1 | tr -d ' \\n' | grep -qv '[1-9a-f]' && echo blank; "
              "echo csi-iscsi-block | dd of=/dev/xvda bs=512 count=1 conv=fsync 2>/dev/null; "
              "dd if=/dev/xvda bs=15 count=1 2>/dev/null")
    kube.run_pod(ns, "blk", "raw", node, script, block=True)
    kube.wait_bound(ns, "raw")
    kube.wait_phase(ns, "blk", "Succeeded")
    out = kube.logs(ns, "blk")
    assert "blank" in out, f"a new block volume must not be formatted: {out!r}"
    assert "csi-iscsi-block" in out


def test_read_write_once_pod_keeps_a_second_pod_out(kube: Kube, ns: str) -> None:
    first, second = kube.workers()[:2]
    kube.make_pvc(ns, "solo", "1Gi", access="ReadWriteOncePod")
    kube.run_pod(ns, "holder", "solo", first, "sleep 600")
    kube.wait_bound(ns, "solo")
    kube.wait_phase(ns, "holder", "Running")
    kube.run_pod(ns, "intruder", "solo", second, "echo should-not-run")

    def unschedulable() -> bool:
        conditions = kube.core.read_namespaced_pod("intruder", ns).status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)
    wait_for("second pod refused by the scheduler", unschedulable, timeout=120)
    assert kube.core.read_namespaced_pod("intruder", ns).status.phase == "Pending"


def test_chap_volume_works_and_the_password_stays_out_of_logs(kube: Kube, ns: str) -> None:
    password = "e2e-" + base64.b32encode(os.urandom(10)).decode().lower()[:12]
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="csi-iscsi-e2e-chap"),
                             string_data={"chapUser": "e2e-user", "chapPassword": password})
    kube.core.create_namespaced_secret(kube.driver_namespace, secret)
    try:
        node = kube.workers()[0]
        kube.make_pvc(ns, "chap", "1Gi", storage_class="csi-iscsi-chap")
        kube.run_pod(ns, "chap-writer", "chap", node, WRITE)
        kube.wait_bound(ns, "chap")
        kube.wait_phase(ns, "chap-writer", "Succeeded")
        pods = kube.core.list_namespaced_pod(kube.driver_namespace).items
        for pod in pods:
            for c in pod.spec.containers:
                log = kube.core.read_namespaced_pod_log(pod.metadata.name, kube.driver_namespace, container=c.name)
                assert password not in log, f"CHAP password in the log of {pod.metadata.name}/{c.name}"
    finally:
        kube.core.delete_namespaced_secret("csi-iscsi-e2e-chap", kube.driver_namespace)


def test_deleting_the_pvc_leaves_nothing_on_the_target(kube: Kube, ns: str) -> None:
    node = kube.workers()[0]
    kube.make_pvc(ns, "gone", "1Gi")
    kube.run_pod(ns, "user", "gone", node, WRITE)
    pv = kube.wait_bound(ns, "gone")
    volume_id = kube.volume_handle(pv)
    kube.wait_phase(ns, "user", "Succeeded")
    assert volume_id in kube.on_target(["ls", "/sys/kernel/config/target/iscsi"])
    kube.delete_pod(ns, "user")
    kube.core.delete_namespaced_persistent_volume_claim("gone", ns)
    kube.wait_pv_gone(pv)
    assert volume_id not in kube.on_target(["ls", "/sys/kernel/config/target/iscsi"]), "target left in LIO"
    assert volume_id not in kube.on_target(["ls", "/var/lib/csi-iscsi/pool"]), "backing file left in the pool"
    assert kube.on_target(["sh", "-c", f"grep -rl {volume_id} /var/lib/csi-iscsi/controller || true"]).strip() == ""
    saved = kube.on_target(["sh", "-c", f"grep -c {volume_id} /etc/rtslib-fb-target/saveconfig.json || true"])
    assert saved.strip() == "0", "volume still in the saved LIO config"


def test_a_snapshot_restores_the_data_of_its_time_and_a_clone_copies_its_source(kube: Kube, ns: str) -> None:
    """The kind pool is fileio without reflink: a copy is consistent only of a volume no node has,
    so the writer is gone (and its VolumeAttachment) before the snapshot and the clone."""
    node = kube.workers()[0]
    kube.make_pvc(ns, "src", "1Gi")
    kube.run_pod(ns, "writer", "src", node, WRITE)
    pv = kube.wait_bound(ns, "src")
    kube.wait_phase(ns, "writer", "Succeeded")
    written = kube.logs(ns, "writer").strip()
    kube.delete_pod(ns, "writer")
    wait_for("volume detached", lambda: kube.va_count(pv) == 0)
    kube.make_snapshot(ns, "snap", "src")
    kube.wait_snapshot_ready(ns, "snap")
    # Written after the snapshot: the restore must not see it; the clone, made after, must.
    kube.run_pod(ns, "overwrite", "src", node, WRITE)
    kube.wait_phase(ns, "overwrite", "Succeeded")
    rewritten = kube.logs(ns, "overwrite").strip()
    kube.delete_pod(ns, "overwrite")
    wait_for("volume detached again", lambda: kube.va_count(pv) == 0)
    kube.make_pvc_from(ns, "restored", "2Gi", "VolumeSnapshot", "snap")
    kube.make_pvc_from(ns, "clone", "1Gi", "PersistentVolumeClaim", "src")
    kube.run_pod(ns, "read-restored", "restored", node, "df -k /data | tail -n1 | awk '{print $2}'; " + READ)
    kube.run_pod(ns, "read-clone", "clone", node, READ)
    kube.wait_phase(ns, "read-restored", "Succeeded")
    kube.wait_phase(ns, "read-clone", "Succeeded")
    size_kib, restored = kube.logs(ns, "read-restored").split()
    assert restored == written and rewritten != written
    assert int(size_kib) > 1_800_000, f"the 2Gi restore kept the 1Gi filesystem: {size_kib} KiB"
    assert kube.logs(ns, "read-clone").strip() == rewritten
    kube.delete_snapshot(ns, "snap")
