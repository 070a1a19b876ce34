#!/bin/sh
# Fetches QEMU 7.2's scripts/analyze-migration.py from Debian's qemu source package into
# .cache/qemu-scripts/, so tests can check that Ferry's streams decode with QEMU's own tool.
# Idempotent; run as root. apt state is kept private under .cache/ so the machine's own
# package lists are neither replaced nor pruned.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="$ROOT/.cache"
OUT="$CACHE/qemu-scripts"
WORK="$CACHE/qemu-src"
SCRIPTS="scripts/analyze-migration.py"

if [ -s "$OUT/analyze-migration.py" ]; then
  echo "fetch-qemu-scripts: $OUT/analyze-migration.py already present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "fetch-qemu-scripts: must run as root (apt-get source)" >&2
  exit 1
fi

SYSTEM_SOURCES=/etc/apt/sources.list.d/debian.sources
if [ ! -r "$SYSTEM_SOURCES" ]; then
  echo "fetch-qemu-scripts: $SYSTEM_SOURCES not found; cannot mirror it as deb-src" >&2
  exit 1
fi

mkdir -p "$WORK/sources.list.d" "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/download" "$OUT"
# The same mirrors and suites as the machine's own, but for source packages.
sed 's/^Types:.*/Types: deb-src/' "$SYSTEM_SOURCES" > "$WORK/sources.list.d/ferry-deb-src.sources"

APT_OPTS="-o Dir::Etc::SourceList=/dev/null \
  -o Dir::Etc::SourceParts=$WORK/sources.list.d \
  -o Dir::State::Lists=$WORK/lists \
  -o Dir::Cache=$WORK/cache \
  -o APT::Sandbox::User=root"

# shellcheck disable=SC2086
apt-get $APT_OPTS update -q
cd "$WORK/download"
ORIG=$(ls qemu_7.2*.orig.tar.* 2>/dev/null | head -n 1 || true)
if [ -z "$ORIG" ]; then
  # shellcheck disable=SC2086
  apt-get $APT_OPTS source --download-only qemu
  ORIG=$(ls qemu_*.orig.tar.* | head -n 1)
fi
case "$ORIG" in
  qemu_7.2*) ;;
  *) echo "fetch-qemu-scripts: expected QEMU 7.2 source, got $ORIG" >&2; exit 1 ;;
esac

DEBIAN=$(ls qemu_7.2*.debian.tar.* | head -n 1)

# Only the scripts are needed, not the 100+ MiB tree: take them from the upstream
# tarball, then apply the parts of Debian's patches that touch them (the stable
# updates fix analyze-migration.py), so the script is the one Debian's QEMU ships.
EXTRACT="$WORK/extract"
rm -rf "$EXTRACT"
mkdir -p "$EXTRACT/tree" "$EXTRACT/debian"
tar -xf "$DEBIAN" -C "$EXTRACT/debian" debian/patches
for s in $SCRIPTS; do
  tar -xf "$ORIG" -C "$EXTRACT/tree" --strip-components=1 --wildcards "*/$s"
  if [ ! -f "$EXTRACT/tree/$s" ]; then
    echo "fetch-qemu-scripts: $s not found in $ORIG" >&2
    exit 1
  fi
done
grep -v '^[[:space:]]*#' "$EXTRACT/debian/debian/patches/series" | while read -r patchname _; do
  [ -n "$patchname" ] || continue
  for s in $SCRIPTS; do
    # Cut this file's part out of a multi-file patch (from its ---/+++ header to the next file's).
    python3 - "$EXTRACT/debian/debian/patches/$patchname" "$s" > "$EXTRACT/part.diff" <<'PY'
import sys
path, wanted = sys.argv[1], sys.argv[2]
lines = open(path, encoding='utf-8', errors='surrogateescape').read().split('\n')
out, keep, i = [], False, 0
while i < len(lines):
    line = lines[i]
    if line.startswith('--- ') and i + 1 < len(lines) and lines[i + 1].startswith('+++ '):
        target = lines[i + 1][4:].split('\t')[0]
        keep = target.endswith('/' + wanted) or target == wanted
        if keep:
            out += [line, lines[i + 1]]
        i += 2
        continue
    if line.startswith('diff ') or line.startswith('Index: '):
        keep = False
    elif keep:
        out.append(line)
    i += 1
if out:
    sys.stdout.write('\n'.join(out) + '\n')
PY
    if [ -s "$EXTRACT/part.diff" ]; then
      echo "fetch-qemu-scripts: applying $patchname to $s"
      patch -s -p1 -d "$EXTRACT/tree" < "$EXTRACT/part.diff"
    fi
  done
done
for s in $SCRIPTS; do
  cp "$EXTRACT/tree/$s" "$OUT/$(basename "$s")"
done
rm -rf "$EXTRACT"
echo "$ORIG + $DEBIAN" > "$OUT/SOURCE"
echo "fetch-qemu-scripts: wrote $OUT/analyze-migration.py (from $ORIG)"
