// Sizes as people write them on a command line: 256M, 1G, 4096, 1.5G, 64K.

import { ConfigError } from './errors.js';

const UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** Parse "256M" / "1G" / "4096" into bytes; `what` names the value in the error. */
export function parseSize(text: string, what: string, defaultUnit = ''): number {
  const match = /^(\d+(?:\.\d+)?)\s*([KMGTB]?)(?:i?B)?$/i.exec(text.trim());
  if (!match) throw new ConfigError(`Invalid ${what} "${text}": expected a size such as 256M, 1G or 4096`);
  const unit = (match[2] ?? '').toUpperCase() || defaultUnit;
  const bytes = Number(match[1]) * UNITS[unit]!;
  if (!Number.isSafeInteger(Math.round(bytes))) throw new ConfigError(`Invalid ${what} "${text}": too large`);
  return Math.round(bytes);
}

export function formatBytes(bytes: number): string {
  const abs = Math.abs(bytes);
  if (abs >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
  if (abs >= 1024 ** 2) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  if (abs >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} B`;
}
