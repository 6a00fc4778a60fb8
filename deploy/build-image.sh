#!/usr/bin/env bash
# Builds the gateway image from deploy/Dockerfile in two steps, so the build itself needs
# no package index (only the host reaches PyPI):
#   1. wheels: iotgw and every dependency, as wheels for each target platform's Python and
#      CPU, into wheels/<arch>/ (amd64, arm64) in the build context;
#   2. image: docker buildx (or buildah) installs them with pip --no-index.
#
#   deploy/build-image.sh                       # wheels + image for this machine's arch
#   deploy/build-image.sh wheels                # only step 1
#   PLATFORMS=linux/amd64,linux/arm64 deploy/build-image.sh -- --push
#   BUILDER=buildah deploy/build-image.sh -- --build-arg BASE_IMAGE=localhost/base
# Arguments after `--` go to `docker buildx build` / `buildah bud` as they are.
#
# Environment: PLATFORMS (comma-separated, default linux/<this arch>), IMAGE (tag, default
# iotgw:latest), BUILDER (docker or buildah; default docker if installed), WHEELS (dir,
# default wheels/ in the repo), PYTHON_VERSION and GLIBC: the base image's Python and C
# library (3.11 and 2.36 for bookworm, the default base's release); wheels are picked for
# them, not for the host.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "build-image: $*" >&2; exit 2; }

only_wheels=false
if [ "${1:-}" = wheels ]; then only_wheels=true; shift; fi
if [ "${1:-}" = -- ]; then shift; elif [ $# -gt 0 ]; then die "unexpected argument: $1 (builder arguments go after --)"; fi

native_arch() {
    case "$(uname -m)" in
        x86_64) echo amd64 ;; aarch64|arm64) echo arm64 ;; *) die "unsupported machine $(uname -m)" ;;
    esac
}
PLATFORMS=${PLATFORMS:-linux/$(native_arch)}
IMAGE=${IMAGE:-iotgw:latest}
WHEELS=${WHEELS:-$PWD/wheels}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
GLIBC=${GLIBC:-2.36}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python

# The wheel tags a manylinux system with this glibc accepts: every manylinux_2_N up to it
# and the legacy aliases (pip takes each --platform literally).
platform_tags() {
    local machine=$1 minor
    echo "--platform manylinux2014_$machine"
    for minor in $(seq 5 "${GLIBC#2.}"); do echo "--platform manylinux_2_${minor}_$machine"; done
    [ "$machine" = x86_64 ] && echo "--platform manylinux1_$machine --platform manylinux2010_$machine"
    return 0
}

build_wheels() {
    local platform=$1 arch machine dir
    arch=${platform#linux/}
    case "$arch" in
        amd64) machine=x86_64 ;; arm64) machine=aarch64 ;;
        *) die "no wheels for $platform: amd64 and arm64 only" ;;
    esac
    dir=$WHEELS/$arch
    rm -rf "$dir" && mkdir -p "$dir"
    echo "build-image: wheels for $platform (CPython $PYTHON_VERSION, glibc $GLIBC) -> $dir"
    "$PY" -m pip wheel -q --no-deps -w "$dir" "$STAGE"
    # shellcheck disable=SC2046  # the tags are words on purpose
    "$PY" -m pip download -q --only-binary=:all: --implementation cp \
        --python-version "$PYTHON_VERSION" --abi "cp${PYTHON_VERSION/./}" \
        $(platform_tags "$machine") -d "$dir" "$dir"/iotgw-*.whl
}

# iotgw's own wheel is built from a copy, so pip's in-tree build leaves the checkout clean.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
tar cf - --exclude='__pycache__' --exclude='*.egg-info' pyproject.toml README.md gateway drivers demo \
    | tar xf - -C "$STAGE"

IFS=, read -r -a platforms <<<"$PLATFORMS"
for platform in "${platforms[@]}"; do build_wheels "$platform"; done
$only_wheels && exit 0

[ "$WHEELS" -ef wheels ] || die "the Dockerfile copies wheels/ from the build context: leave WHEELS unset"
# docker only where an engine answers (a lone docker CLI cannot build), else buildah.
BUILDER=${BUILDER:-$(docker info >/dev/null 2>&1 && echo docker || echo buildah)}
case "$BUILDER" in
    docker)
        docker buildx build --platform "$PLATFORMS" -f deploy/Dockerfile -t "$IMAGE" "$@" . ;;
    buildah)
        # --format docker keeps the HEALTHCHECK (the OCI format has no field for it).
        if [ ${#platforms[@]} -gt 1 ]; then target=(--manifest "$IMAGE"); else target=(-t "$IMAGE"); fi
        buildah bud --format docker --platform "$PLATFORMS" -f deploy/Dockerfile \
            "${target[@]}" "$@" . ;;
    *) die "BUILDER is docker or buildah, not $BUILDER" ;;
esac
