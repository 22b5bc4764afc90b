from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from csi_iscsi.lio.saveconfig import SavedConfig


def target(wwn: str, acls: list[str]) -> dict[str, object]:
    return {"wwn": wwn, "fabric": "iscsi", "tpgs": [{"tag": 1, "node_acls": [{"node_wwn": a} for a in acls]}]}


def test_entries_are_replaced_one_by_one_and_foreign_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "saveconfig.json"
    path.write_text(json.dumps({"storage_objects": [{"name": "admin-disk", "plugin": "block"}],
                                "targets": [target("iqn.2000-01.admin:x", [])], "fabric_modules": []}))
    saved = SavedConfig(path)
    saved.update(storage_objects={"csi-1": {"name": "csi-1", "plugin": "fileio"}},
                 targets={"iqn.t:csi-1": target("iqn.t:csi-1", [])})
    assert saved.update_acl("iqn.t:csi-1", "iqn.i:a", {"node_wwn": "iqn.i:a", "chap_password": "pw"})
    assert saved.update_acl("iqn.t:csi-1", "iqn.i:b", {"node_wwn": "iqn.i:b"})
    assert saved.update_acl("iqn.t:csi-1", "iqn.i:a", None)
    assert not saved.update_acl("iqn.t:missing", "iqn.i:a", None)
    doc = json.loads(path.read_text())
    assert [so["name"] for so in doc["storage_objects"]] == ["admin-disk", "csi-1"]
    assert [t["wwn"] for t in doc["targets"]] == ["iqn.2000-01.admin:x", "iqn.t:csi-1"]
    assert doc["targets"][1]["tpgs"][0]["node_acls"] == [{"node_wwn": "iqn.i:b"}]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # A new instance reads back exactly what was written.
    again = SavedConfig(path)
    assert again.target("iqn.t:csi-1") == doc["targets"][1]
    saved.update(storage_objects={"csi-1": None}, targets={"iqn.t:csi-1": None})
    assert [t["wwn"] for t in json.loads(path.read_text())["targets"]] == ["iqn.2000-01.admin:x"]
    assert not list(tmp_path.glob(".*tmp"))
