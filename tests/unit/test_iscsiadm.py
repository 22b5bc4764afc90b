from __future__ import annotations

import pytest

from csi_iscsi.base.runner import CommandFailed
from csi_iscsi.chap import Chap
from csi_iscsi.host.iscsiadm import Iscsiadm, SessionSettings
from tests.fakes import FakeRunner

IQN = "iqn.2026-11.io.csi-iscsi:csi-" + "a" * 32
PORTAL = "127.0.0.11:3260"


def test_create_node_makes_one_record_with_manual_startup_and_scan() -> None:
    runner = FakeRunner()
    Iscsiadm(runner).create_node(IQN, PORTAL, SessionSettings(replacement_timeout=7))
    assert runner.calls[0] == ("iscsiadm", "-m", "node", "-T", IQN, "-p", PORTAL, "-o", "new")
    assert len(runner.calls) == 2  # one record, one update with every setting
    update = runner.calls[1]
    updates = {update[i + 1]: update[i + 3] for i in range(update.index("update") + 1, len(update), 4)}
    assert updates["node.startup"] == "manual"
    assert updates["node.session.scan"] == "manual"
    assert updates["node.session.timeo.replacement_timeout"] == "7"
    assert updates["node.session.auth.authmethod"] == "None"
    assert not any("discovery" in " ".join(c) for c in runner.calls)


def test_records_are_bound_to_an_iface_presenting_the_nodes_iqn() -> None:
    runner = FakeRunner()
    runner.on(["iscsiadm", "-m", "iface"], stdout="default tcp,<empty>,<empty>,<empty>,<empty>\n", times=1)
    iscsiadm = Iscsiadm(runner)
    settings = SessionSettings(initiator_name="iqn.2026-11.test:node-a")
    iface = settings.iface
    assert iface.startswith("csi-") and iface == SessionSettings(initiator_name="iqn.2026-11.test:node-a").iface
    iscsiadm.create_node(IQN, PORTAL, settings)
    iscsiadm.create_node(IQN, "127.0.0.12:3260", settings)
    iscsiadm.login(IQN, PORTAL, timeout=5, iface=iface)
    calls = [" ".join(c) for c in runner.calls]
    assert calls[:4] == ["iscsiadm -m iface", f"iscsiadm -m iface -I {iface} -o new",
                         f"iscsiadm -m iface -I {iface} -o update -n iface.transport_name -v tcp",
                         f"iscsiadm -m iface -I {iface} -o update -n iface.initiatorname -v iqn.2026-11.test:node-a"]
    assert sum("-m iface" in c for c in calls) == 4, "the iface is made once per process"
    assert f"iscsiadm -m node -T {IQN} -p {PORTAL} -I {iface} -o new" in calls
    assert calls[-1] == f"iscsiadm -m node -T {IQN} -p {PORTAL} -I {iface} --login"
    assert SessionSettings().iface == ""


def test_chap_values_are_declared_secret_to_the_runner() -> None:
    runner = FakeRunner()
    Iscsiadm(runner).create_node(IQN, PORTAL, SessionSettings(), Chap("u", "pw-1", "tu", "pw-2"))
    password_calls = [i for i, c in enumerate(runner.calls) if "pw-1" in c or "pw-2" in c]
    assert len(password_calls) == 1
    for i in password_calls:
        assert set(runner.secrets_seen[i]) == {"pw-1", "pw-2"}


def test_old_iscsiadm_gets_one_setting_per_update() -> None:
    runner = FakeRunner()
    runner.responders.insert(0, lambda argv: (7, "") if argv.count("-n") > 1 else None)
    Iscsiadm(runner).create_node(IQN, PORTAL, SessionSettings())
    singles = [c for c in runner.calls if "update" in c and c.count("-n") == 1]
    assert len(singles) == len(SessionSettings().node_settings()) + 1


def test_login_accepts_an_existing_session() -> None:
    runner = FakeRunner()
    runner.on(["iscsiadm", "-m", "node", "-T", IQN, "-p", PORTAL, "--login"], returncode=15)
    Iscsiadm(runner).login(IQN, PORTAL, timeout=5)


def test_database_busy_is_retried() -> None:
    runner = FakeRunner()
    runner.on(["iscsiadm", "-m", "node", "-T", IQN, "-p", PORTAL, "--login"], returncode=6, times=2)
    Iscsiadm(runner, db_retry_delay=0).login(IQN, PORTAL, timeout=5)
    assert len(runner.calls) == 3


def test_other_login_failures_raise() -> None:
    runner = FakeRunner()
    runner.on(["iscsiadm", "-m", "node", "-T", IQN, "-p", PORTAL, "--login"], returncode=24)
    with pytest.raises(CommandFailed):
        Iscsiadm(runner).login(IQN, PORTAL, timeout=5)


def test_cleanup_of_missing_things_is_fine() -> None:
    runner = FakeRunner()
    runner.on(["iscsiadm"], returncode=21)
    adm = Iscsiadm(runner)
    adm.logout_session(7, timeout=5)
    adm.delete_target_records(IQN)
    assert adm.record_targets() == []


def test_record_targets_are_listed_once_each() -> None:
    runner = FakeRunner()
    runner.on(["iscsiadm", "-m", "node"], stdout=(
        f"127.0.0.11:3260,1 {IQN}\n127.0.0.12:3260,-1 {IQN}\n[fd00::2]:3260,1 iqn.2026-11.io.other:x\n"))
    assert Iscsiadm(runner).record_targets() == sorted([IQN, "iqn.2026-11.io.other:x"])
