"""Writes deploy/csi-iscsi.yaml: what helm renders from charts/csi-iscsi with the default values,
without the labels only a release manager adds. tests/packaging/test_chart_helm.py checks that
the file stays equal to the chart's rendering; run this after a chart change.

Usage: python tools/render_deploy.py [--helm PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELM_ONLY = ("helm.sh/chart:", "app.kubernetes.io/managed-by:", "# Source:")
HEADER = """\
# csi-iscsi {version}, the whole install as plain manifests: what `helm template csi-iscsi
# charts/csi-iscsi --namespace csi-iscsi --kube-version 1.34.0` renders with the chart's default
# values, for Kubernetes 1.34 and later and without the csi-snapshotter (written by
# tools/render_deploy.py, checked by tests/packaging/test_chart_helm.py). Apply namespace.yaml first.
# Before applying: label the target node (kubectl label node <node> csi-iscsi.io/target=true) and
# load or push the image localhost/csi-iscsi:{version} (image/build); see docs/install.md.
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helm", type=Path, default=REPO / ".venv" / "tools" / "helm-v4.1.4" / "helm")
    args = parser.parse_args(argv)
    # For Kubernetes 1.34 and later (the provisioner's image depends on the version; the chart picks
    # it from the cluster's), on a cluster without the snapshot API (no csi-snapshotter).
    rendered = subprocess.run([str(args.helm), "template", "csi-iscsi", str(REPO / "charts" / "csi-iscsi"),
                               "--namespace", "csi-iscsi", "--kube-version", "1.34.0"],
                              capture_output=True, text=True, check=True).stdout
    kept = [line for line in rendered.splitlines() if not line.strip().startswith(HELM_ONLY)]
    while kept and kept[0].strip() in ("", "---"):
        kept.pop(0)
    version = next(line.split(":", 1)[1].strip() for line in (REPO / "charts" / "csi-iscsi" / "Chart.yaml")
                   .read_text().splitlines() if line.startswith("appVersion:")).strip('"')
    (REPO / "deploy" / "csi-iscsi.yaml").write_text(HEADER.format(version=version) + "\n".join(kept) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
