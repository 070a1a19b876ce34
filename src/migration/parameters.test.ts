import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MigrationError } from '../errors.js';
import {
  DEFAULT_MIGRATION_PARAMETERS, MIGRATION_CAPABILITIES, applyCapabilities, applyParameters,
  allowsMultipleChannels, capabilityList, checkBackgroundSnapshot, checkMultifd, defaultCapabilities,
} from './parameters.js';

const rejects = (request: Record<string, unknown>, message: string): void => {
  assert.throws(() => applyParameters(DEFAULT_MIGRATION_PARAMETERS, request), (err: unknown) => {
    assert.ok(err instanceof MigrationError);
    assert.equal(err.message, message);
    return true;
  });
};

test("QEMU 7.2's defaults", () => {
  const p = DEFAULT_MIGRATION_PARAMETERS;
  assert.equal(p['downtime-limit'], 300);
  assert.equal(p['max-bandwidth'], 134217728);
  assert.equal(p['multifd-channels'], 2);
  assert.equal(p['xbzrle-cache-size'], 67108864);
  assert.equal(p['cpu-throttle-initial'], 20);
  assert.equal(p['cpu-throttle-increment'], 10);
  assert.equal(p['max-cpu-throttle'], 99);
  assert.equal(p['throttle-trigger-threshold'], 50);
  assert.equal(p['multifd-compression'], 'none');
  assert.equal(p['tls-creds'], '');
  assert.equal(p['tls-hostname'], '');
});

test('accepted values are stored and the input is left alone', () => {
  const next = applyParameters(DEFAULT_MIGRATION_PARAMETERS, { 'downtime-limit': 30, 'max-bandwidth': 0, 'tls-creds': null, 'multifd-compression': 'zstd' });
  assert.equal(next['downtime-limit'], 30);
  assert.equal(next['max-bandwidth'], 0); // 0: no limit, as QEMU 7.2
  assert.equal(next['tls-creds'], '');
  assert.equal(next['multifd-compression'], 'zstd');
  assert.equal(DEFAULT_MIGRATION_PARAMETERS['downtime-limit'], 300);
  // Parameters without an effect in Ferry yet are stored, as QEMU stores them.
  assert.equal(applyParameters(next, { 'multifd-channels': 8 })['multifd-channels'], 8);
});

