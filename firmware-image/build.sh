#!/bin/bash
# Build the school gateway SD-card image from Debian bookworm packages.
#
#   firmware-image/build.sh [--arch arm64|amd64] [--test] [--wheel FILE] [--out DIR]
#                           [--work DIR] [--base-only]
#
# Stages (each logged with its duration):
#   1. base    - mmdebstrap of Debian bookworm (kernel, initramfs, Pi
#                firmware, systemd, Mosquitto, Python and the Debian-packaged
#                dependencies). Cached as work/base-<arch>-<hash>.tar, keyed
#                by the package lists and this stage's inputs.
#   2. wheels  - the gateway wheel (built from this repo unless --wheel) and,
#                for the target platform, PyPI wheels of the dependencies
#                whose bookworm packages are older than pyproject's pins.
#   3. rootfs  - the base unpacked, then customize.sh: the venv in
#                /opt/school-gateway, units, user, first-boot provisioning.
#   4. image   - genimage assembles boot (vfat), rootA, rootB (empty, for
#                A/B updates) and data (ext4, /var/lib/school-gateway) into
#                out/school-gateway-<arch>.img. No loop devices, no mounts.
#
# --test adds a one-shot unit that prints the state of gateway.service and
# mosquitto.service to the console and powers off, plus a provisioning file
# pointing at an academy broker on 127.0.0.1 (nothing listens there), for
# tests/test_image_boot.py. Never flash a --test image.
#
# Needs root and the Debian packages: mmdebstrap qemu-user-static
# binfmt-support genimage dosfstools mtools e2fsprogs python3-venv.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
arch=arm64
test_image=no
base_only=no
wheel=""
out="$here/out"
work="$here/work"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="$2"; shift 2 ;;
        --test) test_image=yes; shift ;;
        --base-only) base_only=yes; shift ;;
        --wheel) wheel="$(realpath "$2")"; shift 2 ;;
        --out) out="$(realpath -m "$2")"; shift 2 ;;
        --work) work="$(realpath -m "$2")"; shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$arch" in
    arm64) pip_platform=aarch64; qemu_arch=aarch64 ;;
    amd64) pip_platform=x86_64; qemu_arch=x86_64 ;;
    *) echo "build.sh: --arch must be arm64 or amd64, not $arch" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (mmdebstrap, chroot, file ownership)" >&2; exit 1; }
for tool in mmdebstrap genimage mkfs.vfat mcopy mke2fs python3; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing; apt-get install mmdebstrap genimage dosfstools mtools e2fsprogs" >&2; exit 1; }
done

mkdir -p "$out" "$work"
suffix="$arch$([ "$test_image" = yes ] && echo -test || true)"
log() { printf '[build %s] %s\n' "$(date +%T)" "$*"; }
stage_start=0
begin() { stage_start=$SECONDS; log "$1..."; }
end() { log "$1 done in $((SECONDS - stage_start)) s"; }

# Foreign architectures run through qemu-user via binfmt_misc.
if [ "$(dpkg --print-architecture)" != "$arch" ]; then
    command -v "qemu-$qemu_arch-static" >/dev/null || { echo "build.sh: apt-get install qemu-user-static binfmt-support" >&2; exit 1; }
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    update-binfmts --enable "qemu-$qemu_arch" 2>/dev/null || true
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$qemu_arch" ] || { echo "build.sh: binfmt for qemu-$qemu_arch not registered" >&2; exit 1; }
fi

# 1. base -------------------------------------------------------------------
packages="$(cat "$here/packages.txt" "$here/packages-$arch.txt" | sed 's/#.*//' | xargs | tr ' ' ',')"
base_key="$(cat "$here/packages.txt" "$here/packages-$arch.txt" "$here/base-hooks.sh" | sha256sum | cut -c1-12)"
base="$work/base-$arch-$base_key.tar"
if [ -f "$base" ]; then
    log "base: reusing $(basename "$base")"
