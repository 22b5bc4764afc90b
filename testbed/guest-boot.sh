#!/bin/bash
# Runs inside the testbed VM at boot (copied into the control share by testbed/run): mounts the
# work tree and shared/, loads the storage modules, starts iscsid and multipathd, runs the
# command the host wrote to /ctl/cmd in /src and stores its exit status in /ctl/rc.
set -u
exec >>/ctl/output 2>&1
echo "testbed: guest up after $(cut -d' ' -f1 /proc/uptime) s (kernel $(uname -r))"
mkdir -p /src /shared
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 src /src
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro shared /shared 2>/dev/null || true
mkdir -p /images
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro images /images 2>/dev/null || true
for m in $(grep -v '^#' /etc/modules-load.d/csi-testbed.conf); do modprobe "$m"; done
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
# The drop-in users install on their workers (docs/multipath.md), from the tree under test; a
# multipathd that systemd started at boot reads it on reconfigure.
install -D -m 0644 /src/deploy/node/multipath-csi-iscsi.conf /etc/multipath/conf.d/csi-iscsi.conf
systemctl start iscsid.socket iscsid.service multipathd.service
multipathd reconfigure >/dev/null
udevadm settle
# Bytecode as an installed package has it (pip compiles at install), cached in the guest and out of
# the work tree: without it every process compiles the driver from source over 9p, which takes
# seconds under TCG (csi-iscsi status: 1.9 s of its 3.2 s was importing).
export PATH=/opt/venv/bin:$PATH PYTHONPATH=/src PYTHONPYCACHEPREFIX=/var/cache/csi-iscsi-pyc TESTBED=1 HOME=/root
export CSI_SANITY=/shared/bin/csi-sanity
cd /src
bash /ctl/cmd
echo $? >/ctl/rc.tmp && mv /ctl/rc.tmp /ctl/rc
