#!/bin/sh
# Builds a KVM host for machines without /dev/kvm: Debian's amd64 kernel with its kvm and
# kvm-amd modules and a busybox initramfs, booted by QEMU under TCG with `-cpu max`, whose
# emulated AMD SVM lets kvm-amd load. Inside it /dev/kvm is real Linux KVM, so Ferry's
# kvm accelerator (ioctls, vCPU threads, dirty log) runs for real, only slower.
# src/kvm/testing/nested-host.ts boots it; see its comment for how a command gets in and
# out. Output in .cache/kvm-host/. Idempotent; run as root (apt-get). Prints what it fetches.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/.cache/kvm-host"
WORK="$OUT/work"
START=$(date +%s)

TOOL=setup-kvm-host
. "$ROOT/scripts/lib/debian.sh"
require_root "apt-get downloads the kernel and busybox"

if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initramfs.cpio.gz" ] && [ "$OUT/initramfs.cpio.gz" -nt "$0" ] && [ "${FORCE:-0}" != 1 ]; then
  log "already built in $OUT (FORCE=1 rebuilds)"
  cat "$OUT/MANIFEST" 2>/dev/null || true
  exit 0
fi

mkdir -p "$OUT" "$WORK"
export DEBIAN_FRONTEND=noninteractive
need=""
command -v cpio >/dev/null 2>&1 || need="$need cpio"
command -v gzip >/dev/null 2>&1 || need="$need gzip"
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
if [ -n "$need" ] || ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  apt_update
fi
# shellcheck disable=SC2086
[ -z "$need" ] || apt_install $need

# --- the amd64 kernel and busybox: downloaded, never installed ----------------------------
KPKG=$(kernel_package linux-image-amd64)
[ -n "$KPKG" ] || die "cannot find the kernel package that linux-image-amd64 depends on (apt-get update?)"
cd "$WORK"
rm -rf deb kernel busybox rootfs
mkdir -p deb kernel busybox
cd deb
download_debs "$KPKG" busybox-static
cd ..
KDEB=$(ls deb/"${KPKG}"_*_amd64.deb | head -n 1)
BDEB=$(ls deb/busybox-static_*_amd64.deb | head -n 1)
dpkg-deb -x "$KDEB" kernel
dpkg-deb -x "$BDEB" busybox
VMLINUZ=$(ls kernel/boot/vmlinuz-* | head -n 1)
[ -f "$VMLINUZ" ] || die "no /boot/vmlinuz-* in $KDEB"
cp "$VMLINUZ" "$OUT/vmlinuz"

# --- the initramfs ------------------------------------------------------------------------
# Modules in load order (each after what its depends= line names): KVM, then virtio-pci
# and 9p to mount the host's file systems.
MODULES="irqbypass kvm ccp kvm-amd virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci 9pnet 9pnet_virtio netfs fscache 9p"
mkdir -p rootfs/bin rootfs/dev rootfs/proc rootfs/sys rootfs/host rootfs/modules
cp busybox/bin/busybox rootfs/bin/busybox
mknod -m 600 rootfs/dev/console c 5 1 2>/dev/null || true
for m in $MODULES; do
  f=$(find kernel/lib/modules -name "$m.ko" | head -n 1)
  [ -n "$f" ] || die "module $m.ko is not in $KDEB"
  cp "$f" rootfs/modules/
done
cat > rootfs/init <<EOF
#!/bin/busybox sh
# Ferry's KVM host: load KVM, mount the host's root read-only and the project read-write
# over 9p, run the command the kernel command line names (ferry.cmd=FILE, a file in the
# project) in the project's folder, write its exit status to FILE.status, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ip link set lo up
# kvm-amd with npt=0 (shadow paging, as KVM does on CPUs without nested paging): with
# QEMU 7.2's emulated nested paging, 3 of 13 source guests took a page fault no guest
# code caused and triple-faulted during a live migration (dirty logging on); 0 of 6
# with npt=0. The rest of Ferry's KVM use is the same either way.
for m in $MODULES; do
  args=""; [ \$m = kvm-amd ] && args="npt=0"
  insmod /modules/\$m.ko \$args || echo "ferry-kvm-host: cannot load \$m"
done
[ -c /dev/kvm ] && echo "ferry-kvm-host: /dev/kvm is up" || echo "ferry-kvm-host: no /dev/kvm"
cmd=\$(sed -n 's/.*ferry\.cmd=\([^ ]*\).*/\1/p' /proc/cmdline)
project=\$(sed -n 's/.*ferry\.project=\([^ ]*\).*/\1/p' /proc/cmdline)
opts=trans=virtio,version=9p2000.L,msize=524288
# /tmp is the KVM host's own, mounted before the project, which may live under it.
if mount -t 9p -o \$opts,ro host /host && mount -t tmpfs tmpfs /host/tmp && mkdir -p "/host\$project" \
   && mount -t 9p -o \$opts project "/host\$project"; then
  mount -t proc proc /host/proc
  mount -t sysfs sysfs /host/sys
  mount -t devtmpfs devtmpfs /host/dev
  mkdir -p /host/dev/shm /host/dev/pts
  mount -t tmpfs tmpfs /host/dev/shm
  mount -t devpts devpts /host/dev/pts
  # ferry.watchdog=SECONDS: if the script still runs then, print every task's kernel stack
  # to the console (SysRq t), so that whoever stops a hung run sees where it waits.
  watchdog=\$(sed -n 's/.*ferry\.watchdog=\([0-9]*\).*/\1/p' /proc/cmdline)
  [ -n "\$watchdog" ] && (sleep "\$watchdog"; echo "ferry-kvm-host: still running after \$watchdog s: task states"; echo 8 > /proc/sys/kernel/printk; echo t > /proc/sysrq-trigger) &
  echo "ferry-kvm-host: running \$cmd"
  chroot /host /bin/sh -c "cd '\$project' && exec /bin/sh '\$cmd'" </dev/null
  echo \$? > "/host\$cmd.status"
  sync
else
  echo "ferry-kvm-host: cannot mount the host's file systems"
fi
poweroff -f
EOF
chmod 755 rootfs/init
(cd rootfs && find . | sort | cpio -o -H newc --quiet) | gzip -6 > "$OUT/initramfs.cpio.gz"

{
  echo "kernel: $(dpkg-deb -f "$KDEB" Package) $(dpkg-deb -f "$KDEB" Version) amd64 ($(basename "$VMLINUZ"))"
  echo "busybox: $(dpkg-deb -f "$BDEB" Package) $(dpkg-deb -f "$BDEB" Version) amd64"
  echo "modules: $MODULES"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$OUT/MANIFEST"
rm -rf "$WORK"
log "built in $(( $(date +%s) - START )) s:"
cat "$OUT/MANIFEST"
ls -l "$OUT"
