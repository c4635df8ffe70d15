# syntax=docker/dockerfile:1.7
# teeserve server image: `teeserve serve` inside a Gramine SGX enclave (docs/deploy.md, "Containers").
#
# Base: gramineproject/gramine:1.8-jammy, pinned by tag: Gramine 1.8 (its secret-provisioning library
# speaks TLS 1.3 and sends TCG DICE evidence, which teeserve's broker verifies) on Ubuntu 22.04, whose
# python3.11 is the interpreter the enclave runs. The Gramine build is part of MRENCLAVE: for a release,
# pin the digest as well (--build-arg GRAMINE_IMAGE=gramineproject/gramine:1.8-jammy@sha256:...).
#
# Build context: what deploy/docker/build.sh stages (the teeserve wheel in dist/, install-venv.sh and
# broker-ca.pem, the broker's public CA certificate, which becomes a trusted file of the enclave).
# Secrets: none in any layer. The enclave signing key is a BuildKit secret mounted for the signing step
# only (docker build --secret id=enclave-key,src=enclave-key.pem); the wrap key comes from the broker at
# run time; ssl.cfg and the models are mounted encrypted at run time under /srv/teeserve.
ARG GRAMINE_IMAGE=gramineproject/gramine:1.8-jammy

FROM ${GRAMINE_IMAGE} AS venv
# Ubuntu's packages are not version-pinned: the base image tag fixes the release and security updates
# are wanted; the exact files end up hashed in the manifest (MRENCLAVE), which is what the broker pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
COPY install-venv.sh /tmp/install-venv.sh
COPY dist/ /tmp/dist/
RUN sh /tmp/install-venv.sh /usr/bin/python3.11 /opt/teeserve/venv /tmp/dist/teeserve-*.whl
# The manifest template is rendered here, with jinja2 from a throwaway venv on PYTHONPATH: the
# enclave's venv (every file of it measured) carries only what the server runs. The paths it inspects
# (/usr/lib/python3.11, /opt/teeserve/venv) are the same in the runtime stage.
# Everything below is measured: the model name and paths, the broker address, enclave size, threads.
ARG MODEL_NAME=digits
ARG MODE=gramine-mounts
ARG PROVISIONER=teeserve
ARG BROKER=teeserve-broker:4433
ARG ENCLAVE_SIZE=4G
ARG THREADS=64
ARG ISV_PROD_ID=1
ARG ISV_SVN=1
RUN python3.11 -m venv /tmp/render \
    && /tmp/render/bin/pip install --no-cache-dir --disable-pip-version-check jinja2==3.1.6 \
    && mkdir -p /opt/teeserve/enclave \
    && PYTHONPATH=/tmp/render/lib/python3.11/site-packages /opt/teeserve/venv/bin/teeserve gramine manifest \
        --python /opt/teeserve/venv/bin/python3 \
        --model-dir "/srv/teeserve/models/${MODEL_NAME}" --model-name "${MODEL_NAME}" \
        --ssl-config /srv/teeserve/tls/ssl.cfg \
        --broker "${BROKER}" --broker-ca /opt/teeserve/broker-ca.pem \
        --mode "${MODE}" --provisioner "${PROVISIONER}" \
        --enclave-size "${ENCLAVE_SIZE}" --threads "${THREADS}" \
        --isv-prod-id "${ISV_PROD_ID}" --isv-svn "${ISV_SVN}" \
        -o /opt/teeserve/enclave/teeserve.manifest.template

FROM ${GRAMINE_IMAGE} AS runtime
# Same reason as above: the release is fixed by the base tag, the files by the manifest's hashes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin teeserve \
    && mkdir -p /srv/teeserve/models /srv/teeserve/tls /srv/teeserve/probe
COPY --from=venv /opt/teeserve/venv /opt/teeserve/venv
COPY broker-ca.pem /opt/teeserve/broker-ca.pem
COPY --from=venv /opt/teeserve/enclave/teeserve.manifest.template /opt/teeserve/enclave/
WORKDIR /opt/teeserve/enclave
# gramine-manifest hashes the trusted files where they finally are: in this stage.
RUN gramine-manifest teeserve.manifest.template teeserve.manifest

FROM runtime AS signed
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The RSA-3072 enclave signing key exists only inside this RUN (BuildKit secret mount, not a layer).
RUN --mount=type=secret,id=enclave-key,target=/run/secrets/enclave-key.pem,required=true \
    gramine-sgx-sign --manifest teeserve.manifest --output teeserve.manifest.sgx \
        --key /run/secrets/enclave-key.pem \
    && gramine-sgx-sigstruct-view teeserve.sig | tee teeserve.sigstruct.txt
# Not root: the enclave needs read/write on /dev/sgx_enclave and /dev/sgx_provision (group "sgx" on
# the host: add its gid with --group-add, or supplementalGroups in Kubernetes) and the AESM socket
# /var/run/aesmd/aesm.socket (mounted from the host's aesmd, or the SGX device plugin's).
USER 10001:10001
ENV TEESERVE_PROBE_CA=/srv/teeserve/probe/ca.pem \
    TEESERVE_PROBE_CERT=/srv/teeserve/probe/cert.pem \
    TEESERVE_PROBE_KEY=/srv/teeserve/probe/key.pem
EXPOSE 8500 8501
# Runs outside the enclave, next to it: TLS with the (mounted) probe client certificate, because
# client_verify: true refuses clients without one.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["/opt/teeserve/venv/bin/python3", "-m", "teeserve.deploy.probe", "https://127.0.0.1:8501/v1/health/live"]
ENTRYPOINT ["gramine-sgx", "teeserve"]
