#!/bin/bash
# Build the school gateway's disk image and its signed update bundle from
# Debian bookworm packages.
#
#   firmware-image/build.sh [--arch arm64|amd64] [--system-version V] [--bundle]
#                           [--bundle-only] [--signing-key KEY --signing-cert CERT]
#                           [--keyring CERT] [--fast-bundle] [--test]
#                           [--test-break-gateway]
#                           [--wheel FILE] [--out DIR] [--work DIR] [--base-only]
#
# Stages (each logged with its duration):
#   1. base    - mmdebstrap of Debian bookworm (kernel, initramfs, Pi
#                firmware, systemd, Mosquitto, RAUC, Python and the
#                Debian-packaged dependencies). Cached as
#                work/base-<arch>-<hash>.tar, keyed by the package lists and
#                this stage's inputs.
#   2. wheels  - the gateway wheel (built from this repo unless --wheel) and,
#                for the target platform, PyPI wheels of the dependencies
#                whose bookworm packages are older than pyproject's pins.
#   3. rootfs  - the base unpacked, then customize.sh: the venv in
#                /opt/school-gateway, units, user, first-boot provisioning,
#                RAUC's system.conf and keyring, the system version.
#   4. boot    - amd64: GRUB as a UEFI binary (grub-mkimage), its grub.cfg
#                (A/B selection for RAUC) and grubenv on the EFI partition.
#                arm64: config.txt/cmdline.txt of the Pi firmware.
#   5. image   - genimage assembles the boot partition (vfat), rootA (the
#                system), rootB (empty until the first update) and data (ext4,
#                /var/lib/school-gateway) into out/school-gateway-<arch>.img.
#                No loop devices, no mounts.
#   6. bundle  - with --bundle: out/school-gateway-<arch>-<V>.raucb, a RAUC
#                bundle (verity format) of the root filesystem, signed.
#
# --system-version V is written to /usr/lib/school-gateway/system-version and
# into the bundle's manifest (default: 0+dev). The bundle is signed with
# --signing-key/--signing-cert; without them a development key is made once in
# the work directory (work/dev-keys/) and reused, so every image and bundle
# built with one work directory trust each other. Never ship a development
# key: docs/security.md says who holds the real one. The image trusts
# --keyring (default: the signing certificate) as /etc/rauc/keyring.pem.
#
# --fast-bundle compresses the bundle's squashfs with zstd level 3 instead of
# RAUC's default (gzip): several times faster to build and to install under
# emulation, a little bigger. For tests; releases keep the smaller default.
#
# --test adds a one-shot unit that prints the state of the services, the
# booted slot and the system version to the console and then, as QEMU's
# fw_cfg tells it, powers off, stays up, or installs a bundle from a second
# disk; plus a provisioning file pointing at an academy broker on 127.0.0.1
# (nothing listens there) that fw_cfg may replace. For tests/image_kit.py.
# --test-break-gateway (tests only) makes gateway.service fail at every start:
# the "update whose gateway cannot start" of the rollback test. Never flash a
# --test image or install such a bundle on a box.
#
# Needs root and the Debian packages: mmdebstrap qemu-user-static
# binfmt-support genimage dosfstools mtools e2fsprogs python3-venv, and for
# amd64 grub-efi-amd64-bin grub-common, for --bundle rauc squashfs-tools openssl.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
arch=arm64
test_image=no
break_gateway=no
base_only=no
bundle=no
image=yes
system_version="0+dev"
signing_key=""
signing_cert=""
keyring=""
squashfs_args=""
wheel=""
out="$here/out"
work="$here/work"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="$2"; shift 2 ;;
        --test) test_image=yes; shift ;;
        --test-break-gateway) break_gateway=yes; shift ;;
        --base-only) base_only=yes; shift ;;
        --system-version) system_version="$2"; shift 2 ;;
        --bundle) bundle=yes; shift ;;
        --bundle-only) bundle=yes; image=no; shift ;;
        --signing-key) signing_key="$(realpath "$2")"; shift 2 ;;
        --signing-cert) signing_cert="$(realpath "$2")"; shift 2 ;;
        --keyring) keyring="$(realpath "$2")"; shift 2 ;;
        --fast-bundle) squashfs_args="-comp zstd -Xcompression-level 3"; shift ;;
        --wheel) wheel="$(realpath "$2")"; shift 2 ;;
        --out) out="$(realpath -m "$2")"; shift 2 ;;
        --work) work="$(realpath -m "$2")"; shift 2 ;;
        -h|--help) sed -n '2,56p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$arch" in
    arm64) pip_platform=aarch64; qemu_arch=aarch64 ;;
    amd64) pip_platform=x86_64; qemu_arch=x86_64 ;;
    *) echo "build.sh: --arch must be arm64 or amd64, not $arch" >&2; exit 2 ;;
esac
# The version is one line in the image and RAUC's manifest: keep it plain.
[[ "$system_version" =~ ^[A-Za-z0-9][A-Za-z0-9.+~_-]{0,63}$ ]] \
    || { echo "build.sh: --system-version must be 1-64 of [A-Za-z0-9.+~_-], not '$system_version'" >&2; exit 2; }
