#!/bin/sh
# Build the Linux guest image: a Debian cloud kernel (as an uncompressed PVH vmlinux) and a
# busybox initramfs. Packages are fetched with `apt-get download` and unpacked with
# `dpkg-deb -x` into images/build/; nothing is installed on the host.
#
# Output (images/build/linux/): vmlinux, initramfs.cpio, image.env (versions, recipe hash).
# Built once; rebuilt when the recipe (this folder) or GUEST_PASSWORD changes.
#
# Environment: GUEST_PASSWORD  default root password baked into the image (serial-lab);
#              the lab sets each VM's own through QEMU's fw_cfg (see rootfs/etc/init.d/rcS),
#              never on the kernel command line.
#              KERNEL_FLAVOUR  Debian kernel flavour (cloud-amd64).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build="$here/build"
out="$build/linux"
GUEST_PASSWORD=${GUEST_PASSWORD:-serial-lab}
KERNEL_FLAVOUR=${KERNEL_FLAVOUR:-cloud-amd64}

recipe_hash=$( (cd "$here" && find build.sh extract_vmlinux.py rootfs -type f | LC_ALL=C sort \
    | xargs sha256sum; echo "$GUEST_PASSWORD $KERNEL_FLAVOUR") | sha256sum | cut -c1-16)

size_report() {
    echo "guest image: $(du -h "$out/vmlinux" | cut -f1) vmlinux + $(du -h "$out/initramfs.cpio" | cut -f1) initramfs ($(. "$out/image.env"; echo "$KERNEL_PACKAGE"))"
}

if [ -f "$out/image.env" ] && grep -qx "RECIPE=$recipe_hash" "$out/image.env"; then
    size_report
    exit 0
fi

echo "==> building the guest image (recipe $recipe_hash)"
mkdir -p "$build/debs" "$out"

# linux-image-cloud-amd64 is a metapackage: resolve it to the versioned kernel package.
resolve_kernel() {
    apt-cache depends "linux-image-$KERNEL_FLAVOUR" 2>/dev/null \
        | sed -n "s/^ *Depends: \(linux-image-[0-9].*-$KERNEL_FLAVOUR\)\$/\1/p" | head -n 1
}
kernel_pkg=$(resolve_kernel)
if [ -z "$kernel_pkg" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "==> apt-get update (the package lists do not know linux-image-$KERNEL_FLAVOUR)"
        apt-get update -qq
        kernel_pkg=$(resolve_kernel)
    fi
    if [ -z "$kernel_pkg" ]; then
        echo "cannot resolve linux-image-$KERNEL_FLAVOUR; run: sudo apt-get update" >&2
        exit 1
    fi
fi

cd "$build/debs"
for pkg in "$kernel_pkg" busybox-static; do
    if ! ls "${pkg}"_*.deb >/dev/null 2>&1; then
        echo "==> apt-get download $pkg"
        apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
        ls "${pkg}"_*.deb >/dev/null 2>&1 || { echo "apt-get download $pkg failed" >&2; exit 1; }
    fi
done

rm -rf "$build/unpacked" "$build/rootfs"
mkdir -p "$build/unpacked"
dpkg-deb -x "$(ls "${kernel_pkg}"_*.deb | head -n 1)" "$build/unpacked"
dpkg-deb -x "$(ls busybox-static_*.deb | head -n 1)" "$build/unpacked"
kernel_version=${kernel_pkg#linux-image-}

echo "==> extracting vmlinux from vmlinuz-$kernel_version"
python3 "$here/extract_vmlinux.py" "$build/unpacked/boot/vmlinuz-$kernel_version" "$out/vmlinux"

echo "==> assembling the initramfs"
root="$build/rootfs"
mkdir -p "$root"
cp -a "$here/rootfs/." "$root/"
for d in bin sbin usr/bin usr/sbin proc sys dev tmp run root lib/modules var/run var/log; do
    mkdir -p "$root/$d"
done
busybox="$build/unpacked/bin/busybox"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
ln -sf /bin/busybox "$root/init"
moddir="$build/unpacked/lib/modules/$kernel_version/kernel"
# qemu_fw_cfg brings the VM's password (rcS); a kernel with it built in needs no module.
fw_cfg=drivers/firmware/qemu_fw_cfg.ko
if grep -qx 'CONFIG_FW_CFG_SYSFS=y' "$build/unpacked/boot/config-$kernel_version"; then
    fw_cfg=
elif [ ! -f "$moddir/$fw_cfg" ]; then
    echo "$kernel_pkg has no qemu_fw_cfg driver (CONFIG_FW_CFG_SYSFS): the guest could not read its password" >&2
    exit 1
fi
for module in $fw_cfg drivers/acpi/button.ko drivers/input/evdev.ko \
    drivers/misc/pvpanic/pvpanic.ko drivers/misc/pvpanic/pvpanic-pci.ko; do
    cp "$moddir/$module" "$root/lib/modules/"
done
printf '%s\n' "$GUEST_PASSWORD" > "$root/etc/lab-password"
chmod 600 "$root/etc/lab-password"
(cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 > "$out/initramfs.cpio.tmp" 2>/dev/null)
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"

cat > "$out/image.env" <<ENV
RECIPE=$recipe_hash
KERNEL_PACKAGE=$kernel_pkg
KERNEL_VERSION=$kernel_version
ENV
rm -rf "$build/unpacked" "$build/rootfs"
size_report
