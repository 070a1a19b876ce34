// Ferry's own version (from package.json), in the shape QMP's greeting and
// query-version report it: {major, minor, micro} and a "ferry-X.Y.Z" package string.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface QmpVersion {
  readonly qemu: { readonly major: number; readonly minor: number; readonly micro: number };
  readonly package: string;
}

function readPackageVersion(): string {
  // Walk up from this module (src/qmp or dist/src/qmp) to Ferry's package.json.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'ferry' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // No package.json at this level: keep walking up.
    }
    dir = dirname(dir);
  }
  return '0.0.0';
}

export const FERRY_VERSION = readPackageVersion();

export function ferryQmpVersion(version = FERRY_VERSION): QmpVersion {
  const [major = 0, minor = 0, micro = 0] = version.split(/[.+-]/, 3).map((part) => Number.parseInt(part, 10) || 0);
  return { qemu: { major, minor, micro }, package: `ferry-${version}` };
}