if { [ -n "$signing_key" ] && [ -z "$signing_cert" ]; } || { [ -z "$signing_key" ] && [ -n "$signing_cert" ]; }; then
    echo "build.sh: --signing-key and --signing-cert go together" >&2; exit 2
fi
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (mmdebstrap, chroot, file ownership)" >&2; exit 1; }
tools="mmdebstrap genimage mkfs.vfat mcopy mke2fs python3 openssl"
[ "$arch" = amd64 ] && tools="$tools grub-mkimage grub-editenv"
[ "$bundle" = yes ] && tools="$tools rauc mksquashfs"
for tool in $tools; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing; apt-get install mmdebstrap genimage dosfstools mtools e2fsprogs openssl grub-efi-amd64-bin grub-common rauc squashfs-tools" >&2; exit 1; }
done
if [ "$arch" = amd64 ] && [ ! -d /usr/lib/grub/x86_64-efi ]; then
    echo "build.sh: GRUB's x86_64-efi modules are missing; apt-get install grub-efi-amd64-bin" >&2; exit 1
fi

mkdir -p "$out" "$work"
suffix="$arch$([ "$test_image" = yes ] && echo -test || true)$([ "$break_gateway" = yes ] && echo -broken || true)"
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

# keys ---------------------------------------------------------------------
# The update-signing key and certificate, and the keyring the image trusts.
if [ -z "$signing_key" ]; then
    dev_keys="$work/dev-keys"
    signing_key="$dev_keys/signing.key.pem"
    signing_cert="$dev_keys/signing.cert.pem"
    if [ ! -f "$signing_cert" ]; then
        log "keys: making a DEVELOPMENT update-signing key in $dev_keys (never ship it)"
        mkdir -p "$dev_keys"; chmod 0700 "$dev_keys"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$signing_key.partial" -out "$signing_cert.partial" -days 3650 \
            -subj "/O=School gateway development/CN=school-gateway development update signing" \
            2>/dev/null
        mv "$signing_key.partial" "$signing_key"; mv "$signing_cert.partial" "$signing_cert"
    fi
fi
[ -n "$keyring" ] || keyring="$signing_cert"
log "keys: image trusts $keyring; bundles signed with $signing_cert"

# 3. rootfs -----------------------------------------------------------------
begin "rootfs"
rootfs="$work/rootfs-$suffix"
rm -rf "$rootfs"; mkdir -p "$rootfs"
tar --numeric-owner -xpf "$base" -C "$rootfs"
"$here/customize.sh" "$rootfs" "$wheels" "$repo" "$test_image" "$arch" "$break_gateway"
install -D -m 0644 "$keyring" "$rootfs/etc/rauc/keyring.pem"
printf '%s\n' "$system_version" > "$rootfs/usr/lib/school-gateway/system-version"
end "rootfs (system version $system_version)"

# 4. boot -------------------------------------------------------------------
begin "boot ($arch)"
if [ "$arch" = amd64 ]; then
    # GRUB as the removable-media UEFI binary: firmware without boot entries
    # (a fresh OVMF, a new PC) starts \EFI\BOOT\BOOTX64.EFI. Its modules are
    # built in (no module directory on the partition); with a prefix without
    # a device, GRUB reads $prefix/grub.cfg from the partition it came from.
    efi="$rootfs/boot/firmware/EFI/BOOT"
    mkdir -p "$efi"
    grub-mkimage --format=x86_64-efi --output="$efi/BOOTX64.EFI" --prefix=/EFI/BOOT \
        part_gpt fat ext2 normal configfile linux echo test regexp loadenv \
        search all_video efi_gop sleep reboot halt
    install -m 0644 "$here/grub/grub.cfg" "$efi/grub.cfg"
    # The factory boot selection: slot A holds a good system, B nothing yet.
    rm -f "$efi/grubenv"
    grub-editenv "$efi/grubenv" create
    grub-editenv "$efi/grubenv" set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
    # GRUB loads the kernel and initrd of the slot it boots from the slot's
    # own /boot, under fixed names.
    kernel="$(cd "$rootfs/boot" && ls vmlinuz-* | sort -V | tail -n1)"
    [ -f "$rootfs/boot/initrd.img-${kernel#vmlinuz-}" ] || { echo "build.sh: no initrd for $kernel" >&2; exit 1; }
    ln -sfn "$kernel" "$rootfs/boot/vmlinuz"
    ln -sfn "initrd.img-${kernel#vmlinuz-}" "$rootfs/boot/initrd.img"
