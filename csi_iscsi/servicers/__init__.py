"""gRPC servicers: CSI requests in, domain calls out; no subprocesses, no rtslib here."""
