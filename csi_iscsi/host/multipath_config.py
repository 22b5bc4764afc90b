"""What multipathd will do with a LIO LUN, read from its effective configuration (`multipathd show
config`): the built-in hardware table, the node's multipath.conf and every conf.d drop-in, merged.

The driver needs three things of it: LIO LUNs are not blacklisted, their maps are named by WWID
(user_friendly_names no), and queueing with every path down is bounded, so that a dead target
can neither hang pods for ever nor keep an unstage from finishing. Which device entries win
follows multipath-tools: overrides, then every matching devices entry (a later one over an
earlier one, so a drop-in beats the built-in entry), then defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The SCSI inquiry LIO answers with; the product is the backstore type.
LIO_VENDOR = "LIO-ORG"
LIO_PRODUCTS = ("FILEIO", "IBLOCK")
# What every LIO LUN's WWID looks like (NAA 6, LIO's OUI 001405), for blacklist wwid patterns.
LIO_WWID_SAMPLE = "36001405" + "0123456789abcdef0123456789"[:25]
# Kernel names an iSCSI LUN gets: a devnode rule that lists all of these blacklists the driver's paths.
LIO_DEVNODE_SAMPLES = ("sdb", "sdz", "sdaa")


@dataclass
class Section:
    name: str
    values: dict[str, str] = field(default_factory=dict)  # the last value of each key
    pairs: list[tuple[str, str]] = field(default_factory=list)  # every key and value, in order
    children: list[Section] = field(default_factory=list)

    def child(self, name: str) -> Section | None:
        return next((c for c in self.children if c.name == name), None)

    def all(self, name: str) -> list[Section]:
        return [c for c in self.children if c.name == name]


def parse(text: str) -> Section:
    """The nested sections of multipath.conf syntax (`name {`, `key value`, `}`); comments dropped."""
    root = Section("")
    stack = [root]
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith(("#", "!")) else ""
        if not line:
            continue
        if line.endswith("{"):
            section = Section(line[:-1].strip())
            stack[-1].children.append(section)
            stack.append(section)
        elif line == "}":
            if len(stack) > 1:
                stack.pop()
        else:
            key, _, value = line.partition(" ")
            value = value.strip().strip('"')
            stack[-1].values[key] = value
            stack[-1].pairs.append((key, value))
    return root


def _matches(pattern: str | None, value: str) -> bool:
    """multipath-tools matches with POSIX extended regexes, anywhere in the string."""
    if pattern is None:
        return True
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return pattern == value


def _device_matches(entry: Section, vendor: str, product: str) -> bool:
    return _matches(entry.values.get("vendor"), vendor) and _matches(entry.values.get("product"), product)


@dataclass(frozen=True)
class LioSettings:
    """The settings multipathd applies to one LIO product."""

    product: str
    user_friendly_names: str
    no_path_retry: str
    polling_interval: int
    blacklisted_by: str  # "" when not blacklisted

    @property
    def queue_seconds(self) -> int | None:
        """How long I/O queues with every path down; None for ever ("queue"), 0 not at all."""
        if self.no_path_retry == "queue":
            return None
        if self.no_path_retry in ("fail", "0", ""):
            return 0
        try:
            return int(self.no_path_retry) * self.polling_interval
        except ValueError:
            return 0


def lio_settings(config: Section, product: str) -> LioSettings:
    defaults = config.child("defaults") or Section("defaults")
    overrides = config.child("overrides") or Section("overrides")
    entries = [e for d in config.all("devices") for e in d.all("device")
               if _device_matches(e, LIO_VENDOR, product)]

    def effective(key: str, fallback: str) -> str:
        if key in overrides.values:
            return overrides.values[key]
        for entry in reversed(entries):
            if key in entry.values:
                return entry.values[key]
        return defaults.values.get(key, fallback)

    try:
        polling = int(defaults.values.get("polling_interval", "5"))
    except ValueError:
        polling = 5
    return LioSettings(product, effective("user_friendly_names", "no"), effective("no_path_retry", "fail"),
                       polling, _blacklisted_by(config, product))


def _regex_listed(pattern: str, value: str) -> bool:
    """A blacklist regex; a leading "!" lists what does not match (Debian's default devnode rule)."""
    if pattern.startswith("!"):
        return not _matches(pattern[1:], value)
    return _matches(pattern, value)


def _blacklisted_by(config: Section, product: str) -> str:
    """The blacklist rule that keeps LIO LUNs from multipath, or "". As multipath-tools does, an
    exception only undoes a rule of its own kind (devnode, wwid, device)."""
    def listed(section: Section | None) -> dict[str, str]:
        found: dict[str, str] = {}
        if section is None:
            return found
        for entry in section.all("device"):
            if _device_matches(entry, LIO_VENDOR, product):
                vendor, model = entry.values.get("vendor", ""), entry.values.get("product", "")
                found.setdefault("device", f'device {{ vendor "{vendor}" product "{model}" }}')
        for key, value in section.pairs:
            if key == "wwid" and _regex_listed(value, LIO_WWID_SAMPLE):
                found.setdefault("wwid", f'wwid "{value}"')
            if key == "devnode" and all(_regex_listed(value, name) for name in LIO_DEVNODE_SAMPLES):
                found.setdefault("devnode", f'devnode "{value}"')
        return found

    blacklisted = listed(config.child("blacklist"))
    excepted = listed(config.child("blacklist_exceptions"))
    rules = [rule for kind, rule in blacklisted.items() if kind not in excepted]
    return "; ".join(rules)


def problems(config_text: str) -> list[str]:
    """What in the effective configuration makes multipath unsafe for the driver's LUNs, each with
    the fix; empty when it is fine."""
    config = parse(config_text)
    found: list[str] = []
    for product in LIO_PRODUCTS:
        settings = lio_settings(config, product)
        where = f"{LIO_VENDOR}/{product} LUNs"
        if settings.blacklisted_by:
            found.append(f"{where} are blacklisted ({settings.blacklisted_by}): no map would be built")
        if settings.user_friendly_names != "no":
            found.append(f"{where} get user_friendly_names {settings.user_friendly_names}: their maps must be "
                         "named by WWID")
        if settings.queue_seconds is None:
            found.append(f"{where} queue I/O for ever with every path down (no_path_retry queue): a dead target "
                         "would hang pods in uninterruptible I/O, past any unstage")
    unique = list(dict.fromkeys(found))
    if unique:
        unique.append("install deploy/node/multipath-csi-iscsi.conf as /etc/multipath/conf.d/csi-iscsi.conf and "
                      "reload multipathd (docs/multipath.md)")
    return unique
