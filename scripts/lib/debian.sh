# Shared by the scripts that build guests from Debian's packages (sourced, POSIX sh):
# messages, the root check, a tolerant apt-get update, and downloading packages without
# installing them. Set TOOL to the script's name before sourcing.

log() { printf '%s: %s\n' "$TOOL" "$*"; }
die() { printf '%s: error: %s\n' "$TOOL" "$*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" = 0 ] || die "run as root ($1)"
}

# A mirror in mid-sync (seen on the security suite's i386 index) fails the update as a
# whole although the indexes we need arrived; callers check what they need afterwards.
apt_update() {
  log "apt-get update"
  apt-get update -qq || log "warning: apt-get update reported errors; continuing with the indexes it fetched"
}

# apt_install PKG...: install what is missing, quietly.
apt_install() {
  log "installing: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# download_debs PKG...: the packages' .deb files into the current folder, not installed.
download_debs() {
  for pkg in "$@"; do
    log "downloading $pkg $(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')"
    apt-get download -qq -o APT::Sandbox::User=root "$pkg" >/dev/null
  done
}

# kernel_package META: the linux-image-<version> package a metapackage depends on.
kernel_package() {
  apt-cache depends "$1" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -n 1
}
