"""Node-side host operations: commands, iSCSI sessions, SCSI devices, multipath, filesystems."""
