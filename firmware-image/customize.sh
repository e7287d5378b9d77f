#!/bin/bash
# Turn the unpacked base into the gateway's root filesystem (build.sh stage 3).
#   customize.sh ROOTFS WHEELS_DIR REPO TEST_IMAGE(yes|no) ARCH BREAK_GATEWAY(yes|no)
# Host tools act on ROOTFS where they can (systemctl --root, useradd -R);
# only pip runs inside the chroot, through qemu-user on a foreign arch.
set -euo pipefail
root="$1" wheels="$2" repo="$3" test_image="$4" arch="$5" break_gateway="$6"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv=/opt/school-gateway

mounted=()
cleanup() {
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" || true; done
}
trap cleanup EXIT
for fs in proc sys dev; do
    case "$fs" in
        proc) mount -t proc proc "$root/proc" ;;
        sys) mount -t sysfs sysfs "$root/sys" ;;
        dev) mount --bind /dev "$root/dev" ;;
    esac
    mounted+=("$root/$fs")
done

# Files of the image: journald volatile, DHCP on the wired port, fstab,
# hostname, the provisioning step.
cp -a "$here/rootfs/." "$root/"
# Per architecture: RAUC's system.conf (slots, bootloader backend).
cp -a "$here/rootfs-$arch/." "$root/"
chmod 0755 "$root"/usr/lib/school-gateway/{provision,grow-data,reboot-into-update,rauc-post-install}
if [ "$arch" = arm64 ]; then
    chmod 0755 "$root"/usr/lib/school-gateway/{rauc-pi-tryboot,rauc-pi-post-install}
fi
# sshd's host keys are made on each box at its first sshd start (ssh.service
# drop-in), never shared by every box flashed from this image.
rm -f "$root"/etc/ssh/ssh_host_*

# The service user, for the gateway and (see the mosquitto drop-in) the
# school broker.
groupadd -R "$root" --system school-gateway
useradd -R "$root" --system --gid school-gateway --home-dir /var/lib/school-gateway \
    --no-create-home --shell /usr/sbin/nologin --comment "School edge gateway" school-gateway

# The gateway in its own venv. --system-site-packages lets bookworm's
# python3-* packages satisfy what they can; pip takes the rest from the
# wheels downloaded at build time, never from the network.
# A clean environment in the chroot: the build host's PIP_*/PYTHON* settings
# (indexes, find-links) must not reach the image's pip.
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
mkdir -p "$root/tmp/wheels"
cp "$wheels"/*.whl "$root/tmp/wheels/"
in_root python3 -m venv --system-site-packages "$venv"
in_root "$venv/bin/python" -m pip install --quiet --no-index --no-cache-dir \
    --disable-pip-version-check --find-links /tmp/wheels school-gateway
in_root "$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | sed 's/^/  pip: /' || true
rm -rf "$root/tmp/wheels"
# The Mosquitto config template, where gateway.broker.mosquitto_config
# looks for it when the wheel does not carry it.
template="$repo/config/mosquitto.conf.template"
share="$root$venv/share/school-gateway"
if [ -f "$template" ] && [ ! -f "$share/mosquitto.conf.template" ]; then
    install -D -m 0644 "$template" "$share/mosquitto.conf.template"
fi

# Units: the gateway's, and every school-gateway-* unit of the repo (broker
# reload, system update and its health check). Those with an [Install]
# section are enabled; the others are started by a path unit.
install -m 0644 "$repo/systemd/gateway.service" "$root/etc/systemd/system/gateway.service"
enable=(gateway.service mosquitto.service school-gateway-firstboot.service
    school-gateway-grow-data.service ssh.service
    systemd-networkd.service systemd-resolved.service systemd-timesyncd.service)
for unit in "$repo"/systemd/school-gateway-*.path "$repo"/systemd/school-gateway-*.service \
    "$repo"/systemd/school-gateway-*.timer; do
    [ -f "$unit" ] || continue
    install -m 0644 "$unit" "$root/etc/systemd/system/$(basename "$unit")"
    if grep -q '^\[Install\]' "$unit"; then
        enable+=("$(basename "$unit")")
    fi
done
install -D -m 0644 "$repo/systemd/mosquitto.service.d/school-gateway.conf" \
    "$root/etc/systemd/system/mosquitto.service.d/school-gateway.conf"
systemctl --root="$root" enable "${enable[@]}"

# The state directory is the data partition's root; owned by the service.
# /etc/school-gateway matches the unit's ConfigurationDirectoryMode; the
# provisioned gateway.toml in it is 0640 root:school-gateway.
install -d -m 0755 "$root/etc/school-gateway"
# Numeric ids from the image's passwd: the host's users are not the image's.
ids() { awk -F: -v user="$1" '$1 == user { print $3 ":" $4 }' "$root/etc/passwd"; }
install -d -m 0750 "$root/var/lib/school-gateway"
chown "$(ids school-gateway)" "$root/var/lib/school-gateway"
# RAUC's central slot status (system.conf data-directory), root's alone.
install -d -m 0755 "$root/var/lib/school-gateway/rauc"

# A machine id is made on first boot; an empty file makes it "first boot".
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

if [ "$test_image" = yes ]; then
    install -m 0644 "$here/test/school-gateway-boot-check.service" \
        "$here/test/school-gateway-test-provision.service" "$root/etc/systemd/system/"
    install -m 0755 "$here/test/boot-check" "$here/test/test-provision" \
        "$root/usr/lib/school-gateway/"
    install -m 0644 "$here/test/school-gateway.toml" "$root/boot/firmware/school-gateway.toml"
    systemctl --root="$root" enable school-gateway-boot-check.service \
        school-gateway-test-provision.service
    # No getty on the serial console: the check owns it.
    systemctl --root="$root" mask serial-getty@.service getty@.service
else
    install -m 0644 "$here/school-gateway.toml.example" "$root/boot/firmware/school-gateway.toml.example"
fi

if [ "$break_gateway" = yes ]; then
    # Tests only (build.sh --test-break-gateway): a system whose gateway can
    # never start, the "bad update" that the health check must roll back.
    install -d "$root/etc/systemd/system/gateway.service.d"
    printf '%s\n' '# build.sh --test-break-gateway: this system is broken on purpose (tests).' \
        '[Service]' 'ExecStart=' 'ExecStart=/bin/false' \
        > "$root/etc/systemd/system/gateway.service.d/test-broken.conf"
fi