else
    # Raspberry Pi: /boot/firmware of the root filesystem (raspi-firmware's
    # kernel, initrd, DTBs, config.txt) becomes slot A's boot partition; its
    # cmdline.txt names slot A's root. The config partition gets the
    # firmware's autoboot.txt (A committed, B for tryboot), the tryboot
    # backend's slot memory and the provisioning file.
    firmware="$rootfs/boot/firmware"
    sed -E -i -e 's/(^| )(root|rauc\.slot)=[^ ]*//g' -e 's/^ +//' \
        -e 's/$/ root=PARTLABEL=rootA rauc.slot=A/' "$firmware/cmdline.txt"
    grep -qw rw "$firmware/cmdline.txt" || sed -i 's/$/ rw/' "$firmware/cmdline.txt"
    config_dir="$work/pi-config-$suffix"
    rm -rf "$config_dir"; mkdir -p "$config_dir"
    printf '[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n' > "$config_dir/autoboot.txt"
    printf 'A=good\nB=bad\n' > "$config_dir/school-gateway-slots"
    mv "$firmware"/school-gateway.toml* "$config_dir/"
    log "boot: cmdline.txt: $(cat "$firmware/cmdline.txt")"
fi
end "boot"

# 5. image ------------------------------------------------------------------
begin "image (genimage)"
image_name="school-gateway-$suffix.img"
genimage_tmp="$work/genimage-tmp-$suffix"
rm -rf "$genimage_tmp"
data_owner="$(awk -F: '$1 == "school-gateway" { print $3 ":" $4 }' "$rootfs/etc/passwd")"
genimage_out="$work/genimage-out-$suffix"
rm -rf "$genimage_out"; mkdir -p "$genimage_out"
config_files=""
if [ "$arch" = arm64 ]; then
    cp -a "$config_dir/." "$genimage_out/"
    config_files="$(cd "$config_dir" && ls | sed 's/.*/"&"/' | paste -sd, | sed 's/,/, /g')"
fi
sed -e "s|@IMAGE@|$image_name|" -e "s|@DATA_OWNER@|$data_owner|" -e "s|@CONFIG_FILES@|$config_files|" \
    "$here/genimage-$arch.cfg" > "$work/genimage-$suffix.cfg"
genimage --rootpath "$rootfs" --tmppath "$genimage_tmp" --inputpath "$genimage_out" \
    --outputpath "$genimage_out" --config "$work/genimage-$suffix.cfg"
slot_image="$work/rootfs-$suffix.ext4"
mv "$genimage_out/rootfs.ext4" "$slot_image"
boot_image="$work/boot-$suffix.vfat"
rm -f "$boot_image"
[ "$arch" = arm64 ] && mv "$genimage_out/boot.vfat" "$boot_image"
used="$(dumpe2fs -h "$slot_image" 2>/dev/null | awk -F: '
    /^Block count/ { total = $2 } /^Free blocks/ { free = $2 } /^Block size/ { size = $2 }
    END { printf "%d of %d MiB", (total - free) * size / 1048576, total * size / 1048576 }')"
log "image: the root filesystem uses $used"
if [ "$image" = yes ]; then
    rm -f "$out/$image_name"
    mv "$genimage_out/$image_name" "$out/$image_name"
    if [ "$arch" = arm64 ]; then
        # The kernel and initrd beside the image, for booting it under QEMU's
        # virt machine (the Pi firmware does not run there).
        cp "$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n1)" "$out/vmlinuz-$suffix"
        cp "$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -n1)" "$out/initrd.img-$suffix"
    fi
fi
rm -rf "$genimage_tmp" "$genimage_out"
end "image"
if [ "$image" = yes ]; then
    log "image: $(ls -l --block-size=M "$out/$image_name")"
fi

# 6. bundle -----------------------------------------------------------------
if [ "$bundle" = yes ]; then
    begin "bundle (rauc)"
    bundle_dir="$work/bundle-$suffix"
    rm -rf "$bundle_dir"; mkdir -p "$bundle_dir"
    mv "$slot_image" "$bundle_dir/rootfs.ext4"
    boot_section=""
    if [ "$arch" = arm64 ]; then
        # The Pi's slot group: its boot partition travels with its root.
        mv "$boot_image" "$bundle_dir/boot.vfat"
        boot_section="$(printf '\n[image.boot]\nfilename=boot.vfat')"
    fi
    cat > "$bundle_dir/manifest.raucm" <<EOF
[update]
compatible=school-gateway-$arch
version=$system_version
description=School gateway system $system_version ($suffix)
build=$(date -u +%Y%m%dT%H%M%SZ)

[bundle]
format=verity

[image.rootfs]
filename=rootfs.ext4
$boot_section
EOF
    bundle_name="school-gateway-$arch-$system_version.raucb"
    rm -f "$out/$bundle_name"
    # --keyring: rauc checks the new bundle against the keyring the image
    # trusts, so a key/keyring mismatch stops the build, not the box.
    rauc bundle --cert="$signing_cert" --key="$signing_key" --keyring="$keyring" \
        ${squashfs_args:+--mksquashfs-args="$squashfs_args"} "$bundle_dir" "$out/$bundle_name"
    rm -rf "$bundle_dir"
    end "bundle"
    log "bundle: $(ls -l --block-size=M "$out/$bundle_name")"
fi
rm -f "$slot_image" "$boot_image"
