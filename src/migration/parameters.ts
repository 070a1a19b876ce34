// Migration parameters and capabilities by QEMU 7.2's names, defaults and validation
// wording (qapi/migration.json, migration.c migrate_params_check), so QMP users see what
// QEMU would say. Parameters are stored even where Ferry has no use for them yet;
// capabilities Ferry does not implement are refused rather than silently accepted.

import { MigrationError } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';

export interface MigrationParameters {
  'announce-initial': number;
  'announce-max': number;
  'announce-rounds': number;
  'announce-step': number;
  'compress-level': number;
  'compress-threads': number;
  'compress-wait-thread': boolean;
  'decompress-threads': number;
  'throttle-trigger-threshold': number;
  'cpu-throttle-initial': number;
  'cpu-throttle-increment': number;
  'cpu-throttle-tailslow': boolean;
  'tls-creds': string;
  'tls-hostname': string;
  'tls-authz': string;
  /** Bytes per second; 0 means no limit (QEMU 7.2: a rate_limit_max of 0 is not enforced). */
  'max-bandwidth': number;
  /** Milliseconds the guest may stay stopped at switchover. */
  'downtime-limit': number;
  'x-checkpoint-delay': number;
  'block-incremental': boolean;
  'multifd-channels': number;
  'xbzrle-cache-size': number;
  'max-postcopy-bandwidth': number;
  'max-cpu-throttle': number;
  'multifd-compression': 'none' | 'zlib' | 'zstd';
  'multifd-zlib-level': number;
  'multifd-zstd-level': number;
}

export const DEFAULT_MIGRATION_PARAMETERS: Readonly<MigrationParameters> = Object.freeze({
  'announce-initial': 50,
  'announce-max': 550,
  'announce-rounds': 5,
  'announce-step': 100,
  'compress-level': 1,
  'compress-threads': 8,
  'compress-wait-thread': true,
  'decompress-threads': 2,
  'throttle-trigger-threshold': 50,
  'cpu-throttle-initial': 20,
  'cpu-throttle-increment': 10,
  'cpu-throttle-tailslow': false,
  'tls-creds': '',
  'tls-hostname': '',
  'tls-authz': '',
  'max-bandwidth': 128 * 1024 * 1024,
  'downtime-limit': 300,
  'x-checkpoint-delay': 20000,
  'block-incremental': false,
  'multifd-channels': 2,
  'xbzrle-cache-size': 64 * 1024 * 1024,
  'max-postcopy-bandwidth': 0,
  'max-cpu-throttle': 99,
  'multifd-compression': 'none',
  'multifd-zlib-level': 1,
  'multifd-zstd-level': 1,
});

export type ParamType = 'uint8' | 'uint32' | 'uint64' | 'size' | 'int64' | 'bool' | 'str' | 'MultiFDCompression';

const PARAM_TYPES: Record<keyof MigrationParameters, ParamType> = {
  'announce-initial': 'size',
  'announce-max': 'size',
  'announce-rounds': 'size',
  'announce-step': 'size',
  'compress-level': 'uint8',
  'compress-threads': 'uint8',
  'compress-wait-thread': 'bool',
  'decompress-threads': 'uint8',
  'throttle-trigger-threshold': 'uint8',
  'cpu-throttle-initial': 'uint8',
  'cpu-throttle-increment': 'uint8',
  'cpu-throttle-tailslow': 'bool',
  'tls-creds': 'str',
  'tls-hostname': 'str',
  'tls-authz': 'str',
  'max-bandwidth': 'size',
  'downtime-limit': 'uint64',
  'x-checkpoint-delay': 'uint32',
  'block-incremental': 'bool',
  'multifd-channels': 'uint8',
  'xbzrle-cache-size': 'size',
  'max-postcopy-bandwidth': 'size',
  'max-cpu-throttle': 'uint8',
  'multifd-compression': 'MultiFDCompression',
  'multifd-zlib-level': 'uint8',
  'multifd-zstd-level': 'uint8',
};

/** The QAPI type of a migration parameter, or undefined for a name that is none. */
export function parameterType(name: string): ParamType | undefined {
  return Object.hasOwn(PARAM_TYPES, name) ? PARAM_TYPES[name as keyof MigrationParameters] : undefined;
}

const MULTIFD_COMPRESSION = ['none', 'zlib', 'zstd'];
const UINT_MAX: Partial<Record<ParamType, number>> = { uint8: 0xff, uint32: 0xffffffff };

/** QEMU's MAX_MIGRATE_DOWNTIME: 2000 seconds, in milliseconds. */
export const MAX_MIGRATE_DOWNTIME = 2000 * 1000;

/**
 * Check a migrate-set-parameters request and return the parameters it leads to
 * (`current` is left alone). Errors are worded as QEMU 7.2 words them: the QAPI type
 * errors name the parameter as sent ("max-bandwidth"), migrate_params_check names it
 * with underscores ("downtime_limit"), as QEMU does.
 */
