"""The Kubernetes CSI conformance suite (csi-sanity) against both plugins in the VM: Identity,
Controller and Node, with the node lifecycle specs run (not skipped)."""

from __future__ import annotations

import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .plugins import MiB, controller_args, running

SANITY = os.environ.get("CSI_SANITY", "/shared/bin/csi-sanity")
REPORTS = Path("test-results")


def sanity_binary() -> str:
    if not Path(SANITY).exists():
        # CI always has shared/ beside the repo; elsewhere say plainly that conformance did not run.
        if os.environ.get("REQUIRE_SANITY") == "1":
            pytest.fail(f"csi-sanity not found at {SANITY}")
        pytest.skip(f"csi-sanity not found at {SANITY} (shared/bin beside the repo)")
    return SANITY


def test_csi_sanity_full(thin_vg: str, tmp_path: Path) -> None:
    sanity = sanity_binary()
    state = Path("/var/lib/csi-iscsi-sanity")
    params = tmp_path / "params.yaml"
    params.write_text("pool: thin\n")
    pools = [f"name=thin,type=lvm-thin,vg={thin_vg},thinpool=thin,overprovision=20"]
    REPORTS.mkdir(exist_ok=True)
    junit = REPORTS / "csi-sanity.xml"
    start = time.monotonic()
    with running(controller_args(state, pools, tmp_path / "save.json"), tmp_path / "c.sock",
                 REPORTS / "csi-sanity-controller.log") as controller, \
            running(["node", "--node-name", "testbed", "--state-dir", str(state)], tmp_path / "n.sock",
                    REPORTS / "csi-sanity-node.log") as node:
        command = [sanity, f"--csi.endpoint=unix://{node.sock}", f"--csi.controllerendpoint=unix://{controller.sock}",
                   f"--csi.testvolumesize={1024 * MiB}", f"--csi.testvolumeexpandsize={2048 * MiB}",
                   f"--csi.testvolumeparameters={params}", f"--csi.mountdir={tmp_path}/mnt",
                   f"--csi.stagingdir={tmp_path}/stage", "--ginkgo.no-color", f"--ginkgo.junit-report={junit}"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=2400)
    (REPORTS / "csi-sanity.log").write_text(proc.stdout + proc.stderr)
    summary = [line for line in proc.stdout.splitlines() if re.search(r"\d+ Passed \| \d+ Failed", line)]
    failed = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  [FAIL]")]
    print(f"csi-sanity (Identity, Controller, Node) in {time.monotonic() - start:.0f} s: {summary}")
    print("command: " + " ".join(command))
    assert proc.returncode == 0, f"{summary} {failed} (report: {REPORTS / 'csi-sanity.log'})"
    outcome = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        status = "skipped" if case.find("skipped") is not None else (
            "failed" if case.find("failure") is not None or case.find("error") is not None else "passed")
        outcome[case.get("name", "")] = status
    lifecycle = {name: status for name, status in outcome.items()
                 if re.search(r"Node Service should (work|be idempotent)$", name)}
    assert len(lifecycle) == 2 and set(lifecycle.values()) == {"passed"}, lifecycle


@pytest.mark.parametrize("mode", ["controller", "node"])
def test_csi_sanity_identity_on_each_plugin(mode: str, tmp_path: Path) -> None:
    """Both plugins are one driver: each socket alone passes the Identity specs."""
    sanity = sanity_binary()
    state = tmp_path / "state"
    args = (controller_args(state, [f"name=default,type=fileio,path={tmp_path / 'pool'}"], tmp_path / "save.json")
            if mode == "controller" else ["node", "--node-name", "testbed", "--state-dir", str(state)])
    with running(args, tmp_path / f"{mode}.sock") as plugin:
        proc = subprocess.run([sanity, f"--csi.endpoint=unix://{plugin.sock}", "--ginkgo.focus=Identity Service",
                               "--ginkgo.no-color"], capture_output=True, text=True, timeout=300)
    summary = [line for line in proc.stdout.splitlines() if re.search(r"\d+ Passed \| \d+ Failed", line)]
    print(f"csi-sanity Identity against the {mode}: {summary}")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert summary and "3 Passed | 0 Failed" in summary[-1]
