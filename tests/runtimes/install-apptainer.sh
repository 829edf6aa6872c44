#!/usr/bin/env bash
# Install a real Apptainer for the container tests, as root, on Debian 12 (bookworm).
#
# Usage: tests/runtimes/install-apptainer.sh
#
# Bookworm ships no apptainer, and the one in Debian unstable (sid) needs glibc >= 2.38.
# So the pinned sid .deb and sid's libc6 are downloaded with a private apt configuration
# (the host's apt state is left alone), unpacked with dpkg-deb -x (never dpkg -i, which
# would replace the host's libc), and apptainer's ELF binaries are patched to load sid's
# libc from a private directory. Files go to the paths compiled into the binary
# (/usr/bin, /etc/apptainer, /usr/lib/x86_64-linux-gnu/apptainer, /var/lib/apptainer).
# A second call returns in about a second once the pinned version is installed and works.
# Override the pin with APPTAINER_DEB_VERSION=<debian version> when sid has moved on.
set -euo pipefail

PIN="${APPTAINER_DEB_VERSION:-1.4.5-2}"
MIRROR="${APPTAINER_MIRROR:-http://deb.debian.org/debian}"
CACHE="${APPTAINER_CACHE:-/var/cache/hierpipe-apptainer}"
LIBDIR=/usr/lib/x86_64-linux-gnu/apptainer
GLIBC="$LIBDIR/glibc"
MARKER=/etc/apptainer/hierpipe-install
start=$SECONDS

die() { echo "install-apptainer: $1" >&2; exit "${2:-1}"; }
[ "$(id -u)" = 0 ] || die "must run as root (it writes /usr, /etc and /var)" 2
{ [ -r /etc/debian_version ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; } \
  || die "needs a Debian/apt-based system" 2
[ "$(dpkg --print-architecture)" = amd64 ] || die "only amd64 is supported" 2

# Root's capability bounding set may lack some capabilities (CAP_SYS_RESOURCE in this
# sandbox); apptainer's default "full" set then fails every exec with "Requesting
# capability set ...". Grant root exactly the capabilities of its bounding set instead.
# Names in kernel bit order (linux/capability.h).
CAPS=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP
  LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER
  SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE
  SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP
  MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF
  CHECKPOINT_RESTORE)
bnd=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
granted=()
for i in "${!CAPS[@]}"; do
  if (( (bnd >> i) & 1 )); then granted+=("CAP_${CAPS[i]}"); fi
done
granted_csv=$(IFS=,; echo "${granted[*]}")

# The check that matters is a real exec; a static binary (Debian's ldconfig) in a scratch
# directory makes a container without any image, in well under a second.
smoke_test() {
  local dir rc=0
  dir=$(mktemp -d)
  mkdir -p "$dir/sbin" "$dir/etc" "$dir/tmp" "$dir/var/tmp"
  touch "$dir/etc/passwd" "$dir/etc/group"
  cp "$(command -v ldconfig || echo /sbin/ldconfig)" "$dir/sbin/ldconfig"
  /usr/bin/apptainer -s exec --cleanenv "$dir" /sbin/ldconfig --version >/dev/null || rc=$?
  rm -rf "$dir"
  return "$rc"
}

if [ -x /usr/bin/apptainer ] && [ -r "$MARKER" ] \
  && grep -qx "apptainer=$PIN caps=$granted_csv" "$MARKER" && smoke_test 2>/dev/null; then
  echo "install-apptainer: $(/usr/bin/apptainer --version) already installed ($((SECONDS - start)) s)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
need=()
for tool in patchelf:patchelf mksquashfs:squashfs-tools newuidmap:uidmap; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# A private apt state for sid, so the host's sources and package lists stay bookworm.
APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR sid main" >"$APT/sources.list"
apt_sid=(-q -o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o Dir::State::status=/dev/null
  -o APT::Architecture=amd64 -o APT::Architectures=amd64 -o APT::Sandbox::User=root)

deb="$CACHE/debs/apptainer_${PIN}_amd64.deb"
libc_deb=$(find "$CACHE/debs" -name 'libc6_*_amd64.deb' | head -n 1)
# Downloaded .debs are kept, so a machine that has them keeps working when sid moves on.
if [ ! -s "$deb" ] || [ -z "$libc_deb" ]; then
  apt-get "${apt_sid[@]}" update >/dev/null || die "apt-get update of sid from $MIRROR failed"
  # `apt-cache show pkg=version` exits 0 for a missing version; madison lists the real ones.
  have=$(apt-cache "${apt_sid[@]}" madison apptainer | awk '{print $3}' | paste -sd' ')
  [[ " $have " == *" $PIN "* ]] \
    || die "sid on $MIRROR no longer has apptainer $PIN (it has: ${have:-none}); update PIN in $0 or set APPTAINER_DEB_VERSION"
  rm -f "$CACHE"/debs/*.deb
  (cd "$CACHE/debs" && apt-get "${apt_sid[@]}" download "apptainer=$PIN" libc6 >/dev/null)
  libc_deb=$(find "$CACHE/debs" -name 'libc6_*_amd64.deb' | head -n 1)
  [ -n "$libc_deb" ] || die "apt-get download of sid's libc6 gave no file"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dpkg-deb -x "$deb" "$stage/app"
dpkg-deb -x "$libc_deb" "$stage/libc"
mkdir -p "$stage/app$GLIBC"
cp -a "$stage/libc/usr/lib/x86_64-linux-gnu/." "$stage/app$GLIBC/"
# Every ELF executable that apptainer runs: the CLI and the starter (offsetpreload.so is a
# preload library for host FUSE tools, unused by root, and must keep the host's libc).
for bin in "$stage/app/usr/bin/apptainer" "$stage/app$LIBDIR/bin/starter"; do
  patchelf --set-interpreter "$GLIBC/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$GLIBC" "$bin"
done

# Replace whole directories, so a reinstall starts from the .deb's stock configuration.
rm -rf /etc/apptainer "$LIBDIR"
cp -a "$stage/app/etc/apptainer" /etc/apptainer
cp -a "$stage/app$LIBDIR" "$LIBDIR"
mkdir -p /var/lib/apptainer
cp -a "$stage/app/var/lib/apptainer/." /var/lib/apptainer/
install -m 0755 "$stage/app/usr/bin/apptainer" /usr/bin/apptainer.new
mv -f /usr/bin/apptainer.new /usr/bin/apptainer
# Debian provides `singularity` through alternatives (postinst); Snakemake accepts either.
[ -e /usr/bin/singularity ] || ln -s apptainer /usr/bin/singularity

# Snakemake builds the exec command itself, so the capability fix lives in the config.
sed -i 's/^root default capabilities = .*/root default capabilities = file/' /etc/apptainer/apptainer.conf
/usr/bin/apptainer -s capability add --user root "$granted_csv"

smoke_test || die "apptainer $PIN is installed but 'apptainer exec' fails (see the error above)"
echo "apptainer=$PIN caps=$granted_csv" >"$MARKER"
echo "install-apptainer: installed $(/usr/bin/apptainer --version) (deb $PIN, $(basename "$libc_deb" .deb)) in $((SECONDS - start)) s"
