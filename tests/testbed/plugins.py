"""Running the plugins as real processes in the VM and talking to them over their sockets."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from csi_iscsi import contract
from csi_iscsi.csi import csi_pb2, csi_pb2_grpc

PORTALS = ["127.0.0.11:3260", "127.0.0.12:3260"]
GiB = 1024 * 1024 * 1024
MiB = 1024 * 1024


@dataclass
class Stubs:
    """A plugin reached over a gRPC channel, however it was started (process or container)."""

    channel: grpc.Channel

    @property
    def identity(self) -> csi_pb2_grpc.IdentityStub:
        return csi_pb2_grpc.IdentityStub(self.channel)

    @property
    def controller(self) -> csi_pb2_grpc.ControllerStub:
        return csi_pb2_grpc.ControllerStub(self.channel)

    @property
    def node(self) -> csi_pb2_grpc.NodeStub:
        return csi_pb2_grpc.NodeStub(self.channel)


@dataclass
class Plugin(Stubs):
    sock: Path
    proc: subprocess.Popen[bytes]
    killed_by_test: bool = False


def controller_args(state: Path, pools: list[str], saveconfig: Path | None = None) -> list[str]:
    args = ["controller", "--state-dir", str(state)]
    for portal in PORTALS:
        args += ["--portal", portal]
    for pool in pools:
        args += ["--pool", pool]
    if saveconfig is not None:
        args += ["--saveconfig", str(saveconfig)]
    return args


def plugin_channel(sock: Path) -> grpc.Channel:
    """A channel to a plugin that is starting: gRPC's default reconnect backoff grows to tens of
    seconds while the socket is not there yet, which a slow start on the VM can make a timeout."""
    return grpc.insecure_channel(f"unix:{sock}", options=[("grpc.initial_reconnect_backoff_ms", 200),
                                                         ("grpc.min_reconnect_backoff_ms", 200),
                                                         ("grpc.max_reconnect_backoff_ms", 1000)])


@contextmanager
def running(args: list[str], sock: Path, log: Path | None = None, prefix: tuple[str, ...] = ()) -> Iterator[Plugin]:
    """One plugin process serving on sock; stopped with SIGTERM (and checked to stop cleanly).
    prefix runs it through another command, e.g. ("ip", "netns", "exec", NAME)."""
    out = open(log, "ab") if log else None  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "csi_iscsi", args[0], "--endpoint", f"unix://{sock}",
                             *args[1:]], stdout=out, stderr=out)
    channel = plugin_channel(sock)
    plugin: Plugin | None = None
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=60)
        except grpc.FutureTimeoutError:
            raise RuntimeError(f"plugin {args[0]} did not start (exit {proc.poll()})") from None
        plugin = Plugin(channel, sock, proc)
        yield plugin
    finally:
        channel.close()
        if plugin is None or not plugin.killed_by_test:
            proc.terminate()
        rc = proc.wait(timeout=60)
        if out:
            out.close()
        if plugin is None or not plugin.killed_by_test:
            assert rc == 0, f"plugin {args[0]} exited with {rc} on SIGTERM"


def session_initiators(volume_id: str) -> set[str]:
    """The initiator name each live session of this volume's target presented (from sysfs)."""
    iqn = contract.target_iqn(volume_id)
    return {(s / "initiatorname").read_text().strip() for s in Path("/sys/class/iscsi_session").glob("session*")
            if (s / "targetname").read_text().strip() == iqn}


def mount_cap(mode: int = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER,
              fs_type: str = "ext4") -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs_type),
                                    access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))


def block_cap(mode: int = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                                    access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))
