"""The controller plugin on real LIO, driven over its socket: volumes, ACLs, CHAP, persistence."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_iscsi import contract
from csi_iscsi.base.errors import Unavailable
from csi_iscsi.base.runner import SubprocessRunner
from csi_iscsi.chap import Chap
from csi_iscsi.contract import NodeId
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc
from csi_iscsi.host.attach import Attacher, AttachTimeouts
from csi_iscsi.host.iscsiadm import Iscsiadm, SessionSettings
from csi_iscsi.host.multipath import Multipath
from csi_iscsi.host.scsi import Scsi
from csi_iscsi.lio.objects import Lio

from .conftest import scrub_iscsi_and_lio
from .plugins import PORTALS, MiB, Plugin, controller_args, mount_cap, running

SAVEFILE = Path("/etc/rtslib-fb-target/saveconfig.json")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Path]]:
    pool = Path("/var/tmp/csi-iscsi-ctrl-pool")
    pool.mkdir(parents=True, exist_ok=True)
    state = Path("/var/lib/csi-iscsi-test/controller")
    paths = {"pool": pool, "state": state, "sock": tmp_path / "controller.sock", "log": tmp_path / "ctrl.log"}
    saved = SAVEFILE.read_bytes() if SAVEFILE.exists() else None
    yield paths
    # Whatever a failed test left: sessions, maps, our targets and storage objects, records, and the
    # system's saved LIO config as it was (a target restart would otherwise bring the leftovers back).
    scrub_iscsi_and_lio(pool_dirs=(pool,))
    subprocess.run(["rm", "-rf", str(state), str(pool)], check=False)
    if saved is None:
        SAVEFILE.unlink(missing_ok=True)
    else:
        SAVEFILE.write_bytes(saved)


def start(env: dict[str, Path], *extra: str) -> Iterator[Plugin]:
    return running([*controller_args(env["state"], [f"name=default,type=fileio,path={env['pool']}"], SAVEFILE),
                    *extra], env["sock"], env["log"])


def attacher(login_timeout: int = 5) -> Attacher:
    # detach=90: a detach after unpublish has cut the sessions finds the map queueing (the drop-in's
    # 180 s); with no usable path for half of it (45 s) it stops the queueing and then finishes.
    runner = SubprocessRunner()
    return Attacher(Iscsiadm(runner), Scsi(), Multipath(runner),
                    SessionSettings(login_timeout=login_timeout, login_retries=0, replacement_timeout=5),
                    AttachTimeouts(login=20, device=20, multipath_map=20, detach=90))


def create(plugin: Plugin, name: str, size: int = 64 * MiB, **params: str) -> csi_pb2.Volume:
    return plugin.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size),
        volume_capabilities=[mount_cap()], parameters=params), timeout=60).volume


def publish(plugin: Plugin, volume_id: str, node: NodeId, secrets: dict[str, str] | None = None,
            readonly: bool = False) -> dict[str, str]:
    return dict(plugin.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=str(node), volume_capability=mount_cap(), readonly=readonly,
        secrets=secrets or {}), timeout=60).publish_context)


def unpublish(plugin: Plugin, volume_id: str, node: NodeId) -> None:
    plugin.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume_id, node_id=str(node)), timeout=60)


def delete(plugin: Plugin, volume_id: str) -> None:
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=60)


def test_publish_lets_the_node_in_and_unpublish_cuts_it_off(env: dict[str, Path], initiator_iqn: str) -> None:
    me = NodeId("testbed", initiator_iqn)
    att = attacher()
    with start(env) as plugin:
        volume = create(plugin, "pvc-acl")
        ctx = dict(volume.volume_context)
        assert ctx["portals"] == ",".join(PORTALS) and ctx["lun"] == "0"
        pctx = publish(plugin, volume.volume_id, me)
        assert pctx["authentication"] == "none" and pctx["wwid"] == ctx["wwid"]
        attachment = att.attach(pctx["targetIQN"], PORTALS, 0, pctx["wwid"])
        assert len(attachment.paths) == 2
        with open(attachment.device, "rb") as dev:
            assert len(dev.read(4096)) == 4096
        unpublish(plugin, volume.volume_id, me)
        # The ACL is gone: the sessions are dropped, and a new login is refused. A reader that comes
        # after the cut (as udev's blkid can) holds the map open on queued I/O; the detach stops the
        # map's queueing once it has had no usable path for half of its bound, and removes everything.
        reader = subprocess.Popen(["dd", f"if={attachment.device}", "of=/dev/null", "bs=4096", "count=1",
                                   "skip=100", "iflag=direct"], stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert reader.poll() is None, "the reader was not held by the cut paths"  # it waits on queued I/O
        began = time.monotonic()
        att.detach(pctx["targetIQN"], 0, pctx["wwid"])
        took = time.monotonic() - began
        print(f"detach after the ACL was cut took {took:.1f} s")
        assert took < 90
        _, err = reader.communicate(timeout=10)
        assert reader.returncode != 0 and "Input/output error" in err, err  # no path was left to serve it
        assert not Path(attachment.device).exists()
        with pytest.raises(Unavailable, match="failed on every portal"):
            att.attach(pctx["targetIQN"], PORTALS, 0, pctx["wwid"])
        delete(plugin, volume.volume_id)
        assert not Lio().target_exists(pctx["targetIQN"])
        assert not (env["pool"] / f"{volume.volume_id}.img").exists()


def test_chap_is_required_and_a_wrong_password_is_refused(env: dict[str, Path], initiator_iqn: str) -> None:
    me = NodeId("testbed", initiator_iqn)
    secrets = {"chapUser": "testbed-user", "chapPassword": "right-password-123"}
    att = attacher()
    with start(env) as plugin:
        volume = create(plugin, "pvc-chap", authentication="chap")
        with pytest.raises(grpc.RpcError) as err:
            publish(plugin, volume.volume_id, me)  # no secret
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "chapPassword" in err.value.details()
        pctx = publish(plugin, volume.volume_id, me, secrets)
        assert pctx["authentication"] == "chap"
        with pytest.raises(Unavailable):
            att.attach(pctx["targetIQN"], PORTALS, 0, pctx["wwid"], Chap("testbed-user", "wrong-password-456"))
        attachment = att.attach(pctx["targetIQN"], PORTALS, 0, pctx["wwid"],
                                Chap("testbed-user", "right-password-123"))
        assert len(attachment.paths) == 2
        att.detach(pctx["targetIQN"], 0, pctx["wwid"])
        unpublish(plugin, volume.volume_id, me)
        delete(plugin, volume.volume_id)
    log = env["log"].read_text()
    assert "right-password-123" not in log and "wrong-password-456" not in log
    assert "ControllerPublishVolume request" in log


def test_everything_survives_a_controller_restart_and_a_target_service_restart(
        env: dict[str, Path], initiator_iqn: str) -> None:
    me = NodeId("testbed", initiator_iqn)
    with start(env) as plugin:
        ids = [create(plugin, f"pvc-keep-{i}", authentication="chap" if i == 0 else "none").volume_id
               for i in range(3)]
        secrets = {"chapUser": "keep-user", "chapPassword": "keep-password-1"}
        publish(plugin, ids[0], me, secrets)
        publish(plugin, ids[1], me, readonly=True)
    mode = stat.S_IMODE(os.stat(SAVEFILE).st_mode)
    assert mode == 0o600, oct(mode)
    saved = json.loads(SAVEFILE.read_text())
    assert {so["name"] for so in saved["storage_objects"]} >= set(ids)

    def check(plugin: Plugin) -> None:
        listed = plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=30).entries
        by_id = {e.volume.volume_id: list(e.status.published_node_ids) for e in listed}
        assert by_id == {ids[0]: [str(me)], ids[1]: [str(me)], ids[2]: []}
        lio = Lio()
        for vid in ids:
            assert lio.storage_object_exists(vid)
        assert lio.initiators(f"iqn.2026-11.io.csi-iscsi:{ids[0]}") == [initiator_iqn]
        assert lio.initiators(f"iqn.2026-11.io.csi-iscsi:{ids[2]}") == []

    with start(env) as plugin:
        check(plugin)
    # The target node's LIO service: stop clears configfs, start restores from the saved file.
    subprocess.run(["systemctl", "restart", "rtslib-fb-targetctl.service"], check=True)
    with start(env) as plugin:
        check(plugin)
        att = attacher()
        iqn = f"iqn.2026-11.io.csi-iscsi:{ids[0]}"
        ctx = {e.volume.volume_id: dict(e.volume.volume_context) for e in
               plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=30).entries}
        wwid = ctx[ids[0]]["wwid"]
        attachment = att.attach(iqn, PORTALS, 0, wwid, Chap("keep-user", "keep-password-1"))
        assert len(attachment.paths) == 2
        att.detach(iqn, 0, wwid)
        for vid in ids[:2]:
            unpublish(plugin, vid, me)
        for vid in ids:
            delete(plugin, vid)
    assert Lio().target_iqns("iqn.2026-11.io.csi-iscsi:") == []


def test_lio_lost_at_runtime_is_restored_at_controller_start(env: dict[str, Path], initiator_iqn: str) -> None:
    me = NodeId("testbed", initiator_iqn)
    with start(env) as plugin:
        vid = create(plugin, "pvc-drift").volume_id
        publish(plugin, vid, me)
    iqn = f"iqn.2026-11.io.csi-iscsi:{vid}"
    Lio().delete_target(iqn)  # someone removed the target behind the controller's back
    with start(env) as plugin:
        assert Lio().initiators(iqn) == [initiator_iqn]
        assert "restoring" in env["log"].read_text()
        unpublish(plugin, vid, me)
        delete(plugin, vid)


def expand(plugin: Plugin, volume_id: str, size: int) -> csi_pb2.ControllerExpandVolumeResponse:
    return plugin.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=size)), timeout=120)


def test_lvm_thin_volume_grows_online_and_the_initiator_sees_it(env: dict[str, Path], thin_vg: str,
                                                                initiator_iqn: str) -> None:
    me = NodeId("testbed", initiator_iqn)
    pools = [f"name=default,type=fileio,path={env['pool']}", f"name=thin,type=lvm-thin,vg={thin_vg},thinpool=thin"]
    att = attacher()
    scsi, multipath = Scsi(), Multipath(SubprocessRunner())
    with running(controller_args(env["state"], pools, SAVEFILE), env["sock"], env["log"]) as plugin:
        capacity = plugin.controller.GetCapacity(csi_pb2.GetCapacityRequest(parameters={"pool": "thin"}))
        assert 700 * MiB < capacity.available_capacity <= 800 * MiB
        volume = create(plugin, "pvc-thin", 64 * MiB, pool="thin")
        assert Path(f"/dev/{thin_vg}/{volume.volume_id}").exists()
        ctx = publish(plugin, volume.volume_id, me)
        attachment = att.attach(ctx["targetIQN"], PORTALS, 0, ctx["wwid"])
        assert multipath.size_bytes(ctx["wwid"]) == 64 * MiB
        reply = expand(plugin, volume.volume_id, 128 * MiB)
        assert reply.capacity_bytes == 128 * MiB and reply.node_expansion_required
        for path in attachment.paths:
            scsi.rescan(path)
            assert scsi.size_bytes(path) == 128 * MiB
        multipath.resize(ctx["wwid"])
        assert multipath.size_bytes(ctx["wwid"]) == 128 * MiB
        att.detach(ctx["targetIQN"], 0, ctx["wwid"])
        unpublish(plugin, volume.volume_id, me)
        delete(plugin, volume.volume_id)
        assert not Path(f"/dev/{thin_vg}/{volume.volume_id}").exists()
        after = plugin.controller.GetCapacity(csi_pb2.GetCapacityRequest(parameters={"pool": "thin"}))
        assert after.available_capacity == capacity.available_capacity


def test_fileio_volume_grows_offline_and_keeps_its_data(env: dict[str, Path], initiator_iqn: str) -> None:
    me = NodeId("testbed", initiator_iqn)
    att = attacher()
    multipath = Multipath(SubprocessRunner())
    with start(env) as plugin:
        volume = create(plugin, "pvc-grow", 64 * MiB)
        ctx = publish(plugin, volume.volume_id, me)
        attachment = att.attach(ctx["targetIQN"], PORTALS, 0, ctx["wwid"])
        marker = os.urandom(4096)
        with open(attachment.device, "r+b") as dev:
            dev.write(marker)
            dev.flush()
            os.fsync(dev.fileno())
        with pytest.raises(grpc.RpcError) as err:
            expand(plugin, volume.volume_id, 96 * MiB)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "offline" in err.value.details()
        att.detach(ctx["targetIQN"], 0, ctx["wwid"])
        unpublish(plugin, volume.volume_id, me)
        assert expand(plugin, volume.volume_id, 96 * MiB).capacity_bytes == 96 * MiB
        ctx = publish(plugin, volume.volume_id, me)
        attachment = att.attach(ctx["targetIQN"], PORTALS, 0, ctx["wwid"])
        assert multipath.size_bytes(ctx["wwid"]) == 96 * MiB
        with open(attachment.device, "rb") as dev:
            assert dev.read(4096) == marker
        att.detach(ctx["targetIQN"], 0, ctx["wwid"])
        unpublish(plugin, volume.volume_id, me)
        delete(plugin, volume.volume_id)


def test_mutual_chap_both_sides_prove_themselves(env: dict[str, Path], initiator_iqn: str) -> None:
    me = NodeId("testbed", initiator_iqn)
    secrets = {"chapUser": "init-user", "chapPassword": "init-password-1",
               "chapMutualUser": "target-user", "chapMutualPassword": "target-password-2"}
    att = attacher()
    with start(env) as plugin:
        volume = create(plugin, "pvc-mutual", authentication="mutual")
        pctx = publish(plugin, volume.volume_id, me, secrets)
        assert pctx["authentication"] == "mutual"
        # The initiator expects the target to prove a password it does not have: refused.
        with pytest.raises(Unavailable):
            att.attach(pctx["targetIQN"], PORTALS, 0, pctx["wwid"],
                       Chap("init-user", "init-password-1", "target-user", "not-the-target-pw"))
        attachment = att.attach(pctx["targetIQN"], PORTALS, 0, pctx["wwid"],
                                Chap("init-user", "init-password-1", "target-user", "target-password-2"))
        assert len(attachment.paths) == 2
        att.detach(pctx["targetIQN"], 0, pctx["wwid"])
        unpublish(plugin, volume.volume_id, me)
        delete(plugin, volume.volume_id)
    assert "target-password-2" not in env["log"].read_text()


def test_a_second_controller_on_the_same_state_waits_for_the_first(env: dict[str, Path], tmp_path: Path) -> None:
    """Finding 6 of issue 10: a replacement pod that starts during the old one's grace period must not
    drive configfs and the records beside it."""
    with start(env) as first:
        create(first, "pvc-owner")
        second_log = tmp_path / "second.log"
        args = controller_args(env["state"], [f"name=default,type=fileio,path={env['pool']}"], SAVEFILE)
        proc = subprocess.Popen([sys.executable, "-m", "csi_iscsi", args[0], "--endpoint",
                                 f"unix://{tmp_path}/second.sock", *args[1:]], stderr=open(second_log, "wb"))  # noqa: SIM115
        try:
            channel = grpc.insecure_channel(f"unix:{tmp_path}/second.sock")
            with pytest.raises(grpc.FutureTimeoutError):
                grpc.channel_ready_future(channel).result(timeout=15)
            assert "held by another process" in second_log.read_text()
            first.proc.terminate()
            first.proc.wait(timeout=60)
            first.killed_by_test = True  # stopped here, not by the context manager
            grpc.channel_ready_future(channel).result(timeout=90)
            listed = csi_pb2_grpc.ControllerStub(channel).ListVolumes(csi_pb2.ListVolumesRequest(), timeout=60)
            assert [e.volume.volume_id for e in listed.entries] == [contract.volume_id_for_name("pvc-owner")]
            channel.close()
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def test_zones_constrain_where_volumes_are_made_and_said_to_be_reachable(env: dict[str, Path]) -> None:
    key = contract.TOPOLOGY_KEY

    def wanted(requisite: list[str], preferred: list[str]) -> csi_pb2.TopologyRequirement:
        return csi_pb2.TopologyRequirement(
            requisite=[csi_pb2.Topology(segments={key: z}) for z in requisite],
            preferred=[csi_pb2.Topology(segments={key: z}) for z in preferred])

    def create_in(plugin: Plugin, name: str, requirement: csi_pb2.TopologyRequirement) -> csi_pb2.Volume:
        return plugin.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=64 * MiB),
            volume_capabilities=[mount_cap()], accessibility_requirements=requirement), timeout=60).volume

    with start(env, "--serve-zone", "rack-a", "--serve-zone", "rack-b") as plugin:
        volume = create_in(plugin, "pvc-zoned", wanted(["rack-b", "rack-c"], ["rack-b"]))
        assert [dict(t.segments) for t in volume.accessible_topology] == [{key: "rack-b"}]
        assert Lio().target_exists(volume.volume_context["targetIQN"])
        with pytest.raises(grpc.RpcError) as err:
            create_in(plugin, "pvc-unreachable", wanted(["rack-c"], ["rack-c"]))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        assert "rack-a" in err.value.details() and "rack-c" in err.value.details()
        unreachable = contract.volume_id_for_name("pvc-unreachable")
        assert not Lio().target_exists(contract.target_iqn(unreachable))
        assert sorted(p.name for p in env["pool"].iterdir()) == [f"{volume.volume_id}.img"]

        def capacity(zone: str) -> int:
            return int(plugin.controller.GetCapacity(csi_pb2.GetCapacityRequest(
                accessible_topology=csi_pb2.Topology(segments={key: zone})), timeout=30).available_capacity)
        # Two readings of a live filesystem: equal up to what the system wrote in between.
        assert capacity("rack-a") > 0 and abs(capacity("rack-a") - capacity("rack-b")) < 64 * MiB
        assert capacity("rack-c") == 0
        delete(plugin, volume.volume_id)


def test_volume_condition_names_what_was_broken_behind_the_controller(env: dict[str, Path],
                                                                      initiator_iqn: str) -> None:
    """ControllerGetVolume and ListVolumes read real LIO: a healthy CHAP volume, a read-only
    publish and an unpublished one are normal; an ACL, a portal, a write protection and a backing
    file broken by hand are each named; a publish again mends the ACL."""
    from rtslib_fb import NodeACL, RTSRoot

    me = NodeId("testbed", initiator_iqn)
    with start(env) as plugin:
        chap = create(plugin, "pvc-cond-chap", authentication="chap").volume_id
        ro, idle = create(plugin, "pvc-cond-ro").volume_id, create(plugin, "pvc-cond-idle").volume_id
        publish(plugin, chap, me, {"chapUser": "cond-user", "chapPassword": "cond-password-1"})
        publish(plugin, ro, me, readonly=True)

        def conditions() -> dict[str, csi_pb2.VolumeCondition]:
            listed = plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=60).entries
            got = {e.volume.volume_id: e.status.volume_condition for e in listed}
            for vid, condition in got.items():
                assert plugin.controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(
                    volume_id=vid), timeout=60).status.volume_condition == condition
            return got

        assert {v: (c.abnormal, c.message) for v, c in conditions().items()} == \
            {chap: (False, ""), ro: (False, ""), idle: (False, "")}

        root = RTSRoot()
        targets = {t.wwn: t for t in root.targets}
        tpg_chap = next(targets[contract.target_iqn(chap)].tpgs)
        NodeACL(tpg_chap, initiator_iqn, mode="lookup").delete()
        tpg_ro = next(targets[contract.target_iqn(ro)].tpgs)
        next(NodeACL(tpg_ro, initiator_iqn, mode="lookup").mapped_luns).write_protect = False
        tpg_idle = next(targets[contract.target_iqn(idle)].tpgs)
        next(tpg_idle.network_portals).delete()
        (env["pool"] / f"{idle}.img").unlink()

        got = conditions()
        print({v: c.message for v, c in got.items()})
        assert got[chap].abnormal and f"no ACL lets {initiator_iqn} in" in got[chap].message
        assert got[ro].abnormal and f"the ACL of {initiator_iqn} is writable" in got[ro].message
        assert got[idle].abnormal and "does not listen on portal" in got[idle].message
        assert "its data is missing from pool default" in got[idle].message
        assert "cond-password-1" not in env["log"].read_text()


        publish(plugin, chap, me, {"chapUser": "cond-user", "chapPassword": "cond-password-1"})
        assert not conditions()[chap].abnormal
        # The same, as an operator sees it on the target node (the controller's flags, reading only).
        argv = [sys.executable, "-m", "csi_iscsi", "status", "--side", "target", "--state-dir",
                str(env["state"]), "--pool", f"name=default,type=fileio,path={env['pool']}",
                *[f"--portal={p}" for p in PORTALS]]
        text = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        print(text.stdout)
        assert text.returncode == 1, text.stderr  # 1: a volume shown is abnormal
        assert f"acl {initiator_iqn}  node testbed  rw  CHAP" in text.stdout  # the CHAP volume, published again
        assert "data missing" in text.stdout and "does not listen on portal" in text.stdout
        assert "cond-password-1" not in text.stdout and "cond-user" not in text.stdout
        shown = json.loads(subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=120).stdout)
        views = {v["volume_id"]: v for v in shown["target"]["volumes"]}
        assert not views[chap]["abnormal"] and views[chap]["acls"][0]["chap"] is True
        assert views[idle]["data"] == "missing" and views[idle]["abnormal"]
        assert views[ro]["acls"][0]["readonly"] is False  # what LIO holds now: the write protection was lifted
        assert "cond-password-1" not in json.dumps(shown)
        for vid in (chap, ro):
            unpublish(plugin, vid, me)
        for vid in (chap, ro, idle):
            delete(plugin, vid)


def test_pool_metrics_scraped_match_lvm_and_get_capacity(env: dict[str, Path], thin_vg: str) -> None:
    """The controller's /metrics, scraped over HTTP: the thin pool's size and use are what lvs
    says, provisioned bytes count the volumes, available is GetCapacity's answer."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    pools = [f"name=thin,type=lvm-thin,vg={thin_vg},thinpool=thin"]
    args = [*controller_args(env["state"], pools, SAVEFILE), "--metrics-address", "127.0.0.1:19090"]
    with running(args, env["sock"], env["log"]) as plugin:
        vid = create(plugin, "pvc-metrics", 64 * MiB, pool="thin").volume_id
        with open(f"/dev/{thin_vg}/{vid}", "r+b") as dev:  # take thin pool blocks
            dev.write(os.urandom(16 * MiB))
            os.fsync(dev.fileno())
        create(plugin, "pvc-metrics-2", 32 * MiB, pool="thin")
        text = urllib.request.urlopen("http://127.0.0.1:19090/metrics", timeout=30).read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        lvs = subprocess.run(["lvs", "--noheadings", "--units", "b", "--nosuffix", "-o",
                              "lv_size,data_percent,metadata_percent", f"{thin_vg}/thin"],
                             capture_output=True, text=True, check=True).stdout.split()
        size, data, metadata = int(lvs[0]), float(lvs[1]), float(lvs[2])
        labels = (("pool", "thin"), ("type", "lvm-thin"))
        print({k: v for k, v in samples.items() if k[0].startswith(("csi_iscsi_pool", "csi_iscsi_thin"))})
        assert samples[("csi_iscsi_pool_size_bytes", labels)] == size
        assert samples[("csi_iscsi_thin_pool_data_ratio", (("pool", "thin"),))] == pytest.approx(data / 100, abs=0.005)
        assert data > 0
        assert samples[("csi_iscsi_thin_pool_metadata_ratio", (("pool", "thin"),))] == \
            pytest.approx(metadata / 100, abs=0.005)
        assert samples[("csi_iscsi_pool_provisioned_bytes", labels)] == 96 * MiB
        capacity = plugin.controller.GetCapacity(csi_pb2.GetCapacityRequest(parameters={"pool": "thin"}))
        assert samples[("csi_iscsi_pool_available_bytes", labels)] == capacity.available_capacity
        assert samples[("csi_iscsi_pool_scrape_error", (("pool", "thin"),))] == 0
        assert any(name == "csi_iscsi_rpc_duration_seconds_count" and dict(lab).get("method", "").endswith(
            "CreateVolume") for name, lab in samples)
        for entry in plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=60).entries:
            assert not entry.status.volume_condition.abnormal, entry
            delete(plugin, entry.volume.volume_id)
