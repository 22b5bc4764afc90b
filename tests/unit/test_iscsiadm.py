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


def test_the_drivers_iface_is_deleted_once_no_record_uses_it_and_never_during_an_attach() -> None:
    """While the iface record exists, anyone's `iscsiadm -m discovery` on the node binds new records
    to it too; it goes when the last record bound to it goes, but not between an attach's records
    and its login."""
    settings = SessionSettings(initiator_name="iqn.2026-11.io.example:node-1")
    iface = settings.iface
    runner = FakeRunner()
    iscsiadm = Iscsiadm(runner)
    runner.on(["iscsiadm", "-m", "node", "-I", iface], stdout="# BEGIN RECORD 2.1.8\n")  # records remain
    iscsiadm.forget_iface_if_unused(settings)
    assert ("iscsiadm", "-m", "iface", "-I", iface, "-o", "delete") not in runner.calls
    runner.on(["iscsiadm", "-m", "node", "-I", iface], returncode=21)  # "No records found"
    with iscsiadm.iface_in_use(settings):
        iscsiadm.forget_iface_if_unused(settings)
        assert ("iscsiadm", "-m", "iface", "-I", iface, "-o", "delete") not in runner.calls
    iscsiadm.forget_iface_if_unused(settings)
    assert runner.calls[-1] == ("iscsiadm", "-m", "iface", "-I", iface, "-o", "delete")
    # The next attach makes it again instead of trusting its cache.
    runner.calls.clear()
    iscsiadm.ensure_iface(settings)
    assert ("iscsiadm", "-m", "iface", "-I", iface, "-o", "new") in runner.calls


def test_no_iface_is_touched_without_an_initiator_name() -> None:
    runner = FakeRunner()
    Iscsiadm(runner).forget_iface_if_unused(SessionSettings())
    assert runner.calls == []


def test_a_failing_iface_cleanup_is_only_a_warning_and_forgets_the_cache_first() -> None:
    settings = SessionSettings(initiator_name="iqn.2026-11.io.example:node-1")
    iface = settings.iface
    runner = FakeRunner()
    iscsiadm = Iscsiadm(runner, db_retry_delay=0)
    iscsiadm.ensure_iface(settings)
    runner.on(["iscsiadm", "-m", "node", "-I", iface], returncode=21)
    runner.on(["iscsiadm", "-m", "iface", "-I", iface, "-o", "delete"], returncode=8)  # timed out half-way
    iscsiadm.forget_iface_if_unused(settings)  # no exception: the volume is detached either way
    runner.calls.clear()
    iscsiadm.ensure_iface(settings)
    assert runner.calls[0] == ("iscsiadm", "-m", "iface")  # looked up again, not trusted from memory
    busy = FakeRunner()
    busy.on(["iscsiadm", "-m", "node", "-I", iface], returncode=6, times=2)  # the database was busy
    busy.on(["iscsiadm", "-m", "node", "-I", iface], returncode=21)
    Iscsiadm(busy, db_retry_delay=0).forget_iface_if_unused(settings)
    assert busy.calls[-1] == ("iscsiadm", "-m", "iface", "-I", iface, "-o", "delete")
