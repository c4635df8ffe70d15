# syntax=docker/dockerfile:1.7
# teeserve client image: `teeserve client predict|bench` for requesters (docs/deploy.md, "Containers").
#
# Base: python:3.11-slim-bookworm (see broker.Dockerfile). No secret in the image: the CA certificate
# and the client certificate and key for mutual TLS are mounted at run time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS venv
COPY install-venv.sh /tmp/install-venv.sh
COPY dist/ /tmp/dist/
RUN sh /tmp/install-venv.sh /usr/local/bin/python3.11 /opt/teeserve/venv /tmp/dist/teeserve-*.whl

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin teeserve
COPY --from=venv /opt/teeserve/venv /opt/teeserve/venv
ENV PATH=/opt/teeserve/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /work
# A command-line tool that runs and exits: there is no long-running service to check.
HEALTHCHECK NONE
ENTRYPOINT ["teeserve", "client"]
CMD ["--help"]
