"""CSI messages as text for the log, with every csi_secret field masked."""

from __future__ import annotations

from google.protobuf import text_format
from google.protobuf.message import Message

from csi_iscsi.base.redact import MASK
from csi_iscsi.csi import csi_pb2


def _is_secret_field(field: object) -> bool:
    options = field.GetOptions()  # type: ignore[attr-defined]
    return bool(options.Extensions[csi_pb2.csi_secret])


def redacted_copy(message: Message) -> Message:
    """A copy of a CSI message with every csi_secret field's values masked (keys kept)."""
    copy = type(message)()
    copy.CopyFrom(message)
    _mask_in_place(copy)
    return copy


def _mask_in_place(message: Message) -> None:
    for field, value in message.ListFields():
        if _is_secret_field(field):
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key in list(value):
                    value[key] = MASK
            elif field.type == field.TYPE_STRING:
                setattr(message, field.name, MASK)
            else:
                message.ClearField(field.name)
            continue
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            if field.message_type is not None:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for item in value.values():
                        _mask_in_place(item)
            continue
        if field.is_repeated:
            for item in value:
                _mask_in_place(item)
        else:
            _mask_in_place(value)


def message_for_log(message: Message) -> str:
    """One-line text of a CSI message, safe to log."""
    return text_format.MessageToString(redacted_copy(message), as_one_line=True)
