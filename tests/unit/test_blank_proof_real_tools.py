"""Finding 1 of issue 10 with the real blkid and the real mkfs.ext4 (on this machine, no VM needed):
a filesystem image whose reads fail for blkid alone, as on a flapping path or a medium error. blkid
then exits 2 printing nothing, exactly as for a blank device; the driver must not format.

An LD_PRELOAD shim makes read()/pread() fail with EIO inside processes named blkid only, so mkfs
and the driver's own reads are untouched. The same defect is shown on the real kernel (corrupted
reads under a LUN, dm-flakey) in tests/testbed/test_node_faults.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from csi_iscsi.base.errors import FailedPrecondition
from csi_iscsi.base.runner import SubprocessRunner
from csi_iscsi.host.filesystem import Filesystems
from csi_iscsi.host.mounts import MountTable

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
extern char *program_invocation_short_name;
static int blkid(int fd) { return fd > 2 && strcmp(program_invocation_short_name, "blkid") == 0; }
ssize_t read(int fd, void *buf, size_t n) {
    static ssize_t (*real)(int, void *, size_t);
    if (!real) real = dlsym(RTLD_NEXT, "read");
    if (blkid(fd)) { errno = EIO; return -1; }
    return real(fd, buf, n);
}
ssize_t pread(int fd, void *buf, size_t n, off_t off) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "pread");
    if (blkid(fd)) { errno = EIO; return -1; }
    return real(fd, buf, n, off);
}
ssize_t pread64(int fd, void *buf, size_t n, off_t off) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "pread64");
    if (blkid(fd)) { errno = EIO; return -1; }
    return real(fd, buf, n, off);
}
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("gcc", "blkid", "mkfs.ext4"):
        assert shutil.which(tool), f"{tool} is needed (scripts/setup installs it)"
    work = tmp_path_factory.mktemp("shim")
    (work / "eio.c").write_text(SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(work / "eio.so"), str(work / "eio.c"), "-ldl"], check=True)
    return work / "eio.so"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_blkid_that_cannot_read_answers_like_a_blank_device(shim: Path, tmp_path: Path) -> None:
    image = tmp_path / "vol.img"
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    plain = subprocess.run(["blkid", "-p", str(image)], capture_output=True, text=True)
    assert plain.returncode == 0 and 'TYPE="ext4"' in plain.stdout
    failing = subprocess.run(["blkid", "-p", str(image)], capture_output=True, text=True,
                             env={**os.environ, "LD_PRELOAD": str(shim)})
    assert (failing.returncode, failing.stdout) == (2, "")  # the same answer as for a blank device


def test_a_volume_blkid_cannot_read_is_not_formatted_by_the_real_mkfs(shim: Path, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "precious").write_text("written before the stage\n")
    image = tmp_path / "vol.img"
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(files), str(image)], check=True)
    before = sha(image)
    (tmp_path / "mountinfo").write_text("")
    runner = SubprocessRunner(env={**os.environ, "LD_PRELOAD": str(shim)})
    with pytest.raises(FailedPrecondition, match="refusing to format"):
        Filesystems(runner, MountTable(tmp_path / "mountinfo")).ensure(str(image), "ext4")
    assert sha(image) == before
    listing = subprocess.run(["debugfs", "-R", "cat /precious", str(image)], capture_output=True, text=True)
    assert listing.stdout == "written before the stage\n"
