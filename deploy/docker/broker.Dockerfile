# syntax=docker/dockerfile:1.7
# teeserve key broker image: `teeserve broker`, run by the model owner (docs/deploy.md, "Containers").
#
# Base: python:3.11-slim-bookworm (Debian 12, CPython 3.11, the version teeserve supports); pinned to
# the minor version and the Debian release, patch releases flow in. Pin a digest for a release.
# No secret in the image: the policy, the wrap key(s), the broker's TLS key and the PCCS settings are
# mounted at run time (Kubernetes Secrets/ConfigMaps), the audit log lives on a volume.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS venv
COPY install-venv.sh /tmp/install-venv.sh
COPY dist/ /tmp/dist/
RUN sh /tmp/install-venv.sh /usr/local/bin/python3.11 /opt/teeserve/venv /tmp/dist/teeserve-*.whl

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin teeserve \
    && mkdir -p /var/lib/teeserve /etc/teeserve \
    && chown teeserve:teeserve /var/lib/teeserve
COPY --from=venv /opt/teeserve/venv /opt/teeserve/venv
ENV PATH=/opt/teeserve/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/teeserve
VOLUME ["/var/lib/teeserve"]
EXPOSE 4433
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-m", "teeserve.deploy.probe", "--tcp", "127.0.0.1:4433"]
ENTRYPOINT ["teeserve", "broker"]
CMD ["--policy", "/etc/teeserve/policy/policy.toml", "--listen", "0.0.0.0:4433", \
     "--cert", "/etc/teeserve/tls/tls.crt", "--key", "/etc/teeserve/tls/tls.key", \
     "--audit", "/var/lib/teeserve/audit.sqlite"]
