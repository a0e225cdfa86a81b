#!/bin/sh
# Build the lab's disk VMs from Debian 12's packages, without mounting anything:
#
#   gen1.qcow2  Generation 1 (BIOS): SeaBIOS on QEMU's `pc` machine, an MBR, grub-pc
#   gen2.qcow2  Generation 2 (UEFI): OVMF on q35, GPT with an EFI system partition, shim and
#               Debian's signed GRUB, so the same disk boots with Secure Boot on (Azure's
#               Trusted Launch: OVMF's Microsoft keys, plus a vTPM from swtpm)
#
# Both hold the same root file system: systemd, two cloud kernels (two GRUB entries, so
# "boot the older kernel" is real), a getty on ttyS0, openssh-server, qemu-guest-agent and
# cloud-init, kernel.sysrq on, and GRUB prepared as Azure's proactive page prepares it
# (menu for 5 s on serial, console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0,115200).
#
# Steps: mmdebstrap builds the root in a folder (as root in a private mount namespace, so
# its /proc and /dev mounts stay its own; otherwise in its user-namespace mode) and, in its
# last hook, makes the ext4 partition from that folder with `mkfs.ext4 -d`; sfdisk writes
# the partition tables, mtools the EFI system partition, grub-mkimage the BIOS core, dd puts
# the parts in place, qemu-img makes qcow2.
#
# Output (images/build/disk/): gen1.qcow2, gen2.qcow2, disk.env (versions, UUIDs, recipe).
# Built once; rebuilt when the recipe (this folder) or GUEST_PASSWORD changes.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build="$here/../build"
out="$build/disk"
work="$build/disk-work"
GUEST_PASSWORD=${GUEST_PASSWORD:-serial-lab}
SUITE=bookworm
FLAVOUR=cloud-amd64
ROOT_SIZE_MB=${ROOT_SIZE_MB:-4096}
ESP_SIZE_MB=62

recipe_hash=$( (cd "$here" && find . -type f | LC_ALL=C sort | xargs sha256sum; \
    echo "$GUEST_PASSWORD $SUITE $FLAVOUR $ROOT_SIZE_MB") | sha256sum | cut -c1-16)

report() {
    . "$out/disk.env"
    echo "disk images: gen1.qcow2 $(du -h "$out/gen1.qcow2" | cut -f1), gen2.qcow2 $(du -h "$out/gen2.qcow2" | cut -f1) (kernels $KERNELS)"
}

if [ -f "$out/disk.env" ] && grep -qx "RECIPE=$recipe_hash" "$out/disk.env"; then
    report
    exit 0
fi
started=$(date +%s)
echo "==> building the disk images (recipe $recipe_hash)"

# Two kernels of the cloud flavour: the newest and the one before it (a point release of
# Debian 12 and its security update, say), both in the package lists.
kernels=$(apt-cache search --names-only "^linux-image-[0-9][0-9.]*-[0-9]+-$FLAVOUR\$" 2>/dev/null \
    | cut -d' ' -f1 | sed "s/^linux-image-//; s/-$FLAVOUR\$//" | sort -V | tail -n 2)
