// query-migrate's MigrationInfo with QEMU 7.2's fields and when each appears
// (fill_source_migration_info / populate_ram_info), and the text of HMP "info migrate"
// in QEMU's layout, built from that same object.

import { PAGE_SIZE } from '../hypervisor/types.js';
import type { OutgoingFigures } from './outgoing-options.js';
import type { RamStats } from './ram.js';
import type { MigrationStatus } from './states.js';
import type { XbzrleCache } from './xbzrle-cache.js';

export interface MigrationStatsInfo {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  skipped: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  mbps: number;
  'dirty-sync-count': number;
  'postcopy-requests': number;
  'page-size': number;
  'multifd-bytes': number;
  'pages-per-second': number;
  'precopy-bytes': number;
  'downtime-bytes': number;
  'postcopy-bytes': number;
  'dirty-sync-missed-zero-copy': number;
}

/**
 * Ferry's own (QEMU 7.2 reports nothing of the kind for multifd-compression, and counts
 * the pages at their own size in `transferred` and `multifd-bytes`, as Ferry does): how
 * many bytes of pages went into the channels' compression and how many came out.
 */
export interface MultifdCompressionInfo {
  pages: number;
  'compressed-size': number;
  /** Bytes of pages per compressed byte. */
  'compression-rate': number;
}

export interface XbzrleCacheInfo {
  'cache-size': number;
  bytes: number;
  pages: number;
  'cache-miss': number;
  'cache-miss-rate': number;
  'encoding-rate': number;
  overflow: number;
}

/** QEMU's SocketAddress, as query-migrate lists where a destination listens. */
export type SocketAddressInfo =
  | { port: string; ipv4?: true; ipv6?: true; host: string; type: 'inet' }
  | { path: string; type: 'unix' };

export interface MigrationInfo {
  status?: MigrationStatus;
  /** Destination: where it listens (tcp: and unix: only), from migrate-incoming until the incoming migration ends. */
  'socket-address'?: SocketAddressInfo[];
  ram?: MigrationStatsInfo;
  'xbzrle-cache'?: XbzrleCacheInfo;
  /** With multifd-compression: Ferry's extension (MultifdCompressionInfo). */
  'x-ferry-multifd-compression'?: MultifdCompressionInfo;
  /** Present while auto-converge throttles the vCPUs (QEMU: while cpu_throttle_active()). */
  'cpu-throttle-percentage'?: number;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'error-desc'?: string;
  /**
   * Destination, with postcopy-blocktime on, once post-copy has run the guest here: ms during
   * which every vCPU waited on a page at once, and each vCPU's ms waiting (QEMU 7.2 shows
   * them once completed; Ferry from postcopy-active on, waits going on counted so far).
   */
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
}

export interface SourceView {
  readonly status: MigrationStatus;
  readonly figures: OutgoingFigures;
  readonly ram: RamStats;
  readonly now: number;
  /** The source's XBZRLE cache, when the capability is on. */
  readonly xbzrle?: XbzrleCache | undefined;
  /** The auto-converge throttle in force (0: none). */
  readonly throttlePercentage?: number;
}

const WITH_RAM: ReadonlySet<MigrationStatus> = new Set<MigrationStatus>([
  'active', 'cancelling', 'postcopy-active', 'pre-switchover', 'device', 'postcopy-paused', 'postcopy-recover', 'completed',
]);

/**
 * The source's MigrationInfo, or the destination's (status only, as QEMU's
 * fill_destination_migration_info) when no outgoing migration ever ran.
 */
