#!/bin/sh
# Builds the Linux guest the v86 accelerator boots: Debian's own i386 kernel, a busybox
# initramfs whose /init prints a heartbeat, and Debian's SeaBIOS + VGA BIOS, all under
# .cache/linux-guest/. Idempotent; run as root (it uses apt-get). Prints what it fetches.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/.cache/linux-guest"
WORK="$OUT/work"
START=$(date +%s)

TOOL=setup-linux-guest
. "$ROOT/scripts/lib/debian.sh"
require_root "apt-get installs seabios and cpio and adds the i386 architecture"

if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initramfs.cpio.gz" ] && [ -s "$OUT/bios.bin" ] && [ -s "$OUT/vgabios.bin" ] \
   && [ "$OUT/initramfs.cpio.gz" -nt "$0" ] && [ "${FORCE:-0}" != 1 ]; then
  log "already built in $OUT (FORCE=1 rebuilds)"
  cat "$OUT/MANIFEST" 2>/dev/null || true
  exit 0
fi

mkdir -p "$OUT" "$WORK"

# --- host tools and BIOS -------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
need=""
command -v cpio >/dev/null 2>&1 || need="$need cpio"
[ -f /usr/share/seabios/bios.bin ] && [ -f /usr/share/seabios/vgabios-stdvga.bin ] || need="$need seabios"
command -v gzip >/dev/null 2>&1 || need="$need gzip"
if ! dpkg --print-foreign-architectures | grep -qx i386; then
  log "adding the i386 architecture (dpkg --add-architecture i386)"
  dpkg --add-architecture i386
  UPDATED=0
fi
if [ -n "$need" ] || [ "${UPDATED:-1}" = 0 ] || ! apt-cache show linux-image-686:i386 >/dev/null 2>&1; then
  apt_update
fi
# shellcheck disable=SC2086
[ -z "$need" ] || apt_install $need

# --- the i386 kernel and busybox: downloaded, never installed ---------------------------
# linux-image-686 is a metapackage; the package that holds /boot/vmlinuz-* is its dependency.
KPKG=$(kernel_package linux-image-686:i386)
[ -n "$KPKG" ] || die "cannot find the kernel package that linux-image-686:i386 depends on (is the i386 architecture enabled and apt updated?)"

cd "$WORK"
rm -rf deb kernel busybox
mkdir -p deb kernel busybox
cd deb
download_debs "$KPKG:i386" busybox-static:i386
cd ..
KDEB=$(ls deb/"${KPKG}"_*_i386.deb | head -n 1)
BDEB=$(ls deb/busybox-static_*_i386.deb | head -n 1)
dpkg-deb -x "$KDEB" kernel
dpkg-deb -x "$BDEB" busybox
VMLINUZ=$(ls kernel/boot/vmlinuz-* | head -n 1)
[ -f "$VMLINUZ" ] || die "no /boot/vmlinuz-* in $KDEB"
cp "$VMLINUZ" "$OUT/vmlinuz"

# --- the initramfs ------------------------------------------------------------------------
rm -rf rootfs
mkdir -p rootfs/bin rootfs/sbin rootfs/dev rootfs/proc rootfs/sys rootfs/tmp rootfs/root rootfs/etc
cp busybox/bin/busybox rootfs/bin/busybox
# The kernel needs /dev/console before devtmpfs is mounted, to give /init its stdio.
mknod -m 600 rootfs/dev/console c 5 1 2>/dev/null || true
mknod -m 666 rootfs/dev/null c 1 3 2>/dev/null || true
for applet in sh ash mount umount cat echo ls mkdir sleep setsid cttyhack uname dmesg ps \
              free dd head tail wc grep sync poweroff reboot halt sed seq rm cp mv date hostname; do
  ln -sf busybox "rootfs/bin/$applet"
done
cat > rootfs/init <<'EOF'
#!/bin/sh
# Ferry's v86 test guest: mounts the pseudo file systems, prints a heartbeat every
# second (the migration tests check that its counter continues), then gives ttyS0 a shell.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
hostname ferry-guest
echo 0 > /proc/sys/kernel/printk 2>/dev/null
echo "ferry-guest: init up"
(
  n=0
  while :; do
    n=$((n + 1))
    echo "heartbeat $n" > /dev/ttyS0
    sleep 1
  done
) &
while :; do
  setsid cttyhack sh -l </dev/ttyS0 >/dev/ttyS0 2>&1
  echo "ferry-guest: shell exited, restarting" > /dev/ttyS0
done
EOF
chmod 755 rootfs/init
printf 'PS1="# "\nexport PS1\n' > rootfs/etc/profile
(cd rootfs && find . | sort | cpio -o -H newc --quiet) | gzip -9 > "$OUT/initramfs.cpio.gz"

cp /usr/share/seabios/bios.bin "$OUT/bios.bin"
cp /usr/share/seabios/vgabios-stdvga.bin "$OUT/vgabios.bin"

{
  echo "kernel: $(dpkg-deb -f "$KDEB" Package) $(dpkg-deb -f "$KDEB" Version) i386 ($(basename "$VMLINUZ"), sha256 $(sha256sum "$OUT/vmlinuz" | cut -c1-16)…)"
  echo "busybox: $(dpkg-deb -f "$BDEB" Package) $(dpkg-deb -f "$BDEB" Version) i386"
  echo "seabios: $(dpkg-query -W -f='${Package} ${Version}' seabios)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$OUT/MANIFEST"
rm -rf "$WORK"
log "built in $(( $(date +%s) - START )) s:"
cat "$OUT/MANIFEST"
ls -l "$OUT"
