#!/usr/bin/env bash
# deploy/docker/build.sh: stage the build context and build the teeserve images.
#
#   deploy/docker/build.sh [--no-docker] [--context DIR] [--source DIR] [--tag TAG]
#                          [--broker-ca FILE] [--enclave-key FILE] [--build-arg NAME=VALUE ...]
#                          [server] [broker] [client]
#
# Stages DIR (default build/docker-context) with the teeserve wheel (dist/), install-venv.sh and, for
# the server, the broker's CA certificate (broker-ca.pem, public); then runs `docker build` for each
# image asked for (default: all three). --no-docker stops after staging: CI runs that and then the
# images' install step (install-venv.sh) itself, since no Docker engine runs there.
#
# The enclave signing key (--enclave-key, an RSA-3072 PEM from gramine-sgx-gen-private-key) is passed
# as a BuildKit secret: it is never copied into the context or a layer. Server build args: MODEL_NAME,
# MODE (gramine-mounts|in-process), PROVISIONER, BROKER, ENCLAVE_SIZE, THREADS, ISV_PROD_ID, ISV_SVN.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
context=$repo/build/docker-context
source=$repo
tag=${TAG:-dev}
docker=1
broker_ca=
enclave_key=
build_args=()
images=()
python=${PYTHON:-python3}

die() { echo "build.sh: $*" >&2; exit 2; }

while [ "$#" -gt 0 ]; do
    case $1 in
        --no-docker) docker=0 ;;
        --context) context=$2; shift ;;
        --source) source=$2; shift ;;
        --tag) tag=$2; shift ;;
        --broker-ca) broker_ca=$2; shift ;;
        --enclave-key) enclave_key=$2; shift ;;
        --build-arg) build_args+=(--build-arg "$2"); shift ;;
        server|broker|client) images+=("$1") ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[ "${#images[@]}" -gt 0 ] || images=(server broker client)

want_server=0
for image in "${images[@]}"; do [ "$image" = server ] && want_server=1; done
if [ "$want_server" = 1 ]; then
    [ -n "$broker_ca" ] || die "the server image needs --broker-ca FILE (the broker's CA certificate, a trusted file)"
    [ -f "$broker_ca" ] || die "--broker-ca $broker_ca: no such file"
    if grep -q "PRIVATE KEY" "$broker_ca"; then die "--broker-ca $broker_ca holds a private key; give the CA certificate"; fi
    if [ "$docker" = 1 ]; then
        [ -n "$enclave_key" ] || die "the server image needs --enclave-key FILE (signing key, mounted as a build secret)"
        [ -f "$enclave_key" ] || die "--enclave-key $enclave_key: no such file"
    fi
fi

rm -rf "$context"
mkdir -p "$context/dist"
"$python" -m pip wheel --quiet --no-deps --disable-pip-version-check ${PIP_WHEEL_ARGS:-} -w "$context/dist" "$source"
cp "$here/install-venv.sh" "$context/install-venv.sh"
if [ "$want_server" = 1 ]; then
    cp "$broker_ca" "$context/broker-ca.pem"
fi
echo "build.sh: staged $context:" && (cd "$context" && find . -type f | sort)

[ "$docker" = 1 ] || exit 0
export DOCKER_BUILDKIT=1
for image in "${images[@]}"; do
    secret=()
    if [ "$image" = server ]; then secret=(--secret "id=enclave-key,src=$enclave_key"); fi
    docker build -f "$here/$image.Dockerfile" "${secret[@]}" "${build_args[@]}" -t "teeserve-$image:$tag" "$context"
done