export function buildMigrationInfo(source: SourceView | undefined, destinationStatus: MigrationStatus): MigrationInfo {
  const info: MigrationInfo = {};
  // QEMU 7.2 reports no status for a destination still waiting for its connection.
  if (destinationStatus !== 'none' && destinationStatus !== 'setup') info.status = destinationStatus;
  if (!source || source.status === 'none') return info;
  const { status, figures, ram, now } = source;
  info.status = status;
  if (status === 'failed') {
    if (figures.errorDesc !== undefined) info['error-desc'] = figures.errorDesc;
    return info;
  }
  if (!WITH_RAM.has(status)) return info;
  // QEMU reports whole milliseconds (uint64) for every time.
  info['setup-time'] = Math.round(figures.setupTime ?? 0);
  if (status === 'completed') {
    info['total-time'] = Math.round(figures.totalTime ?? 0);
    info.downtime = Math.round(figures.downtime ?? 0);
  } else {
    info['total-time'] = Math.round(now - figures.startTime);
    info['expected-downtime'] = figures.expectedDowntime;
  }
  const completed = status === 'completed';
  info.ram = {
    transferred: ram.transferred,
    remaining: completed ? 0 : ram.remainingBytes,
    total: ram.totalBytes,
    duplicate: ram.duplicate,
    skipped: 0,
    normal: ram.normal,
    'normal-bytes': ram.normalBytes,
    'dirty-pages-rate': completed ? 0 : ram.dirtyPagesRate,
    mbps: figures.mbps,
    'dirty-sync-count': ram.dirtySyncCount,
    'postcopy-requests': ram.postcopyRequests,
    'page-size': PAGE_SIZE,
    'multifd-bytes': ram.multifdBytes,
    'pages-per-second': figures.pagesPerSecond,
    'precopy-bytes': ram.precopyBytes,
    'downtime-bytes': ram.downtimeBytes,
    'postcopy-bytes': ram.postcopyBytes,
    'dirty-sync-missed-zero-copy': 0,
  };
  const x = source.xbzrle;
  if (x) {
    info['xbzrle-cache'] = {
      'cache-size': x.cacheSize,
      bytes: x.bytes,
      pages: x.pages,
      'cache-miss': x.cacheMiss,
      'cache-miss-rate': x.cacheMissRate,
      'encoding-rate': x.encodingRate,
      overflow: x.overflow,
    };
  }
  const mc = ram.multifdCompression;
  if (mc) {
    info['x-ferry-multifd-compression'] = {
      pages: mc.compressedFrom / PAGE_SIZE,
      'compressed-size': mc.compressedTo,
      'compression-rate': mc.compressedTo === 0 ? 0 : mc.compressedFrom / mc.compressedTo,
    };
  }
  if (source.throttlePercentage) info['cpu-throttle-percentage'] = source.throttlePercentage;
  return info;
}

/**
 * A listener's address ("tcp:127.0.0.1:4444", "tcp:[::1]:4444", "unix:/run/m.sock") as
 * QEMU's SocketAddress; undefined for anything else (fd:, exec: listen on no socket).
 */
