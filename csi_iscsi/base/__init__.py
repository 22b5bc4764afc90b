"""What both halves of the driver stand on: errors, the one command runner, atomic files, locks,
redaction, fault points and the state directory's owner lock. Nothing here knows LIO, iSCSI
initiators or gRPC."""
