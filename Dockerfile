# One image for both plugins: `csi-iscsi controller ...` on the target node, `csi-iscsi node ...`
# on every worker. Build: image/build (here, from a base the project makes itself) or, where the
# registry is reachable, `docker build -t csi-iscsi:0.1.0 .`.
#
# Pinned to a dated Debian tag, so a rebuild gets the same release until this line changes.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-20251229-slim

FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY csi_iscsi /src/csi_iscsi
# The venv sees the system site-packages so that Debian's python3-rtslib-fb (installed in the
# final stage) is the rtslib the controller uses, as on a Debian target node.
# pip-ca is optional: a CA bundle for builds behind a TLS-intercepting proxy; it is in no layer.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && python3 -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/pip install /src \
    && /opt/venv/bin/pip uninstall -y setuptools pip \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="csi-iscsi" \
      org.opencontainers.image.description="Kubernetes CSI driver for multipathed iSCSI volumes from a Linux LIO target" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-20251229-slim"
ENV DEBIAN_FRONTEND=noninteractive
# The storage tools, for nodes that run them from the image rather than the host's (--host-pid).
# python3-rtslib-fb drives LIO on the target node; lvm2 serves lvm-thin pools; socat forwards
# iscsid's control socket where nodes share one iscsid (kind, docs/e2e.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-rtslib-fb open-iscsi multipath-tools util-linux mount e2fsprogs xfsprogs lvm2 kmod socat \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && install -D -m 0644 /etc/iscsi/iscsid.conf /usr/share/csi-iscsi/iscsid.conf
# (Kept outside /etc/iscsi, which the node pod mounts from the host: the chart's iscsi-config
# init container copies it to nodes that have none.)
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CSI_ENDPOINT=unix:///csi/csi.sock PYTHONUNBUFFERED=1
# 9808: the livenessprobe sidecar's /healthz; 9090: Prometheus metrics (--metrics-address).
EXPOSE 9808 9090
ENTRYPOINT ["csi-iscsi"]
CMD ["--help"]