if [ "$(echo "$kernels" | grep -c .)" -lt 2 ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    kernels=$(apt-cache search --names-only "^linux-image-[0-9][0-9.]*-[0-9]+-$FLAVOUR\$" \
        | cut -d' ' -f1 | sed "s/^linux-image-//; s/-$FLAVOUR\$//" | sort -V | tail -n 2)
fi
old=$(echo "$kernels" | head -n 1)
new=$(echo "$kernels" | tail -n 1)
if [ -z "$old" ] || [ "$old" = "$new" ]; then
    echo "two linux-image-*-$FLAVOUR kernels are needed in the package lists; run: sudo apt-get update" >&2
    exit 1
fi
old=$old-$FLAVOUR
new=$new-$FLAVOUR

rm -rf "$work"
mkdir -p "$work" "$build/debs" "$out"

# shim and Debian's signed GRUB for the EFI system partition, unpacked, not installed.
(
    cd "$build/debs"
    for pkg in shim-signed grub-efi-amd64-signed; do
        ls "${pkg}"_*.deb >/dev/null 2>&1 && continue
        echo "==> apt-get download $pkg"
        apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
        ls "${pkg}"_*.deb >/dev/null 2>&1 || { echo "apt-get download $pkg failed" >&2; exit 1; }
    done
)
mkdir -p "$work/efi"
for deb in "$build"/debs/shim-signed_*.deb "$build"/debs/grub-efi-amd64-signed_*.deb; do
    dpkg-deb -x "$deb" "$work/efi"
done

root_uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
esp_serial=$(python3 -c 'import secrets; print(secrets.token_hex(4).upper())')
esp_uuid=$(echo "$esp_serial" | sed 's/^\(....\)/\1-/')
# Azure's console settings, then no_timer_check (GRUB_CMDLINE_LINUX_DEFAULT): under TCG on a
# busy host the kernel's check of its timer interrupt can fail and panic at boot
cmdline="console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0,115200 no_timer_check"

# /boot/grub/grub.cfg as update-grub would write it for this root, flattened to two
# entries. The lab's firmware mirrors its own console to ttyS0 (OVMF always; SeaBIOS with
# its serial console on), so GRUB draws once: through the firmware's console on UEFI, on
# its own serial terminal on BIOS (serial + console would draw every screen twice).
entry() { # title kernel-version
    cat <<CFG
menuentry '$1' --class debian --class gnu-linux --class os {
	insmod gzio
	insmod part_gpt
	insmod part_msdos
	insmod ext2
	search --no-floppy --fs-uuid --set=root $root_uuid
	echo	'Loading Linux $2 ...'
	linux	/boot/vmlinuz-$2 root=UUID=$root_uuid ro $cmdline
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-$2
}
CFG
}
{
    cat <<CFG
# Serial Console Lab: GRUB on the serial console, as Azure's proactive page prepares it.
# update-grub (from /etc/default/grub) replaces this file.
if [ -s \$prefix/grubenv ]; then
	load_env
fi
if [ "\${next_entry}" ] ; then
	set default="\${next_entry}"
	set next_entry=
	save_env next_entry
elif [ "\${saved_entry}" ] ; then
	set default="\${saved_entry}"
else
	set default="0"
fi
if [ "\$grub_platform" = "efi" ]; then
	terminal_input console
	terminal_output console
else
	serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1
	terminal_input serial console
	terminal_output serial
fi
set timeout_style=menu
set timeout=5
CFG
    entry "Debian GNU/Linux" "$new"
    entry "Debian GNU/Linux, with Linux $old" "$old"
} > "$work/grub.cfg"

# The mmdebstrap hook that finishes the root and makes the ext4 partition from it. It runs
# where mmdebstrap runs its hooks (as root, or as root of its user namespace), so owners
# and modes carry over as they are in the root.
cat > "$work/finish-root.sh" <<HOOK
#!/bin/sh
set -eu
root=\$1
cp -a "$here/rootfs/." "\$root/"
chown -R 0:0 "\$root/etc/default/grub" "\$root/etc/sysctl.d" "\$root/etc/systemd/network" \
    "\$root/etc/ssh/sshd_config.d" "\$root/etc/cloud/cloud.cfg.d/50-serial-console-lab.cfg" \
    "\$root/etc/initramfs-tools" "\$root/usr/local/sbin/lab-identity" \
    "\$root/etc/systemd/system/lab-identity.service"
cat > "\$root/etc/fstab" <<FSTAB
UUID=$root_uuid	/	ext4	errors=remount-ro	0	1
FSTAB
echo debian > "\$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "\$root/etc/hosts"
printf 'root:%s\n' '$(printf %s "$GUEST_PASSWORD" | sed "s/'/'\\\\''/g")' | chroot "\$root" chpasswd
chroot "\$root" systemctl enable -q lab-identity.service systemd-networkd.service \
    serial-getty@ttyS0.service
# a serial-console VM waits on no network to come up
chroot "\$root" systemctl mask -q systemd-networkd-wait-online.service
# nor scrubs its file systems' snapshots (e2scrub: LVM only; it takes seconds of a boot)
chroot "\$root" systemctl mask -q e2scrub_reap.service e2scrub_all.timer
# GRUB's own files: the modules update-grub's configuration loads, the menu, its environment
mkdir -p "\$root/boot/grub"
cp -a "\$root/usr/lib/grub/i386-pc" "\$root/usr/lib/grub/x86_64-efi" "\$root/boot/grub/"
cp "$work/grub.cfg" "\$root/boot/grub/grub.cfg"
chroot "\$root" grub-editenv /boot/grub/grubenv create
chroot "\$root" update-initramfs -u -k all >/dev/null
cp -a "\$root/usr/lib/grub/i386-pc/boot.img" "$work/boot.img"
cp -a "\$root/usr/lib/grub/i386-pc" "$work/i386-pc"
rm -f "\$root/etc/machine-id"; : > "\$root/etc/machine-id"  # each VM makes its own at first boot
rm -rf "\$root/var/cache/apt/"*.bin "\$root/var/cache/apt/archives/"*.deb "\$root/var/lib/apt/lists/"*_*
# /proc, /sys and /dev are mounted in the root while hooks run: copy it without them
cp -ax "\$root" "$work/root"
mkfs.ext4 -q -F -L root -U $root_uuid -d "$work/root" "$work/root.ext4" ${ROOT_SIZE_MB}M
rm -rf "$work/root"
HOOK
chmod 755 "$work/finish-root.sh"

packages="systemd-sysv,udev,dbus,kmod,initramfs-tools,zstd,linux-image-$new,linux-image-$old"
packages="$packages,grub2-common,grub-pc-bin,grub-efi-amd64-bin,openssh-server"
packages="$packages,qemu-guest-agent,cloud-init,iproute2,passwd,login"
packages="$packages,procps,e2fsprogs,less,nano,sudo,netbase,iptables"
mirrors="deb http://deb.debian.org/debian $SUITE main
deb http://deb.debian.org/debian $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main"

echo "==> mmdebstrap: Debian $SUITE with $new and $old"
if [ "$(id -u)" = 0 ]; then
    mode=root
    wrap="unshare --mount --propagation private"
else
    mode=unshare
    wrap=
fi
# shellcheck disable=SC2086
$wrap mmdebstrap --quiet --mode=$mode --variant=apt --include="$packages" \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook="$work/finish-root.sh \"\$1\"" \
    "$SUITE" /dev/null "$mirrors"

# the EFI system partition: shim, the signed GRUB, and where that GRUB finds its menu
esp="$work/esp.img"
mkfs.vfat -C -n EFI -i "$esp_serial" "$esp" $((ESP_SIZE_MB * 1024)) >/dev/null
cat > "$work/esp-grub.cfg" <<CFG
search.fs_uuid $root_uuid root
set prefix=(\$root)'/boot/grub'
configfile \$prefix/grub.cfg
CFG
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/debian
mcopy -i "$esp" "$work/efi/usr/lib/shim/shimx64.efi.signed" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$work/efi/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" ::/EFI/BOOT/grubx64.efi
mcopy -i "$esp" "$work/esp-grub.cfg" ::/EFI/debian/grub.cfg
mcopy -i "$esp" "$work/esp-grub.cfg" ::/EFI/BOOT/grub.cfg

mib=$((1024 * 1024))
root_bytes=$((ROOT_SIZE_MB * mib))
place() { # disk file offset-MiB
    dd if="$2" of="$1" bs=1M seek="$3" conv=notrunc,sparse status=none
}

echo "==> Gen2: GPT, EFI system partition, root"
gen2="$work/gen2.raw"
truncate -s $((1 + ESP_SIZE_MB + ROOT_SIZE_MB + 1))M "$gen2"
sfdisk --quiet "$gen2" <<PART
label: gpt
start=1MiB, size=${ESP_SIZE_MB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system partition"
start=$((1 + ESP_SIZE_MB))MiB, size=${ROOT_SIZE_MB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
PART
place "$gen2" "$esp" 1
place "$gen2" "$work/root.ext4" $((1 + ESP_SIZE_MB))

echo "==> Gen1: MBR, GRUB's core in the gap before the root"
gen1="$work/gen1.raw"
truncate -s $((1 + ROOT_SIZE_MB))M "$gen1"
sfdisk --quiet "$gen1" <<PART
label: dos
start=1MiB, size=${ROOT_SIZE_MB}MiB, type=83, bootable
PART
cat > "$work/core.cfg" <<CFG
search.fs_uuid $root_uuid root hd0,msdos1
set prefix=(\$root)'/boot/grub'
CFG
grub-mkimage -O i386-pc -d "$work/i386-pc" -c "$work/core.cfg" -p '(hd0,msdos1)/boot/grub' \
    -o "$work/core.img" biosdisk part_msdos ext2 search search_fs_uuid
# boot.img's code (440 bytes, before the disk signature and the partition table) reads
# core.img from sector 1; core.img's first sector lists the rest, as grub-mkimage wrote it.
dd if="$work/boot.img" of="$gen1" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$gen1" bs=512 seek=1 conv=notrunc status=none
place "$gen1" "$work/root.ext4" 1

for gen in gen1 gen2; do
    qemu-img convert -O qcow2 "$work/$gen.raw" "$out/$gen.qcow2.tmp"
    mv "$out/$gen.qcow2.tmp" "$out/$gen.qcow2"
done
seconds=$(($(date +%s) - started))
cat > "$out/disk.env" <<ENV
RECIPE=$recipe_hash
KERNELS="$new $old"
ROOT_UUID=$root_uuid
ESP_UUID=$esp_uuid
BUILD_SECONDS=$seconds
ENV
rm -rf "$work"
report
