"""Fakes at the command-runner seam: record every argv, answer from a script."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from csi_iscsi.base.runner import CommandFailed, Result

Responder = Callable[[tuple[str, ...]], tuple[int, str] | None]


@dataclass
class FakeRunner:
    """Answers each command with the first responder that knows it, else exit 0 and no output."""

    responders: list[Responder] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    secrets_seen: list[tuple[str, ...]] = field(default_factory=list)

    def on(self, prefix: Sequence[str], returncode: int = 0, stdout: str = "", times: int | None = None) -> None:
        want = tuple(prefix)
        left = [times]

        def responder(argv: tuple[str, ...]) -> tuple[int, str] | None:
            if argv[: len(want)] != want or left[0] == 0:
                return None
            if left[0] is not None:
                left[0] -= 1
            return returncode, stdout

        self.responders.insert(0, responder)

    def run(self, argv: Sequence[str], *, timeout: float | None = None, ok_codes: Collection[int] = (0,),
            secrets: Collection[str] = (), stdin: str | None = None) -> Result:
        call = tuple(argv)
        self.calls.append(call)
        self.secrets_seen.append(tuple(secrets))
        rc, out = 0, ""
        for responder in self.responders:
            answer = responder(call)
            if answer is not None:
                rc, out = answer
                break
        if rc not in ok_codes:
            raise CommandFailed(call, rc, f"fake failure of {call[0]}", secrets)
        return Result(call, rc, out, "", 0.0)

    def programs(self) -> list[str]:
        return [c[0] for c in self.calls]


class FakeLio:
    """In-memory stand-in for csi_iscsi.lio.objects.Lio (the rtslib seam)."""

    def __init__(self) -> None:
        self.storage_objects: dict[str, dict[str, object]] = {}
        self.targets: dict[str, dict[str, object]] = {}
        self.calls: list[str] = []
        self.block_in: dict[str, object] = {}  # method name -> threading.Event to wait on

    def _call(self, name: str) -> None:
        self.calls.append(name)
        event = self.block_in.get(name)
        if event is not None:
            event.wait(5)  # type: ignore[attr-defined]

    def ensure_fileio(self, name: str, path: str, size: int, serial: str, fresh: bool = False) -> None:
        self._call("ensure_fileio")
        self.storage_objects.setdefault(name, {"plugin": "fileio", "dev": path, "size": size, "wwn": serial})

    def ensure_block(self, name: str, device: str, serial: str, fresh: bool = False) -> None:
        self._call("ensure_block")
        self.storage_objects.setdefault(name, {"plugin": "block", "dev": device, "wwn": serial})

    def delete_storage_object(self, name: str, iqn: str | None = None) -> None:
        self._call("delete_storage_object")
        self.storage_objects.pop(name, None)
        for target in self.targets.values():
            if target.get("lun0") == name:
                target["lun0"] = None

    def storage_object_exists(self, name: str, iqn: str | None = None) -> bool:
        return name in self.storage_objects

    def ensure_target(self, iqn: str, portals: list[str], storage_object: str, chap: bool) -> None:
        self._call("ensure_target")
        target = self.targets.setdefault(iqn, {"portals": list(portals), "chap": chap, "acls": {}})
        target["lun0"] = storage_object

    def delete_target(self, iqn: str) -> None:
        self._call("delete_target")
        self.targets.pop(iqn, None)

    def target_exists(self, iqn: str) -> bool:
        return iqn in self.targets

    def grant(self, iqn: str, initiator: str, *, readonly: bool = False, chap: object = None) -> None:
        self._call("grant")
        self.targets[iqn]["acls"][initiator] = {"readonly": readonly, "chap": chap}  # type: ignore[index]

    def revoke(self, iqn: str, initiator: str) -> None:
        self._call("revoke")
        if iqn in self.targets:
            self.targets[iqn]["acls"].pop(initiator, None)  # type: ignore[attr-defined]

    def initiators(self, iqn: str) -> list[str]:
        return sorted(self.targets.get(iqn, {}).get("acls", {}))  # type: ignore[arg-type]

    def dump(self, storage_object: str, iqn: str) -> tuple[dict[str, object] | None, dict[str, object] | None]:
        so = self.storage_objects.get(storage_object)
        target = self.targets.get(iqn)
        return (dict(so, name=storage_object) if so else None,
                {"wwn": iqn, "fabric": "iscsi", "state": repr(target)} if target else None)

    def dump_acl(self, iqn: str, initiator: str) -> dict[str, object] | None:
        acl = self.targets.get(iqn, {}).get("acls", {}).get(initiator)  # type: ignore[attr-defined]
        return {"node_wwn": initiator, "readonly": acl["readonly"]} if acl else None

    def restore(self, so_dump: dict[str, object] | None, target_dump: dict[str, object] | None) -> list[str]:
        self._call("restore")
        if so_dump:
            so = dict(so_dump)
            self.storage_objects[str(so.pop("name"))] = so
        if target_dump:
            import ast

            self.targets[str(target_dump["wwn"])] = ast.literal_eval(str(target_dump["state"]))
        return []

    def target_iqns(self, prefix: str) -> list[str]:
        return sorted(t for t in self.targets if t.startswith(prefix))