export function applyParameters(current: Readonly<MigrationParameters>, request: Readonly<Record<string, unknown>>): MigrationParameters {
  const next: MigrationParameters = { ...current };
  const target = next as unknown as Record<string, unknown>;
  for (const [name, value] of Object.entries(request)) {
    if (!Object.hasOwn(PARAM_TYPES, name)) throw new MigrationError(`Parameter '${name}' is unexpected`);
    const type = PARAM_TYPES[name as keyof MigrationParameters];
    switch (type) {
      case 'bool':
        if (typeof value !== 'boolean') throw new MigrationError(`Invalid parameter type for '${name}', expected: boolean`);
        break;
      case 'str':
        // migrate-set-parameters takes StrOrNull for the TLS names; null means "".
        if (value === null) {
          target[name] = '';
          continue;
        }
        if (typeof value !== 'string') throw new MigrationError(`Invalid parameter type for '${name}', expected: string`);
        break;
      case 'MultiFDCompression':
        if (typeof value !== 'string') throw new MigrationError(`Invalid parameter type for '${name}', expected: string`);
        if (!MULTIFD_COMPRESSION.includes(value)) throw new MigrationError(`Parameter '${name}' does not accept value '${value}'`);
        break;
      default: {
        if (typeof value !== 'number' || !Number.isInteger(value)) {
          throw new MigrationError(`Invalid parameter type for '${name}', expected: integer`);
        }
        const max = UINT_MAX[type];
        if (type !== 'int64' && (value < 0 || (max !== undefined && value > max) || !Number.isSafeInteger(value))) {
          throw new MigrationError(`Parameter '${name}' expects ${type === 'size' ? 'size' : type}`);
        }
      }
    }
    target[name] = value;
  }
  checkParameters(next);
  return next;
}

function expects(name: string, what: string): MigrationError {
  return new MigrationError(`Parameter '${name}' expects ${what}`);
}

/** QEMU 7.2's migrate_params_check, in its order and with its words. */
export function checkParameters(p: Readonly<MigrationParameters>): void {
  if (p['compress-level'] > 9) throw expects('compress_level', 'a value between 0 and 9');
  if (p['compress-threads'] < 1) throw expects('compress_threads', 'a value between 1 and 255');
  if (p['decompress-threads'] < 1) throw expects('decompress_threads', 'a value between 1 and 255');
  if (p['throttle-trigger-threshold'] < 1 || p['throttle-trigger-threshold'] > 100) {
    throw expects('throttle_trigger_threshold', 'an integer in the range of 1 to 100');
  }
  if (p['cpu-throttle-initial'] < 1 || p['cpu-throttle-initial'] > 99) {
    throw expects('cpu_throttle_initial', 'an integer in the range of 1 to 99');
  }
  if (p['cpu-throttle-increment'] < 1 || p['cpu-throttle-increment'] > 99) {
    throw expects('cpu_throttle_increment', 'an integer in the range of 1 to 99');
  }
  // max_bandwidth > SIZE_MAX cannot happen here: a JSON number above 2^53 is already refused as a size.
  if (p['downtime-limit'] > MAX_MIGRATE_DOWNTIME) {
    // QEMU stringifies the macro, hence the parenthesised product in its message.
    throw expects('downtime_limit', 'an integer in the range of 0 to (2000 * 1000) ms');
  }
  if (p['multifd-channels'] < 1) throw expects('multifd_channels', 'a value between 1 and 255');
  if (p['multifd-zlib-level'] > 9) throw expects('multifd_zlib_level', 'a value between 0 and 9');
  if (p['multifd-zstd-level'] > 20) throw expects('multifd_zstd_level', 'a value between 0 and 20');
  const cache = p['xbzrle-cache-size'];
  if (cache < PAGE_SIZE || !isPowerOfTwo(cache)) {
    throw expects('xbzrle_cache_size', 'a power of two no less than the target page size');
  }
  if (p['max-cpu-throttle'] < p['cpu-throttle-initial'] || p['max-cpu-throttle'] > 99) {
    throw expects('max_cpu_throttle', 'an integer in the range of cpu_throttle_initial to 99');
  }
  if (p['announce-initial'] > 100000) throw expects('announce_initial', 'a value between 0 and 100000');
  if (p['announce-max'] > 100000) throw expects('announce_max', 'a value between 0 and 100000');
  if (p['announce-rounds'] > 1000) throw expects('announce_rounds', 'a value between 0 and 1000');
  if (p['announce-step'] < 1 || p['announce-step'] > 10000) throw expects('announce_step', 'a value between 0 and 10000');
}

function isPowerOfTwo(n: number): boolean {
  // Sizes go past 2^32, where bit operations in JavaScript stop working.
  return n > 0 && Number.isInteger(Math.log2(n)) && 2 ** Math.log2(n) === n;
}

/** QEMU 7.2's MigrationCapability list, in QEMU's order (query-migrate-capabilities keeps it). */
export const MIGRATION_CAPABILITIES = [
  'xbzrle', 'rdma-pin-all', 'auto-converge', 'zero-blocks', 'compress', 'events',
  'postcopy-ram', 'x-colo', 'release-ram', 'block', 'return-path', 'pause-before-switchover',
  'multifd', 'dirty-bitmaps', 'postcopy-blocktime', 'late-block-activate', 'x-ignore-shared',
  'validate-uuid', 'background-snapshot', 'zero-copy-send', 'postcopy-preempt',
] as const;

