import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { OutgoingFigures } from './outgoing-options.js';
import { buildMigrationInfo, formatInfoMigrate, integerListText, socketAddressInfo } from './query.js';
import { RamStats } from './ram.js';

function figures(over: Partial<OutgoingFigures> = {}): OutgoingFigures {
  return {
    startTime: 1000, setupTime: 12, totalTime: undefined, downtime: undefined, expectedDowntime: 40,
    mbps: 812.345, pagesPerSecond: 24000, thresholdBytes: 0, errorDesc: undefined, switchoverTime: undefined, switchoversCalledOff: 0, postcopyTime: undefined, ...over,
  };
}

function ram(): RamStats {
  const r = new RamStats();
  r.transferred = 10 * 1024 * 1024 + 100;
  r.duplicate = 200_000;
  r.normal = 2500;
  r.dirtySyncCount = 4;
  r.dirtyPagesRate = 1234;
  r.precopyBytes = 10 * 1024 * 1024;
  r.downtimeBytes = 100;
  r.remainingPages = 300;
  r.totalBytes = 1024 * 1024 * 1024;
  return r;
}

test('no migration ever: {} (query-migrate returns an empty object, as QEMU)', () => {
  assert.deepEqual(buildMigrationInfo(undefined, 'none'), {});
});

test('destination only: status alone', () => {
  assert.deepEqual(buildMigrationInfo(undefined, 'active'), { status: 'active' });
});

test('setup: status only; cancelled: status only; failed: status and error-desc', () => {
  assert.deepEqual(buildMigrationInfo({ status: 'setup', figures: figures(), ram: ram(), now: 1500 }, 'none'), { status: 'setup' });
  assert.deepEqual(buildMigrationInfo({ status: 'cancelled', figures: figures(), ram: ram(), now: 1500 }, 'none'), { status: 'cancelled' });
  assert.deepEqual(
    buildMigrationInfo({ status: 'failed', figures: figures({ errorDesc: 'Unable to write to socket: Broken pipe' }), ram: ram(), now: 1500 }, 'none'),
    { status: 'failed', 'error-desc': 'Unable to write to socket: Broken pipe' },
  );
});

test('active: total-time so far, expected-downtime, ram with remaining and dirty-pages-rate', () => {
  const info = buildMigrationInfo({ status: 'active', figures: figures(), ram: ram(), now: 1500.4 }, 'none');
  assert.equal(info['total-time'], 500);
  assert.equal(info['expected-downtime'], 40);
  assert.equal(info['setup-time'], 12);
  assert.equal(info.downtime, undefined);
  assert.deepEqual(info.ram, {
    transferred: 10485860, remaining: 1228800, total: 1073741824, duplicate: 200000, skipped: 0,
    normal: 2500, 'normal-bytes': 10240000, 'dirty-pages-rate': 1234, mbps: 812.345,
    'dirty-sync-count': 4, 'postcopy-requests': 0, 'page-size': 4096, 'multifd-bytes': 0,
    'pages-per-second': 24000, 'precopy-bytes': 10485760, 'downtime-bytes': 100,
    'postcopy-bytes': 0, 'dirty-sync-missed-zero-copy': 0,
  });
});

test('completed: total-time and downtime, remaining and dirty-pages-rate zero', () => {
  const info = buildMigrationInfo({ status: 'completed', figures: figures({ totalTime: 800.4, downtime: 34.6, setupTime: 1.7 }), ram: ram(), now: 9999 }, 'none');
  assert.equal(info['total-time'], 800, 'whole milliseconds, as QEMU');
  assert.equal(info.downtime, 35);
  assert.equal(info['setup-time'], 2);
  assert.equal(info['expected-downtime'], undefined);
  assert.equal(info.ram?.remaining, 0);
  assert.equal(info.ram?.['dirty-pages-rate'], 0);
});

