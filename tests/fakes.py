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
        self.fail_in: dict[str, int] = {}  # method name -> how many more calls of it fail

    def _call(self, name: str) -> None:
        self.calls.append(name)
        event = self.block_in.get(name)
        if event is not None:
            event.wait(5)  # type: ignore[attr-defined]
        if self.fail_in.get(name, 0) > 0:
            self.fail_in[name] -= 1
            raise OSError(f"injected failure of {name}")

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
        target = self.targets.setdefault(iqn, {"portals": [], "chap": chap, "acls": {}})
        # As the real one: every portal added (none removed), authentication set, LUN 0 mapped.
        target["portals"] = list(dict.fromkeys([*target["portals"], *portals]))  # type: ignore[misc]
        target["chap"] = chap
        target["lun0"] = storage_object

    def delete_target(self, iqn: str) -> None:
        self._call("delete_target")
        self.targets.pop(iqn, None)

    def target_exists(self, iqn: str) -> bool:
        return iqn in self.targets

    # rtslib keeps every NodeACL name lowercased (utils._cleanse_wwn), and so does this fake.
    def grant(self, iqn: str, initiator: str, *, readonly: bool = False, chap: object = None) -> None:
        self._call("grant")
        self.targets[iqn]["acls"][initiator.lower()] = {"readonly": readonly, "chap": chap}  # type: ignore[index]

    def revoke(self, iqn: str, initiator: str) -> bool:
        self._call("revoke")
        if iqn in self.targets:
            return self.targets[iqn]["acls"].pop(initiator.lower(), None) is not None  # type: ignore[attr-defined]
        return False

    def initiators(self, iqn: str) -> list[str]:
        return sorted(self.targets.get(iqn, {}).get("acls", {}))  # type: ignore[arg-type]

    def acls(self, iqn: str) -> list[tuple[str, bool, bool, bool]]:
        acls: dict[str, dict[str, object]] = self.targets.get(iqn, {}).get("acls", {})  # type: ignore[assignment]
        found = []
        for initiator, acl in acls.items():
            chap = acl.get("chap")
            found.append((initiator, chap is not None, bool(getattr(chap, "mutual_user", "")), bool(acl["readonly"])))
        return sorted(found)

    def export_faults(self, name: str, iqn: str, portals: list[str], chap: bool,
                      grants: dict[str, bool]) -> list[str]:
        target = self.targets.get(iqn)
        if target is None:
            missing = "" if name in self.storage_objects else f" and no storage object {name}"
            return [f"LIO has no target {iqn}{missing}"]
        faults = []
        if bool(target.get("chap")) != chap:
            faults.append(f"target {iqn} {'does not ask' if chap else 'asks'} for CHAP, unlike its volume record")
        faults += [f"target {iqn} does not listen on portal {p}" for p in portals
                   if p not in target["portals"]]  # type: ignore[operator]
        if target.get("lun0") != name:
            faults.append(f"target {iqn} has no LUN 0")
        acls: dict[str, dict[str, object]] = target["acls"]  # type: ignore[assignment]
        for initiator, readonly in sorted(grants.items()):
            acl = acls.get(initiator.lower())
            if acl is None:
                faults.append(f"no ACL lets {initiator} in, though the volume is published to it")
            elif acl["readonly"] != readonly:
                faults.append(f"the ACL of {initiator} is {'writable' if readonly else 'read-only'}")
        return faults

    def dump(self, storage_object: str, iqn: str) -> tuple[dict[str, object] | None, dict[str, object] | None]:
        so = self.storage_objects.get(storage_object)
        target = self.targets.get(iqn)
        return (dict(so, name=storage_object) if so else None,
                {"wwn": iqn, "fabric": "iscsi", "state": repr(target)} if target else None)

    def dump_acl(self, iqn: str, initiator: str) -> dict[str, object] | None:
        acl = self.targets.get(iqn, {}).get("acls", {}).get(initiator.lower())  # type: ignore[attr-defined]
        return {"node_wwn": initiator.lower(), "readonly": acl["readonly"]} if acl else None

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


class FakeLvm:
    """LVM as the lvm-thin pool sees it through the runner: a volume group with a thin pool and thin
    LVs whose sizes it tracks. `broken` makes every command fail with LVM's generic exit code 5."""

    def __init__(self, vg: str = "vg0", thinpool: str = "thin", pool_size: int = 100 * 1024**3) -> None:
        self.vg, self.thinpool = vg, thinpool
        self.lvs: dict[str, int] = {thinpool: pool_size}
        self.broken: set[str] = set()  # program names that fail with exit 5
        self.extend_fails = False  # lvextend exits 5 without growing (e.g. the thin pool is full)
        self.usage = (10.0, 5.0)  # the thin pool's data and metadata percent
        self.inactive: set[str] = set()  # LVs with the activation-skip flag, not activated

    @staticmethod
    def _size(text: str) -> int:
        return int(text.rstrip("bB"))

    def respond(self, argv: tuple[str, ...]) -> tuple[int, str] | None:
        program = argv[0]
        if program not in ("lvs", "lvcreate", "lvextend", "lvremove", "lvchange"):
            return None
        if program in self.broken:
            return 5, ""
        args = list(argv[1:])
        if program == "lvs":
            fields = args[args.index("-o") + 1].split(",") if "-o" in args else ["lv_name"]
            names = list(self.lvs)
            if "-S" in args:
                want = args[args.index("-S") + 1].removeprefix("lv_name=")
                names = [n for n in names if n == want]
            else:
                target = next((a for a in args if "/" in a), None)
                if target is not None:
                    name = target.split("/", 1)[1]
                    if name not in self.lvs:
                        return 5, ""  # "Failed to find logical volume"
                    names = [name]
            rows = []
            for name in names:
                values = {"lv_name": name, "lv_size": str(self.lvs[name]),
                          "data_percent": f"{self.usage[0]:.2f}" if name == self.thinpool else "",
                          "metadata_percent": f"{self.usage[1]:.2f}" if name == self.thinpool else ""}
                rows.append("  " + " ".join(values.get(f, "") for f in fields))
            return 0, "\n".join(rows) + ("\n" if rows else "")
        if program == "lvcreate":
            name = args[args.index("-n") + 1]
            if name in self.lvs:
                return 5, ""
            if "-s" in args:  # a thin snapshot of the last argument, vg/origin
                origin = args[-1].split("/", 1)[1]
                if origin not in self.lvs:
                    return 5, ""
                self.lvs[name] = self.lvs[origin]
                skip = not ("-k" in args and args[args.index("-k") + 1] == "n")
                if skip:
                    self.inactive.add(name)
                return 0, ""
            self.lvs[name] = self._size(args[args.index("-V") + 1])
            return 0, ""
        if program == "lvchange":
            name = args[-1].split("/", 1)[1]
            if name not in self.lvs:
                return 5, ""
            self.inactive.discard(name)
            return 0, ""
        if program == "lvextend":
            name = args[-1].split("/", 1)[1]
            size = self._size(args[args.index("-L") + 1])
            if name not in self.lvs or self.extend_fails or size <= self.lvs[name]:
                return 5, ""
            self.lvs[name] = size
            return 0, ""
        for target in (a for a in args if "/" in a):  # lvremove
            if target.split("/", 1)[1] not in self.lvs:
                return 5, ""
            del self.lvs[target.split("/", 1)[1]]
        return 0, ""
