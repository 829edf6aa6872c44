#!/usr/bin/env bash
# The one install step of the hierpipe image, run by both recipes as root inside the image:
#   docker/Dockerfile   (RUN, one layer per step)      docker build -f docker/Dockerfile ...
#   docker/hierpipe.def (%post, both steps in a row)    apptainer build ... docker/hierpipe.def
#
#   install-image.sh dependencies   /opt/venv from the base image's python3.11, then every
#                                   package of requirements.lock, each checked against its hash
#   install-image.sh project        hierpipe itself (pyproject.toml, README.md, hierpipe/),
#                                   without dependencies; then a smoke test and clean-up
#
# Both recipes put their files at the same places under $BUILD before running a step:
#   $BUILD/install-image.sh, $BUILD/requirements.lock, $BUILD/src/{pyproject.toml,README.md,hierpipe}
#
# Layout for Apptainer: nothing under /root or /home (Apptainer mounts the host's home over
# the image), and every file world-readable, every directory world-traversable (Apptainer runs
# as the host user, whatever the build user was).
set -euo pipefail

BUILD=/opt/hierpipe-build
VENV=/opt/venv
PYTHON=${PYTHON:-python3.11}

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1

# chmod only what lacks a+r (or a+x on directories and executables): a plain `chmod -R a+rX`
# in the second Docker layer would copy every file of the first one (several GB) into it.
world_readable() {
    find "$@" \( ! -perm -a+r -o \( -type d ! -perm -a+x \) -o \( -perm -u+x ! -perm -a+x \) \) \
        -exec chmod a+rX {} +
}

dependencies() {
    local lock=$BUILD/requirements.lock
    "$PYTHON" -m venv "$VENV"
    # The build backend first, from the lock's own hashed wheels: the few locked packages that
    # PyPI has only as source (e.g. antlr4-python3-runtime) are then built with it
    # (--no-build-isolation) instead of with an unpinned setuptools fetched for the build.
    awk '/^[^ #]/ { keep = ($0 ~ /^(setuptools|wheel)==/) } keep && !/^ *#/' "$lock" \
        >"$BUILD/build-backend.lock"
    "$VENV/bin/pip" install --require-hashes --no-deps --only-binary :all: \
        -r "$BUILD/build-backend.lock"
    "$VENV/bin/pip" install --require-hashes --no-deps --no-build-isolation -r "$lock"
    # --no-deps installed exactly the lock: this fails if the lock misses a dependency
    "$VENV/bin/pip" check
    world_readable "$VENV"
}

project() {
    # --no-index: nothing is downloaded; the build backend is the locked setuptools
    "$VENV/bin/pip" install --no-deps --no-build-isolation --no-index "$BUILD/src"
    "$VENV/bin/hierpipe" --help >/dev/null
    "$VENV/bin/python" -c 'import torch, torchvision, hierpipe; print("torch", torch.__version__)'
    rm -rf "$BUILD"
    world_readable "$VENV"
}

case "${1:-}" in
dependencies) dependencies ;;
project) project ;;
*)
    echo "usage: $0 dependencies|project" >&2
    exit 2
    ;;
esac
