#!/usr/bin/env bash
# Build a small Apptainer test image in which a host virtualenv runs unchanged.
#
# Usage: tests/runtimes/build-test-image.sh OUT.sif VENV_DIR
#
# The image is a debootstrap minbase root filesystem of the host's own Debian release (its
# libm must be the host's for results to agree bit for bit: glibc's atanh, sinh and cosh
# differ in the last bit between releases, and the Poincare ball uses them), stamped with a
# BUILD_ID in its /etc/os-release that tells it apart from the host, plus a copy of the
# CPython that VENV_DIR is based on, at the same absolute path and without its site-packages. With
# VENV_DIR bind-mounted at its own path, VENV_DIR/bin/python then runs on the image's libc
# and the image's CPython, and VENV_DIR/bin comes first on PATH even under --cleanenv.
# Needs root and a working `apptainer` (tests/runtimes/install-apptainer.sh).
#
# Environment: HIERPIPE_IMAGE_SUITE (default: the host's VERSION_CODENAME), HIERPIPE_IMAGE_CACHE
# (default /var/cache/hierpipe-test-image: one tarball per suite), DEBIAN_MIRROR,
# HIERPIPE_IMAGE_MKSQUASHFS_ARGS (default: zstd level 3).
set -euo pipefail

start=$SECONDS
die() { echo "build-test-image: $1" >&2; exit "${2:-1}"; }
say() { echo "build-test-image: $1 ($((SECONDS - start)) s)"; }

[ $# -eq 2 ] || die "usage: $0 OUT.sif VENV_DIR" 2
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and apptainer build need it)" 2
command -v apptainer >/dev/null || die "apptainer not found: run tests/runtimes/install-apptainer.sh first" 2
out=$(realpath -m "$1")
venv=$(realpath "$2") || die "no such VENV_DIR: $2" 2
[ -r "$venv/pyvenv.cfg" ] || die "$venv/pyvenv.cfg not found: VENV_DIR must be a virtualenv" 2
# The path is written into a shell script inside the image; keep it free of quoting traps.
[[ "$venv" =~ ^[A-Za-z0-9._/+-]+$ ]] || die "VENV_DIR path has characters this script does not quote: $venv" 2

host_suite=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"')
suite="${HIERPIPE_IMAGE_SUITE:-$host_suite}"
[ -n "$suite" ] || die "no VERSION_CODENAME in /etc/os-release: set HIERPIPE_IMAGE_SUITE" 2
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${HIERPIPE_IMAGE_CACHE:-/var/cache/hierpipe-test-image}"

# The venv's `home` is its base interpreter's bin directory; asking that interpreter for
# its prefix follows whatever symlinks the layout uses.
home=$(sed -n 's/^home *= *//p' "$venv/pyvenv.cfg" | head -n 1)
if [ -z "$home" ] || [ ! -x "$home/python3" ]; then
  die "no python3 in '$home' (the home of $venv/pyvenv.cfg)" 2
fi
read -r prefix pyver < <("$home/python3" -c 'import sys; print(sys.base_prefix, "%d.%d" % sys.version_info[:2])')
prefix=$(realpath "$prefix")
# A distribution's Python lives in /usr, which would overwrite the image's own system.
case "$prefix" in /|/usr|/usr/local|/bin|/lib) die "base Python prefix $prefix is a system directory; use a standalone CPython (pyenv, uv python)" 2 ;; esac

mkdir -p "$cache" "$(dirname "$out")"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT

# What CPython's own extension modules link against (ctypes, ssl, sqlite3, readline,
# curses, expat) beyond minbase; bookworm names some of them without the t64 suffix.
libs_for() {
  case "$1" in
    bookworm) echo libffi8,libexpat1,libsqlite3-0,libssl3,libreadline8,libncursesw6 ;;
    *) echo libffi8,libexpat1,libsqlite3-0,libssl3t64,libreadline8t64,libncursesw6 ;;
  esac
}

# debootstrap is the slow step (about 20-90 s), so its result is kept as a tarball keyed
# by suite and package list; only a successful bootstrap is written, atomically.
bootstrap() {
  local s=$1 include tarball root
  include=$(libs_for "$s")
  tarball="$cache/$s-minbase-$(echo "$include" | md5sum | cut -c1-8).tar"
  if [ ! -s "$tarball" ]; then
    root="$work/bootstrap-$s"
    if ! command -v debootstrap >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
    fi
    debootstrap --variant=minbase --include="$include" "$s" "$root" "$mirror" >"$work/debootstrap-$s.log" 2>&1 \
      || { tail -n 5 "$work/debootstrap-$s.log" >&2; return 1; }
    # The package cache and lists are of no use in a read-only image.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.tmp.$$" . && mv -f "$tarball.tmp.$$" "$tarball"
    rm -rf "$root"
    say "bootstrapped $s into $tarball"
  fi
  echo "$tarball" >"$work/tarball"
}

