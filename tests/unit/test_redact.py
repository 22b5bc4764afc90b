from __future__ import annotations

from csi_iscsi.base.redact import redact_text
from csi_iscsi.csi import csi_pb2
from csi_iscsi.masking import message_for_log


def test_secret_fields_are_masked_everywhere() -> None:
    request = csi_pb2.NodeStageVolumeRequest(
        volume_id="csi-0", staging_target_path="/stage",
        secrets={"chapUser": "alice", "chapPassword": "s3cr3t-password"},
        publish_context={"portals": "127.0.0.1:3260"},
    )
    text = message_for_log(request)
    assert "s3cr3t-password" not in text and "alice" not in text
    assert "chapPassword" in text and "csi-0" in text and "127.0.0.1:3260" in text
    # the request itself is untouched
    assert request.secrets["chapPassword"] == "s3cr3t-password"


def test_secrets_nested_in_repeated_messages_are_masked() -> None:
    request = csi_pb2.CreateVolumeRequest(name="v", secrets={"k": "topsecret"})
    request.volume_capabilities.add().mount.fs_type = "ext4"
    assert "topsecret" not in message_for_log(request)


def test_redact_text_masks_longest_first() -> None:
    assert redact_text("user abc pass abcdef", ["abc", "abcdef"]) == "user *** pass ***"
    assert redact_text("nothing", [""]) == "nothing"
