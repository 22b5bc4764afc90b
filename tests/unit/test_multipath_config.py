"""What multipathd does with LIO LUNs, read from `multipathd show config` as multipath-tools 0.9.4
(Debian bookworm) prints it: defaults, blacklist, the built-in hardware table, then the node's
drop-ins, then overrides. The built-in LIO entry and the defaults below are copied from that output
in the testbed."""

from __future__ import annotations

from pathlib import Path

from csi_iscsi.host import multipath_config
from csi_iscsi.host.multipath_config import lio_settings, parse, problems

REPO = Path(__file__).resolve().parents[2]
DROP_IN = REPO / "deploy/node/multipath-csi-iscsi.conf"


def shown(defaults: str = "", blacklist: str = "", exceptions: str = 'property "(SCSI_IDENT_|ID_WWN)"',
          devices: str = "", overrides: str = "") -> str:
    """A `multipathd show config` with the built-in LIO entry and what the node's files add."""
    return f"""defaults {{
\tverbosity 2
\tpolling_interval 5
\tmax_polling_interval 20
\tuser_friendly_names "no"
\tfind_multipaths "strict"
{defaults}
}}
blacklist {{
\tdevnode "!^(sd[a-z]|dasd[a-z]|nvme[0-9])"
\tdevice {{
\t\tvendor "SGI"
\t\tproduct "Universal Xport"
\t}}
{blacklist}
}}
blacklist_exceptions {{
\t{exceptions}
}}
devices {{
\tdevice {{
\t\tvendor "DataCore"
\t\tproduct "SANmelody"
\t\tno_path_retry "queue"
\t}}
\tdevice {{
\t\tvendor "(LIO-ORG|SUSE)"
\t\tproduct ".*"
\t\tpath_grouping_policy "group_by_prio"
\t\thardware_handler "1 alua"
\t\tprio "alua"
\t\tfailback "immediate"
\t\tno_path_retry 12
\t}}
{devices}
}}
overrides {{
{overrides}
}}
"""


def drop_in_devices() -> str:
    """The shipped drop-in's device entry, as multipathd lists it after the built-in ones."""
    return "\n".join(line for line in DROP_IN.read_text().splitlines()
                     if line.strip() and not line.lstrip().startswith(("#", "devices")) and line.strip() != "}"
                     ) + "\n}"


def test_the_builtin_lio_entry_beats_a_defaults_section() -> None:
    """Wave 1's recommended `defaults { no_path_retry 6 }` was never what LIO LUNs got: the built-in
    device entry for "(LIO-ORG|SUSE)" says 12, and a device entry beats defaults (seen in the VM)."""
    config = parse(shown(defaults="\tno_path_retry 6\n\tpolling_interval 2"))
    settings = lio_settings(config, "FILEIO")
    assert settings.no_path_retry == "12"
    assert settings.queue_seconds == 24  # 12 x 2 s, not the 12 s the old docs promised


def test_the_shipped_drop_in_wins_over_the_builtin_entry_and_bounds_queueing_at_180_s() -> None:
    config = parse(shown(devices=drop_in_devices()))
    for product in multipath_config.LIO_PRODUCTS:
        settings = lio_settings(config, product)
        assert (settings.no_path_retry, settings.user_friendly_names, settings.blacklisted_by) == ("36", "no", "")
        assert settings.queue_seconds == 180
    assert problems(shown(devices=drop_in_devices())) == []


def test_user_friendly_names_from_the_distribution_are_overridden_for_lio_only() -> None:
    """Ubuntu's and RHEL's (mpathconf) multipath.conf say user_friendly_names yes in defaults."""
    ubuntu = shown(defaults='\tuser_friendly_names "yes"')
    found = problems(ubuntu)
    assert any("user_friendly_names yes" in p for p in found) and "conf.d/csi-iscsi.conf" in found[-1]
    assert problems(shown(defaults='\tuser_friendly_names "yes"', devices=drop_in_devices())) == []
    other = lio_settings(parse(shown(defaults='\tuser_friendly_names "yes"', devices=drop_in_devices())), "X")
    assert other.product == "X"


def test_unbounded_queueing_is_unsafe_even_from_overrides() -> None:
    found = problems(shown(devices=drop_in_devices(), overrides='\tno_path_retry "queue"'))
    assert any("for ever" in p for p in found)
    assert lio_settings(parse(shown(overrides="\tno_path_retry queue")), "IBLOCK").queue_seconds is None
    assert lio_settings(parse(shown(overrides='\tno_path_retry "fail"')), "IBLOCK").queue_seconds == 0


def test_blacklisted_lio_luns_are_found_and_exceptions_respected() -> None:
    by_vendor = shown(blacklist='\tdevice {\n\t\tvendor "LIO-ORG"\n\t\tproduct ".*"\n\t}', devices=drop_in_devices())
    assert any("blacklisted" in p for p in problems(by_vendor))
    by_wwid = shown(blacklist='\twwid ".*"', devices=drop_in_devices())
    assert any('wwid ".*"' in p for p in problems(by_wwid))
    excepted = shown(blacklist='\twwid ".*"', exceptions='wwid "^36001405"', devices=drop_in_devices())
    assert problems(excepted) == []
    other_disk = shown(blacklist='\twwid "^3600508b1"', devices=drop_in_devices())
    assert problems(other_disk) == []


def test_comments_and_odd_lines_do_not_break_the_parser() -> None:
    config = parse('# a comment\ndefaults {\n\tpolling_interval x  # not a number\n}\n}\n')
    assert lio_settings(config, "FILEIO").polling_interval == 5


def test_a_devnode_blacklist_of_every_sd_disk_is_found_and_debians_default_is_not() -> None:
    """Longhorn's documentation has nodes blacklist `devnode "^sd[a-z0-9]+"`, which takes LIO's
    paths too; Debian's built-in `devnode "!^(sd[a-z]|dasd[a-z]|nvme[0-9])"` (in every shown() here)
    lists everything but sd, dasd and nvme disks, and must not count."""
    longhorn = shown(blacklist='\tdevnode "^sd[a-z0-9]+"', devices=drop_in_devices())
    assert any('devnode "^sd[a-z0-9]+"' in p for p in problems(longhorn))
    assert problems(shown(blacklist='\tdevnode "^sda$"', devices=drop_in_devices())) == []


def test_an_exception_undoes_only_a_blacklist_rule_of_its_own_kind() -> None:
    by_device = shown(blacklist='\tdevice {\n\t\tvendor "LIO-ORG"\n\t}', exceptions='wwid "^36001405"',
                      devices=drop_in_devices())
    assert any("blacklisted" in p for p in problems(by_device))
    excepted = shown(blacklist='\tdevice {\n\t\tvendor "LIO-ORG"\n\t}',
                     exceptions='device {\n\t\tvendor "LIO-ORG"\n\t\tproduct ".*"\n\t}', devices=drop_in_devices())
    assert problems(excepted) == []