bootstrap "$suite" || die "debootstrap of $suite failed"
root="$work/rootfs"
mkdir "$root"
tar -C "$root" -xf "$(cat "$work/tarball")"
say "unpacked the $suite root filesystem"

# os-release's BUILD_ID names an image build (freedesktop os-release(5)); what a job reads
# from it can only come from this image, never from the host. /etc/os-release is a link to
# /usr/lib/os-release in Debian: replace the link by a stamped copy.
build_id="hierpipe-test-$(date -u +%Y%m%dT%H%M%S)-$$"
cp --remove-destination "$root/usr/lib/os-release" "$root/etc/os-release"
echo "BUILD_ID=$build_id" >>"$root/etc/os-release"

# The interpreter goes to the same absolute path, because the venv's bin/python is a
# symlink to it. Its site-packages stays behind (the venv brings its own), and so do the
# test suite and the static-library config directory, which nothing at run time reads.
rel=${prefix#/}
tar -C / --exclude="$rel/lib/python$pyver/site-packages/*" --exclude="$rel/lib/python$pyver/test" \
  --exclude="$rel/lib/python$pyver/config-*" -cf - "$rel" | tar -C "$root" -xf -
mkdir -p "$root$prefix/lib/python$pyver/site-packages"
chroot "$root" "$prefix/bin/python$pyver" -c \
  'import bz2, ctypes, curses, decimal, hashlib, lzma, pyexpat, readline, sqlite3, ssl, uuid, zlib' \
  || die "the copied CPython misses a library in the $suite image (see the error above)"
say "copied CPython $pyver from $prefix"

# Apptainer sources every /.singularity.d/env/*.sh in order, also under --cleanenv, and
# `apptainer build` from a directory keeps files it does not generate itself.
mkdir -p "$root/.singularity.d/env"
cat >"$root/.singularity.d/env/90-hierpipe.sh" <<EOF
# Written by tests/runtimes/build-test-image.sh: the host virtualenv bind-mounted at $venv.
VIRTUAL_ENV=$venv
PATH="$venv/bin:\$PATH"
export VIRTUAL_ENV PATH
EOF
chmod 0755 "$root/.singularity.d/env/90-hierpipe.sh"

# apptainer build copies the tree into its temporary directory; keep that on our disk.
# zstd compresses about 5x faster than the default gzip here, for a similar size; the
# check below fails loudly if a kernel cannot mount it.
tmp_sif="$(dirname "$out")/.$(basename "$out").tmp.$$"
APPTAINER_TMPDIR="$work" apptainer -s build \
  --mksquashfs-args "${HIERPIPE_IMAGE_MKSQUASHFS_ARGS:--comp zstd -Xcompression-level 3}" \
  "$tmp_sif" "$root" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; rm -f "$tmp_sif"; die "apptainer build failed"; }
say "built the image ($(du -h "$tmp_sif" | cut -f1))"

# --no-home: root's host home would otherwise hide the image's copy under /root. An empty
# base site-packages tells the image's copy from the host's.
# shellcheck disable=SC2016  # the script is expanded inside the image, not here
check=$(apptainer -s exec --cleanenv --no-home --bind "$venv" "$tmp_sif" sh -c \
  '. /etc/os-release; echo "$ID $(command -v python)" \
   "$(python -c "import sys; print(sys.base_prefix)")" "$(ls -A "$1" | wc -l)"' \
  sh "$prefix/lib/python$pyver/site-packages") \
  || { rm -f "$tmp_sif"; die "the new image does not run $venv/bin/python"; }
[ "$check" = "debian $venv/bin/python $prefix 0" ] \
  || { rm -f "$tmp_sif"; die "unexpected result inside the image: '$check'"; }
mv -f "$tmp_sif" "$out"
say "wrote $out: $(sed -n 's/^PRETTY_NAME=//p' "$root/etc/os-release" | tr -d '"') build $build_id, $venv/bin on the image's copy of $prefix"
