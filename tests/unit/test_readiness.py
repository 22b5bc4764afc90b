from __future__ import annotations

import socket
import uuid

from csi_iscsi.host.readiness import iscsid_listening, node_ready
from tests.fakes import FakeRunner


def test_iscsid_check_asks_the_socket() -> None:
    address = f"\0csi-iscsi-test-{uuid.uuid4().hex}"
    assert iscsid_listening(address) is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(address)
        server.listen(1)
        assert iscsid_listening(address) is True


def test_node_is_not_ready_without_iscsid_and_says_what_to_do() -> None:
    ok, why = node_ready(FakeRunner(), iscsid_check=lambda: False)
    assert ok is False and "start it" in why
    assert node_ready(FakeRunner(), iscsid_check=lambda: True) == (True, "ready")


def test_multipath_settings_that_are_unsafe_make_the_node_not_ready_with_the_reason() -> None:
    from tests.unit.test_multipath_config import drop_in_devices, shown

    runner = FakeRunner()
    runner.on(["multipathd", "show", "config"], stdout=shown(defaults='\tuser_friendly_names "yes"'))
    ok, why = node_ready(runner, iscsid_check=lambda: True, multipath_mode="required")
    assert ok is False and "user_friendly_names yes" in why and "/etc/multipath/conf.d/csi-iscsi.conf" in why
    runner.on(["multipathd", "show", "config"], stdout=shown(devices=drop_in_devices()))
    assert node_ready(runner, iscsid_check=lambda: True, multipath_mode="required") == (True, "ready")


def test_a_missing_multipathd_is_not_ready_only_when_multipath_is_required() -> None:
    runner = FakeRunner()
    runner.on(["multipathd"], returncode=1, stdout="can't connect to multipathd socket")
    ok, why = node_ready(runner, iscsid_check=lambda: True, multipath_mode="required")
    assert ok is False and "multipathd does not answer" in why and "--multipath=preferred" in why
    assert node_ready(runner, iscsid_check=lambda: True, multipath_mode="preferred") == (True, "ready")
    off = FakeRunner()
    assert node_ready(off, iscsid_check=lambda: True, multipath_mode="off") == (True, "ready")
    assert [c[0] for c in off.calls] == ["iscsiadm"]
