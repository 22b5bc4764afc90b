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