else
    begin "base (mmdebstrap $arch)"
    rm -f "$work/base-$arch-"*.tar
    # INITRD=No: the kernel's postinst skips mkinitramfs (slow under
    # emulation); base-hooks.sh customize runs update-initramfs once.
    INITRD=No mmdebstrap --variant=minbase --format=tar --architectures="$arch" \
        --components=main,non-free-firmware \
        --include="$packages" \
        --essential-hook="$here/base-hooks.sh essential \"\$1\" $arch" \
        --customize-hook="$here/base-hooks.sh customize \"\$1\" $arch" \
        bookworm "$base.partial" \
        "deb $mirror bookworm main non-free-firmware" \
        "deb $mirror bookworm-updates main non-free-firmware" \
        "deb $security_mirror bookworm-security main non-free-firmware"
    mv "$base.partial" "$base"
    end "base"
fi

[ "$base_only" = yes ] && exit 0

# 2. wheels -----------------------------------------------------------------
begin "wheels"
wheels="$work/wheels-$arch"
rm -rf "$wheels"; mkdir -p "$wheels"
if [ -z "$wheel" ]; then
    # From a clean copy of the source: setuptools reuses an in-tree build/
    # directory, which can carry modules since deleted into the wheel.
    source_copy="$work/source"
    rm -rf "$source_copy"; mkdir -p "$source_copy"
    tar -C "$repo" --exclude=./.git --exclude=./build --exclude=./.venv --exclude='*.egg-info' \
        --exclude=./firmware-image/work --exclude=./firmware-image/out -cf - . \
        | tar -C "$source_copy" -xf -
    python3 -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$source_copy"
    rm -rf "$source_copy"
else
    cp "$wheel" "$wheels/"
fi
gateway_wheel="$(ls "$wheels"/*.whl | head -n1)"
# Each dependency (and its own) as a wheel for the target, pure or
# manylinux; pip in the image installs only those that bookworm's packages
# do not satisfy. A dependency without such a wheel would have to come
# from Debian (packages.txt); today every one has one (netifaces-plus too).
requirements="$(python3 - "$gateway_wheel" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    for line in wheel.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            print(line.split(":", 1)[1].split(";")[0].replace(" ", ""))
PY
)"
for requirement in $requirements; do
    python3 -m pip download --quiet --disable-pip-version-check --dest "$wheels" \
        --only-binary=:all: --python-version 3.11 --implementation cp \
        --abi cp311 --abi abi3 --abi none --platform any \
        --platform "manylinux2014_$pip_platform" --platform "manylinux_2_28_$pip_platform" \
        --platform "manylinux_2_17_$pip_platform" "$requirement" 2>/dev/null \
        || log "wheels: no $arch wheel for $requirement; the Debian package must provide it"
done
end "wheels ($(ls "$wheels" | wc -l) files)"

# 3. rootfs -----------------------------------------------------------------
begin "rootfs"
rootfs="$work/rootfs-$suffix"
rm -rf "$rootfs"; mkdir -p "$rootfs"
tar --numeric-owner -xpf "$base" -C "$rootfs"
"$here/customize.sh" "$rootfs" "$wheels" "$repo" "$test_image"
end "rootfs"

# 4. image ------------------------------------------------------------------
begin "image (genimage)"
image_name="school-gateway-$suffix.img"
genimage_tmp="$work/genimage-tmp-$suffix"
rm -rf "$genimage_tmp" "$out/$image_name"
data_owner="$(awk -F: '$1 == "school-gateway" { print $3 ":" $4 }' "$rootfs/etc/passwd")"
sed -e "s|@IMAGE@|$image_name|" -e "s|@DATA_OWNER@|$data_owner|" \
    "$here/genimage.cfg" > "$work/genimage-$suffix.cfg"
genimage_out="$work/genimage-out-$suffix"
rm -rf "$genimage_out"; mkdir -p "$genimage_out"
genimage --rootpath "$rootfs" --tmppath "$genimage_tmp" --inputpath "$genimage_out" \
    --outputpath "$genimage_out" --config "$work/genimage-$suffix.cfg"
mv "$genimage_out/$image_name" "$out/$image_name"
rm -rf "$genimage_tmp" "$genimage_out"
# The kernel and initrd beside the image, for booting it under QEMU.
cp "$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n1)" "$out/vmlinuz-$suffix"
cp "$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -n1)" "$out/initrd.img-$suffix"
end "image"
ls -l --block-size=M "$out/$image_name"
log "image: $out/$image_name (kernel: $out/vmlinuz-$suffix, initrd: $out/initrd.img-$suffix)"
