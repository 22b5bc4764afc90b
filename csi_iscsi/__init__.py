"""csi-iscsi: a Kubernetes CSI driver for iSCSI volumes served from a Linux LIO target."""

__version__ = "0.1.0"