export type MigrationCapability = (typeof MIGRATION_CAPABILITIES)[number];

/** The capabilities Ferry carries out; turning any other one on is refused. */
export const IMPLEMENTED_CAPABILITIES: ReadonlySet<MigrationCapability> = new Set<MigrationCapability>([
  'events', 'xbzrle', 'auto-converge', 'postcopy-ram', 'postcopy-blocktime', 'return-path', 'pause-before-switchover', 'validate-uuid',
  'background-snapshot', 'multifd', 'release-ram', 'x-ignore-shared',
]);

export type MigrationCapabilities = Record<MigrationCapability, boolean>;

export function defaultCapabilities(): MigrationCapabilities {
  return Object.fromEntries(MIGRATION_CAPABILITIES.map((c) => [c, false])) as MigrationCapabilities;
}

export interface CapabilityStatus {
  readonly capability: string;
  readonly state: boolean;
}

/**
 * Check a migrate-set-capabilities request and return the capabilities it leads to.
 * Unknown names get QAPI's enum error; known but unimplemented ones turned on are
 * refused with a message saying so.
 */
export function applyCapabilities(
  current: Readonly<MigrationCapabilities>,
  request: readonly CapabilityStatus[],
  implemented: ReadonlySet<MigrationCapability> = IMPLEMENTED_CAPABILITIES,
): MigrationCapabilities {
  const next: MigrationCapabilities = { ...current };
  for (const entry of request) {
    const { capability, state } = entry;
    if (typeof capability !== 'string') throw new MigrationError(`Invalid parameter type for 'capability', expected: string`);
    if (typeof state !== 'boolean') throw new MigrationError(`Invalid parameter type for 'state', expected: boolean`);
    if (!(MIGRATION_CAPABILITIES as readonly string[]).includes(capability)) {
      throw new MigrationError(`Parameter 'capability' does not accept value '${capability}'`);
    }
    const cap = capability as MigrationCapability;
    if (state && !implemented.has(cap)) {
      throw new MigrationError(`Migration capability '${cap}' is not supported by Ferry (supported: ${[...implemented].join(', ')})`);
    }
    next[cap] = state;
  }
  return next;
}

/** Capabilities QEMU 7.2 refuses beside background-snapshot (check_caps_background_snapshot). */
const NOT_WITH_BACKGROUND_SNAPSHOT: readonly MigrationCapability[] = [
  'postcopy-ram', 'dirty-bitmaps', 'postcopy-blocktime', 'late-block-activate', 'return-path', 'multifd',
  'pause-before-switchover', 'auto-converge', 'release-ram', 'rdma-pin-all', 'compress', 'xbzrle', 'x-colo',
  'validate-uuid', 'zero-copy-send',
];

/**
 * QEMU's migrate_caps_check for background-snapshot, in its words: the host must be able to
 * write-protect guest RAM (`writeTracking`), guest RAM must be this process's own mapping
 * (`ownMemory`), and none of the capabilities QEMU refuses beside it may be on.
 */
export function checkBackgroundSnapshot(caps: Readonly<MigrationCapabilities>, host: { writeTracking: boolean; ownMemory: boolean }): void {
  if (!host.writeTracking) throw new MigrationError('Background-snapshot is not supported by host kernel');
  if (!host.ownMemory) throw new MigrationError('Background-snapshot is not compatible with guest memory configuration');
  const other = NOT_WITH_BACKGROUND_SNAPSHOT.find((c) => caps[c]);
  if (other !== undefined) throw new MigrationError(`Background-snapshot is not compatible with ${other}`);
}

/**
 * What Ferry's multifd does not combine with (QEMU 7.2 lets these through): XBZRLE (QEMU's
 * multifd path takes every page whole, so the capability would do nothing) and post-copy
 * (not built here yet). QEMU's own refusal of `compress` beside it stands as well.
 */
export function checkMultifd(caps: Readonly<MigrationCapabilities>): void {
  if (!caps.multifd) return;
  if (caps.compress) throw new MigrationError('Multifd is not compatible with compress');
  if (caps.xbzrle) throw new MigrationError('Multifd is not compatible with xbzrle in Ferry: multifd carries every page whole (QEMU 7.2 then sends no XBZRLE page either)');
  if (caps['postcopy-ram']) throw new MigrationError('Multifd is not compatible with postcopy-ram in Ferry yet');
}

/** QEMU's migrate_multi_channels_is_allowed: multifd needs a URI that can open more connections. */
export function allowsMultipleChannels(uri: string): boolean {
  return uri.startsWith('tcp:') || uri.startsWith('unix:');
}

/** QEMU 7.2's words when it is not. */
export const MULTIFD_PROTOCOL_REFUSED = 'multifd is not supported by current protocol';

export function capabilityList(caps: Readonly<MigrationCapabilities>): CapabilityStatus[] {
  return MIGRATION_CAPABILITIES.map((capability) => ({ capability, state: caps[capability] }));
}