test("range errors are worded as QEMU's migrate_params_check words them", () => {
  rejects({ 'downtime-limit': 2_000_001 }, "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms");
  rejects({ 'multifd-channels': 0 }, "Parameter 'multifd_channels' expects a value between 1 and 255");
  rejects({ 'xbzrle-cache-size': 5000 }, "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size");
  rejects({ 'xbzrle-cache-size': 2048 }, "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size");
  rejects({ 'cpu-throttle-initial': 0 }, "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99");
  rejects({ 'cpu-throttle-increment': 100 }, "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99");
  rejects({ 'throttle-trigger-threshold': 101 }, "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100");
  rejects({ 'max-cpu-throttle': 100 }, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99");
  rejects({ 'max-cpu-throttle': 19 }, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99");
  rejects({ 'compress-level': 10 }, "Parameter 'compress_level' expects a value between 0 and 9");
  rejects({ 'multifd-zstd-level': 21 }, "Parameter 'multifd_zstd_level' expects a value between 0 and 20");
});

test('type errors are worded as QAPI words them', () => {
  rejects({ 'downtime-limit': 'fast' }, "Invalid parameter type for 'downtime-limit', expected: integer");
  rejects({ 'downtime-limit': 1.5 }, "Invalid parameter type for 'downtime-limit', expected: integer");
  rejects({ 'max-bandwidth': -1 }, "Parameter 'max-bandwidth' expects size");
  rejects({ 'multifd-channels': 256 }, "Parameter 'multifd-channels' expects uint8");
  rejects({ 'block-incremental': 1 }, "Invalid parameter type for 'block-incremental', expected: boolean");
  rejects({ 'multifd-compression': 'lz4' }, "Parameter 'multifd-compression' does not accept value 'lz4'");
  rejects({ 'no-such-thing': 1 }, "Parameter 'no-such-thing' is unexpected");
});

test('a refused request changes nothing, even where earlier members were fine', () => {
  const before = { ...DEFAULT_MIGRATION_PARAMETERS };
  assert.throws(() => applyParameters(before, { 'downtime-limit': 10, 'multifd-channels': 0 }), MigrationError);
  assert.equal(before['downtime-limit'], 300);
});

test("capabilities: QEMU's list, all off; events can be turned on", () => {
  const caps = defaultCapabilities();
  const list = capabilityList(caps);
  assert.deepEqual(list.map((c) => c.capability), [...MIGRATION_CAPABILITIES]);
  assert.ok(list.every((c) => c.state === false));
  const next = applyCapabilities(caps, [{ capability: 'events', state: true }, { capability: 'xbzrle', state: true }]);
  assert.equal(next.events, true);
  assert.equal(next.xbzrle, true);
  assert.equal(caps.events, false);
});

test('capabilities Ferry does not carry out are refused when turned on, never silently accepted', () => {
  const caps = defaultCapabilities();
  for (const capability of ['postcopy-preempt', 'zero-copy-send', 'x-colo', 'compress', 'late-block-activate']) {
    assert.throws(() => applyCapabilities(caps, [{ capability, state: true }]), (err: unknown) => {
      return err instanceof MigrationError && err.message.includes(`'${capability}' is not supported by Ferry`);
    });
  }
  // Turning one off is what QEMU's default already is: accepted.
  assert.equal(applyCapabilities(caps, [{ capability: 'compress', state: false }]).compress, false);
  assert.throws(() => applyCapabilities(caps, [{ capability: 'warp-drive', state: true }]), /Parameter 'capability' does not accept value 'warp-drive'/);
});

test('background-snapshot: QEMU 7.2\'s checks and words — the host, the guest memory, and every capability refused beside it', () => {
  const host = { writeTracking: true, ownMemory: true };
  const caps = applyCapabilities(defaultCapabilities(), [{ capability: 'background-snapshot', state: true }, { capability: 'events', state: true }]);
  checkBackgroundSnapshot(caps, host);
  assert.throws(() => checkBackgroundSnapshot(caps, { ...host, writeTracking: false }), /^MigrationError: Background-snapshot is not supported by host kernel$/);
  assert.throws(() => checkBackgroundSnapshot(caps, { ...host, ownMemory: false }), /Background-snapshot is not compatible with guest memory configuration/);
  for (const capability of ['postcopy-ram', 'postcopy-blocktime', 'return-path', 'pause-before-switchover', 'auto-converge', 'xbzrle', 'validate-uuid', 'multifd', 'release-ram', 'compress'] as const) {
    assert.throws(() => checkBackgroundSnapshot({ ...caps, [capability]: true }, host), new RegExp(`Background-snapshot is not compatible with ${capability}$`));
  }
});

test('multifd: what it is refused beside, and the URIs it can open more connections to', () => {
  const caps = applyCapabilities(defaultCapabilities(), [{ capability: 'multifd', state: true }]);
  checkMultifd(caps);
  checkMultifd({ ...caps, 'auto-converge': true, 'return-path': true, 'validate-uuid': true, 'pause-before-switchover': true, events: true });
  assert.throws(() => checkMultifd({ ...caps, compress: true }), /^MigrationError: Multifd is not compatible with compress$/);
  assert.throws(() => checkMultifd({ ...caps, xbzrle: true }), /^MigrationError: Multifd is not compatible with xbzrle in Ferry/);
  assert.throws(() => checkMultifd({ ...caps, 'postcopy-ram': true }), /^MigrationError: Multifd is not compatible with postcopy-ram in Ferry yet$/);
  // Off, nothing is checked.
  checkMultifd({ ...caps, multifd: false, xbzrle: true, 'postcopy-ram': true });
  for (const uri of ['tcp:127.0.0.1:4444', 'tcp:[::1]:4444', 'unix:/run/m.sock']) assert.ok(allowsMultipleChannels(uri), uri);
  for (const uri of ['exec:cat > f', 'fd:3', 'fd:migfd', 'file:/x']) assert.ok(!allowsMultipleChannels(uri), uri);
});
