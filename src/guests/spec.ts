// What guest to run: `--guest builtin:sweep[,from=1M,to=100M][,report=N]`, `builtin:hot,mib=N`,
// `builtin:idle`, `builtin:random,rate=N` (sim only) — parsed once, used by every accelerator.

import { ConfigError } from '../errors.js';
import { parseSize } from '../size.js';
import { SWEEP_DEFAULT_FROM } from './layout.js';
import { HIGH_RAM_BASE } from '../hypervisor/ram-layout.js';

export type GuestSpec =
  | { readonly kind: 'sweep'; readonly from: number; readonly to: number | undefined; readonly rate: number | undefined; readonly report?: number }
  | { readonly kind: 'hot'; readonly mib: number; readonly rate: number | undefined; readonly report?: number }
  | { readonly kind: 'random'; readonly rate: number | undefined }
  | { readonly kind: 'idle' };

export const DEFAULT_GUEST = 'builtin:sweep';

/**
 * Parse a guest spec string. `rate=N` (pages per second) is honoured by the sim
 * accelerator only; real guests run as fast as their CPU lets them.
 */
export function parseGuestSpec(text: string): GuestSpec {
  const match = /^builtin:([a-z]+)(?:,(.*))?$/.exec(text);
  if (!match) {
    throw new ConfigError(`Invalid --guest "${text}": expected builtin:sweep, builtin:hot,mib=N, builtin:random or builtin:idle`);
  }
  const kind = match[1]!;
  const options = new Map<string, string>();
  for (const part of (match[2] ?? '').split(',').filter((p) => p !== '')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new ConfigError(`Invalid --guest option "${part}" in "${text}": expected key=value`);
    options.set(part.slice(0, eq), part.slice(eq + 1));
  }
  const take = (allowed: string[]): void => {
    for (const key of options.keys()) {
      if (!allowed.includes(key)) {
        throw new ConfigError(`Unknown --guest option "${key}" for builtin:${kind} (allowed: ${allowed.join(', ') || 'none'})`);
      }
    }
  };
  // report=N: print the pass number every N passes (a fast guest would flood the console).
  const report = (): { report?: number } => {
    const value = options.get('report');
    if (value === undefined) return {};
    const n = Number(value);
    if (!Number.isInteger(n) || n <= 0 || n > 0xffffffff) throw new ConfigError(`Invalid --guest report "${value}": expected a number of passes, a positive integer`);
    return { report: n };
  };
  const rate = (): number | undefined => {
    const value = options.get('rate');
    if (value === undefined) return undefined;
    const n = Number(value);
    if (!Number.isInteger(n) || n <= 0) throw new ConfigError(`Invalid --guest rate "${value}": expected pages per second, a positive integer`);
    return n;
  };
  switch (kind) {
    case 'sweep': {
      take(['from', 'to', 'rate', 'report']);
      const from = options.has('from') ? parseSize(options.get('from')!, 'guest sweep "from"') : SWEEP_DEFAULT_FROM;
      const to = options.has('to') ? parseSize(options.get('to')!, 'guest sweep "to"') : undefined;
      if (from < SWEEP_DEFAULT_FROM) throw new ConfigError(`Invalid --guest from=${options.get('from')}: the guest's own pages occupy the first ${SWEEP_DEFAULT_FROM / 1024} KiB`);
      if (to !== undefined && to <= from) throw new ConfigError(`Invalid --guest: to (${to}) must be above from (${from})`);
      return { kind: 'sweep', from, to, rate: rate(), ...report() };
    }
    case 'hot': {
      take(['mib', 'rate', 'report']);
      const mib = Number(options.get('mib') ?? '');
      if (!Number.isInteger(mib) || mib <= 0) throw new ConfigError(`Invalid --guest "${text}": builtin:hot needs mib=N, a positive integer`);
      return { kind: 'hot', mib, rate: rate(), ...report() };
    }
    case 'random':
      take(['rate']);
      return { kind: 'random', rate: rate() };
    case 'idle':
      take([]);
      return { kind: 'idle' };
    default:
      throw new ConfigError(`Unknown built-in guest "${kind}" in "${text}": expected sweep, hot, random or idle`);
  }
}

/**
 * The byte range a sweeping guest walks for a given RAM size. `lowRamLimit`: where a PC's
 * 32-bit hole begins when the RAM goes on above 4 GiB (ram-layout.ts, the kvm accelerator);
 * the default sweep then ends at the hole, and a range given may lie below it or above
 * 4 GiB but not across it.
 */
export function sweepRange(spec: GuestSpec, memorySize: number, lowRamLimit?: number): { from: number; to: number } | undefined {
  const split = lowRamLimit !== undefined && memorySize > lowRamLimit;
  const low = split ? lowRamLimit : memorySize;
  /** Guest-physical end of RAM: the part above the hole starts at 4 GiB. */
  const end = split ? HIGH_RAM_BASE + (memorySize - lowRamLimit) : memorySize;
  switch (spec.kind) {
    case 'sweep': {
      const to = Math.min(spec.to ?? low, end);
      if (spec.from >= to) throw new ConfigError(`Guest sweep range ${spec.from}..${to} is empty for ${memorySize} bytes of RAM`);
      if (split && spec.from < HIGH_RAM_BASE && to > low) {
        throw new ConfigError(`Guest sweep range 0x${spec.from.toString(16)}..0x${to.toString(16)} crosses the hole without RAM at 0x${low.toString(16)}..0x${HIGH_RAM_BASE.toString(16)}: sweep below it or from 4G up`);
      }
      return { from: spec.from, to };
    }
    case 'hot': {
      const to = SWEEP_DEFAULT_FROM + spec.mib * 1024 * 1024;
      if (to > low) throw new ConfigError(`Guest working set of ${spec.mib} MiB does not fit in ${low / 1048576} MiB of RAM above 1 MiB`);
      return { from: SWEEP_DEFAULT_FROM, to };
    }
    default:
      return undefined;
  }
}