export function socketAddressInfo(address: string): SocketAddressInfo | undefined {
  if (address.startsWith('unix:')) return { path: address.slice('unix:'.length), type: 'unix' };
  const inet = /^tcp:(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(address);
  if (!inet) return undefined;
  const host = inet[1] ?? inet[2]!;
  return { port: inet[3]!, ...(inet[1] !== undefined ? { ipv6: true as const } : { ipv4: true as const }), host, type: 'inet' };
}

const kb = (bytes: number): number => Math.floor(bytes / 1024);

/** HMP "info migrate" as QEMU 7.2 prints it (hmp_info_migrate). */
export function formatInfoMigrate(info: MigrationInfo): string {
  const lines: string[] = [
    'globals:',
    'store-global-state: on',
    'only-migratable: off',
    'send-configuration: on',
    'send-section-footer: on',
    'decompress-error-check: on',
    'clear-bitmap-shift: 18',
  ];
  if (info.status !== undefined) {
    lines.push(info.status === 'failed' && info['error-desc'] !== undefined
      ? `Migration status: ${info.status} (${info['error-desc']})`
      : `Migration status: ${info.status}`);
    lines.push(`total time: ${info['total-time'] ?? 0} ms`);
    if (info['expected-downtime'] !== undefined) lines.push(`expected downtime: ${info['expected-downtime']} ms`);
    if (info.downtime !== undefined) lines.push(`downtime: ${info.downtime} ms`);
    if (info['setup-time'] !== undefined) lines.push(`setup: ${info['setup-time']} ms`);
  }
  const ram = info.ram;
  if (ram) {
    lines.push(
      `transferred ram: ${kb(ram.transferred)} kbytes`,
      `throughput: ${ram.mbps.toFixed(2)} mbps`,
      `remaining ram: ${kb(ram.remaining)} kbytes`,
      `total ram: ${kb(ram.total)} kbytes`,
      `duplicate: ${ram.duplicate} pages`,
      `skipped: ${ram.skipped} pages`,
      `normal: ${ram.normal} pages`,
      `normal bytes: ${kb(ram['normal-bytes'])} kbytes`,
      `dirty sync count: ${ram['dirty-sync-count']}`,
      `page size: ${kb(ram['page-size'])} kbytes`,
      `multifd bytes: ${kb(ram['multifd-bytes'])} kbytes`,
      `pages-per-second: ${ram['pages-per-second']}`,
    );
    if (ram['dirty-pages-rate']) lines.push(`dirty pages rate: ${ram['dirty-pages-rate']} pages`);
    if (ram['postcopy-requests']) lines.push(`postcopy request count: ${ram['postcopy-requests']}`);
    if (ram['precopy-bytes']) lines.push(`precopy ram: ${kb(ram['precopy-bytes'])} kbytes`);
    if (ram['downtime-bytes']) lines.push(`downtime ram: ${kb(ram['downtime-bytes'])} kbytes`);
    if (ram['postcopy-bytes']) lines.push(`postcopy ram: ${kb(ram['postcopy-bytes'])} kbytes`);
  }
  const x = info['xbzrle-cache'];
  if (x) {
    lines.push(
      `cache size: ${x['cache-size']} bytes`,
      `xbzrle transferred: ${kb(x.bytes)} kbytes`,
      `xbzrle pages: ${x.pages} pages`,
      `xbzrle cache miss: ${x['cache-miss']} pages`,
      `xbzrle cache miss rate: ${x['cache-miss-rate'].toFixed(2)}`,
      `xbzrle encoding rate: ${x['encoding-rate'].toFixed(2)}`,
      `xbzrle overflow: ${x.overflow}`,
    );
  }
  const mc = info['x-ferry-multifd-compression'];
  if (mc) {
    // Ferry's: QEMU 7.2 prints nothing of the kind for multifd-compression.
    lines.push(`multifd compressed pages: ${mc.pages} pages`, `multifd compressed size: ${kb(mc['compressed-size'])} kbytes`, `multifd compression rate: ${mc['compression-rate'].toFixed(2)}`);
  }
  if (info['cpu-throttle-percentage'] !== undefined) lines.push(`cpu throttle percentage: ${info['cpu-throttle-percentage']}`);
  if (info['postcopy-blocktime'] !== undefined) lines.push(`postcopy blocktime: ${info['postcopy-blocktime']}`);
  const perVcpu = info['postcopy-vcpu-blocktime'];
  if (perVcpu !== undefined) lines.push(`postcopy vcpu blocktime: ${integerListText(perVcpu)}`);
  const addresses = info['socket-address'];
  if (addresses) {
    // socket_uri: "tcp:HOST:PORT" with no brackets even around an IPv6 host, as QEMU 7.2 prints it.
    lines.push('socket address: [', ...addresses.map((a) => `\t${a.type === 'unix' ? `unix:${a.path}` : `tcp:${a.host}:${a.port}`}`), ']');
  }
  return lines.join('\n') + '\n';
}

/**
 * An integer list as QEMU's string output visitor writes it (HMP's lists): the values as a
 * sorted set, runs of consecutive values as "a-b", comma-separated — [12, 0, 1] is "0-1,12".
 */
export function integerListText(values: readonly number[]): string {
  const sorted = [...new Set(values)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length;) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(j === i ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}
