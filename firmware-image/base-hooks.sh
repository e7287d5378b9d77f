#!/bin/bash
# mmdebstrap hooks for the cached base stage of build.sh.
#   base-hooks.sh essential ROOT ARCH  - before the packages are installed
#   base-hooks.sh customize ROOT ARCH  - after, inside mmdebstrap's mounts
set -euo pipefail
hook="$1" root="$2" arch="$3"

case "$hook" in
essential)
    # raspi-firmware's kernel hooks copy kernel, initrd, DTBs, config.txt and
    # cmdline.txt into /boot/firmware (the vfat boot partition).
    mkdir -p "$root/boot/firmware"
    ;;
customize)
    if [ "$arch" = arm64 ]; then
        # A conffile of raspi-firmware, so edited after its installation
        # (before, dpkg would stop at a conffile prompt). Read by its hook
        # when update-initramfs runs below, to write cmdline.txt.
        defaults="$root/etc/default/raspi-firmware"
        sed -i -e '/^#\?ROOTPART=/d' -e '/^#\?CONSOLES=/d' "$defaults"
        printf 'ROOTPART=LABEL=rootA\nCONSOLES="ttyS1,115200 tty0"\n' >> "$defaults"
    fi
    # The one mkinitramfs run (the kernel's postinst skipped it: INITRD=No).
    chroot "$root" update-initramfs -c -k all
    # Keep the base small: no apt lists or package cache in the image.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    ;;
*)
    echo "base-hooks.sh: unknown hook $hook" >&2
    exit 2
    ;;
esac