test('info migrate text in QEMU 7.2 HMP layout', () => {
  const info = buildMigrationInfo({ status: 'active', figures: figures(), ram: ram(), now: 1500 }, 'none');
  assert.equal(formatInfoMigrate(info), [
    'globals:',
    'store-global-state: on',
    'only-migratable: off',
    'send-configuration: on',
    'send-section-footer: on',
    'decompress-error-check: on',
    'clear-bitmap-shift: 18',
    'Migration status: active',
    'total time: 500 ms',
    'expected downtime: 40 ms',
    'setup: 12 ms',
    'transferred ram: 10240 kbytes',
    'throughput: 812.35 mbps',
    'remaining ram: 1200 kbytes',
    'total ram: 1048576 kbytes',
    'duplicate: 200000 pages',
    'skipped: 0 pages',
    'normal: 2500 pages',
    'normal bytes: 10000 kbytes',
    'dirty sync count: 4',
    'page size: 4 kbytes',
    'multifd bytes: 0 kbytes',
    'pages-per-second: 24000',
    'dirty pages rate: 1234 pages',
    'precopy ram: 10240 kbytes',
    'downtime ram: 0 kbytes',
    '',
  ].join('\n'));
});

test('info migrate for a failed migration puts the error beside the status', () => {
  const text = formatInfoMigrate({ status: 'failed', 'error-desc': 'Connection refused' });
  assert.match(text, /^Migration status: failed \(Connection refused\)\ntotal time: 0 ms\n$/m);
});

test('socket-address: a listener\'s tcp (IPv4, IPv6) or unix address as QEMU\'s SocketAddress; none for fd: or exec:', () => {
  assert.deepEqual(socketAddressInfo('tcp:127.0.0.1:4444'), { port: '4444', ipv4: true, host: '127.0.0.1', type: 'inet' });
  assert.deepEqual(socketAddressInfo('tcp:[::1]:4444'), { port: '4444', ipv6: true, host: '::1', type: 'inet' });
  assert.deepEqual(socketAddressInfo('unix:/run/ferry/m.sock'), { path: '/run/ferry/m.sock', type: 'unix' });
  assert.equal(socketAddressInfo('exec:cat /tmp/f'), undefined);
  assert.equal(socketAddressInfo('fd:3'), undefined);
});

test('a destination waiting for its connection reports no status, as QEMU 7.2; info migrate lists where it listens', () => {
  assert.deepEqual(buildMigrationInfo(undefined, 'setup'), {});
  assert.deepEqual(buildMigrationInfo(undefined, 'active'), { status: 'active' });
  const text = formatInfoMigrate({ 'socket-address': [{ port: '4444', ipv6: true, host: '::1', type: 'inet' }, { path: '/run/m.sock', type: 'unix' }] });
  assert.match(text, /clear-bitmap-shift: 18\nsocket address: \[\n\ttcp:::1:4444\n\tunix:\/run\/m.sock\n\]\n$/);
});

test('info migrate on a post-copy destination: the blocktime lines, then where it listens last, in QEMU 7.2\'s order', () => {
  const text = formatInfoMigrate({
    status: 'postcopy-active', 'postcopy-blocktime': 12, 'postcopy-vcpu-blocktime': [40, 12],
    'socket-address': [{ path: '/run/m.sock', type: 'unix' }],
  });
  assert.match(text, /Migration status: postcopy-active\ntotal time: 0 ms\npostcopy blocktime: 12\npostcopy vcpu blocktime: 12,40\nsocket address: \[\n\tunix:\/run\/m.sock\n\]\n$/);
});

test('HMP integer lists as QEMU\'s string output visitor writes them: a sorted set, runs as a-b', () => {
  assert.equal(integerListText([7]), '7');
  assert.equal(integerListText([12, 0, 1]), '0-1,12');
  assert.equal(integerListText([3, 3, 4, 5, 9]), '3-5,9');
  assert.equal(integerListText([]), '');
});
