// The `multifd` capability between two fake VMs in one process: pages of data on extra
// connections, zero pages on the main stream, every EOS waiting for each channel's SYNC —
// so a page sent again in a later pass lands after its older copy even when the older one
// took a slower channel — and every way it can go wrong leaving the source guest running.

import { test, type TestContext } from 'node:test';
import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import { createMemoryChannelPair } from '../src/stream/memory-channel.js';
import type { Channel } from '../src/transport/channel.js';
import { MultifdSender } from '../src/migration/multifd-send.js';
import { zstdAvailable } from '../src/sys/zstd.js';
import { digest, makeSide, memoryNetwork, statuses, type Side } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;
const URI = 'unix:/memory/multifd';

/** The source's connections through memory pairs; with `slow`, connection n's writes each wait that many ms. */
function network(options?: { slow?: (n: number) => number }): ReturnType<typeof memoryNetwork> {
  const slow = options?.slow;
  return memoryNetwork({
    address: URI,
    ...(slow ? { wrap: (near: Channel, n: number) => { const delay = slow(n); return delay > 0 ? slowed(near, delay) : near; } } : {}),
  });
}

/** A channel whose every write waits `ms` first, in order: a slower link. */
function slowed(inner: Channel, ms: number): Channel {
  let tail = Promise.resolve();
  return {
    ...inner,
    description: `${inner.description} (slow)`,
    read: () => inner.read(),
    write: (data, done) => {
      tail = tail.then(() => new Promise((r) => setTimeout(r, ms))).then(() => inner.write(data, done));
      return tail;
    },
    end: async () => {
      await tail;
      await inner.end();
    },
    destroy: (error) => inner.destroy(error),
  };
}

function pair(memorySize: number, net: ReturnType<typeof network>, waitMs?: number): { src: Side; dst: Side } {
  const src = makeSide({ memorySize }, { connect: net.connect });
  const dst = makeSide({ memorySize, incoming: true }, { listen: net.listen }, undefined, waitMs !== undefined ? { multifdConnectWaitMs: waitMs } : undefined);
  for (const side of [src, dst]) side.migration.setCapabilities([{ capability: 'events', state: true }]);
  return { src, dst };
}

function multifd(side: Side, channels: number): void {
  side.migration.setParameters({ 'multifd-channels': channels });
  side.migration.setCapabilities([{ capability: 'multifd', state: true }]);
}

async function settle(src: Side, dst: Side): Promise<void> {
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
}

/** Both ends settle, completed, with the same RAM. */
async function completes(src: Side, dst: Side): Promise<void> {
  await settle(src, dst);
  src.vm.stopWorkload();
  assert.equal(src.migration.status, 'completed', JSON.stringify(src.migration.queryMigrate()));
  assert.equal(dst.migration.incomingStatus, 'completed', dst.migration.incomingError);
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram), 'the RAM differs (a stale copy of a page landed last?)');
}

/** Migrate, and see the destination fail with `error` without starting a guest, and the source fail and run its guest again. */
async function failsBoth(t: TestContext, src: Side, dst: Side, error: RegExp): Promise<void> {
  await dst.migration.migrateIncoming(URI);
  src.migration.migrate(URI);
  await settle(src, dst);
  assert.equal(dst.migration.incomingStatus, 'failed');
  assert.match(dst.migration.incomingError ?? '', error);
  assert.equal(dst.vm.runState, 'inmigrate', 'the destination never started a guest');
  assert.equal(src.migration.status, 'failed');
  runningAgain(t, src);
}

function runningAgain(t: TestContext, src: Side): void {
  assert.equal(src.vm.runState, 'running', 'the source guest runs again');
  assert.equal(src.vm.dirtyLog.active, false);
  t.diagnostic(`source: ${JSON.stringify(src.migration.queryMigrate())}`);
}

test('multifd: a dirtying guest migrates over three channels; pages of data on them, zero pages on the main stream', async (t) => {
  const net = network();
  const { src, dst } = pair(16 * MiB, net);
  src.vm.fillPages(0, 2048); // 8 MiB of data, 8 MiB of zeros
  src.vm.startWorkload(20, 1);
  t.after(() => src.vm.stopWorkload());
  multifd(src, 3);
  multifd(dst, 3);
  src.migration.setParameters({ 'max-bandwidth': 0 });
  await dst.migration.migrateIncoming(URI);
  src.migration.migrate(URI);
  await completes(src, dst);
  assert.equal(net.made.length, 4, 'the main connection and three channels');
  const info = src.migration.queryMigrate();
  assert.ok(info.ram);
  assert.ok(info.ram.normal >= 2048, `normal ${info.ram.normal}`);
  // Every page of data went in a packet: 4096 bytes each, plus 1344 per packet of at most 128.
  const packetBytes = info.ram['multifd-bytes'] - info.ram.normal * 4096;
  assert.ok(packetBytes > 0 && packetBytes % 1344 === 0, `multifd-bytes ${info.ram['multifd-bytes']} for ${info.ram.normal} pages`);
  assert.ok(packetBytes / 1344 >= Math.ceil(info.ram.normal / 128), 'at most 128 pages per packet');
  assert.ok(info.ram.transferred > info.ram['multifd-bytes'], 'the main stream carried the rest');
  assert.deepEqual(statuses(dst.events), ['setup', 'active', 'completed']);
});

for (const compression of ['zlib', 'zstd'] as const) {
  test(`multifd-compression ${compression}: a dirtying guest migrates over two channels, its pages compressed on each`, { skip: compression === 'zstd' && !zstdAvailable() ? 'libzstd.so.1 did not load on this host' : false }, async (t) => {
    const net = network();
    const { src, dst } = pair(16 * MiB, net);
    src.vm.fillPages(0, 2048);
    src.vm.startWorkload(20, 1);
    t.after(() => src.vm.stopWorkload());
    for (const side of [src, dst]) {
      multifd(side, 2);
      side.migration.setParameters({ 'multifd-compression': compression, 'multifd-zlib-level': 6, 'multifd-zstd-level': 3 });
    }
    src.migration.setParameters({ 'max-bandwidth': 0 });
    await dst.migration.migrateIncoming(URI);
    src.migration.migrate(URI);
    await completes(src, dst);
    const info = src.migration.queryMigrate();
    assert.ok(info.ram);
    assert.ok(info.ram.normal >= 2048, `normal ${info.ram.normal}`);
    // Counted as QEMU 7.2 counts them (multifd_send_pages): each packet as its header and
    // its pages at their own size, whatever they were compressed to.
    const packetBytes = info.ram['multifd-bytes'] - info.ram.normal * 4096;
    assert.ok(packetBytes > 0 && packetBytes % 1344 === 0, `multifd-bytes ${info.ram['multifd-bytes']} for ${info.ram.normal} pages`);
    assert.ok(info.ram.transferred > info.ram['multifd-bytes'], 'the main stream carried the rest');
    // What they went as on the wire: Ferry's own figure.
    const z = info['x-ferry-multifd-compression'];
    assert.ok(z, 'x-ferry-multifd-compression is reported');
    assert.equal(z.pages, info.ram.normal, 'every page of data went through the compression');
    assert.ok(z['compressed-size'] > 0 && z['compressed-size'] < info.ram['normal-bytes'] / 2, `${z['compressed-size']} compressed bytes for ${info.ram['normal-bytes']} bytes of pages`);
    assert.ok(Math.abs(z['compression-rate'] - info.ram['normal-bytes'] / z['compressed-size']) < 1e-6);
    t.diagnostic(`${compression}: ${info.ram['normal-bytes']} bytes of pages as ${z['compressed-size']} on the channels`);
  });
}

for (const [source, destination, error] of [
  ['zlib', 'none', /flags received 2 flags expected 0: pages compressed with zlib, and multifd-compression is none here/],
  ['none', 'zlib', /flags received 0 flags expected 2: pages compressed with none, and multifd-compression is zlib here/],
  ['zlib', 'zstd', /flags received 2 flags expected 4/],
] as const) {
  test(`multifd-compression ${source} at the source, ${destination} at the destination: the destination fails at the first packet and never starts; the source guest runs on`, { skip: destination === 'zstd' && !zstdAvailable() ? 'libzstd.so.1 did not load on this host' : false }, async (t) => {
    const { src, dst } = pair(4 * MiB, network());
    src.vm.fillPages(0, 512);
    multifd(src, 2);
    multifd(dst, 2);
    src.migration.setParameters({ 'max-bandwidth': 0, 'multifd-compression': source });
    dst.migration.setParameters({ 'multifd-compression': destination });
    await failsBoth(t, src, dst, error);
  });
}

test('multifd: a page sent again lands after its older copy, even when the older one took a slower channel', async (t) => {
  // Channel 0 (the second connection) is slow: pages sent on it in one pass would land
  // after the same pages sent on the fast one in the next pass, but for the SYNC each EOS waits for.
  const net = network({ slow: (n) => (n === 1 ? 3 : 0) });
  const { src, dst } = pair(8 * MiB, net);
  src.vm.fillPages(0, 2048);
  src.vm.startWorkload(64, 1);
  t.after(() => src.vm.stopWorkload());
  multifd(src, 2);
  multifd(dst, 2);
  src.migration.setParameters({ 'max-bandwidth': 0, 'downtime-limit': 50 });
  await dst.migration.migrateIncoming(URI);
  src.migration.migrate(URI);
  await completes(src, dst);
  const info = src.migration.queryMigrate();
  assert.ok((info.ram?.['dirty-sync-count'] ?? 0) >= 3, `passes: ${info.ram?.['dirty-sync-count']}`);
});

test('multifd beside return-path, pause-before-switchover and auto-converge: the destination\'s SHUT comes after every channel\'s last page', async (t) => {
  const net = network();
  const { src, dst } = pair(8 * MiB, net);
  src.vm.fillPages(0, 1024);
  src.vm.startWorkload(16, 1);
  t.after(() => src.vm.stopWorkload());
  multifd(src, 2);
  multifd(dst, 2);
  src.migration.setCapabilities([{ capability: 'return-path', state: true }, { capability: 'pause-before-switchover', state: true }, { capability: 'auto-converge', state: true }]);
  src.migration.setParameters({ 'max-bandwidth': 0 });
  await dst.migration.migrateIncoming(URI);
  src.migration.migrate(URI);
  while (src.migration.status !== 'pre-switchover') {
    assert.ok(['setup', 'active'].includes(src.migration.status), src.migration.status);
    await new Promise((r) => setTimeout(r, 2));
  }
  src.migration.continue('pre-switchover');
  await completes(src, dst);
  assert.ok((src.migration.queryMigrate().ram?.['multifd-bytes'] ?? 0) > 4 * MiB);
});

// Two ends that disagree about multifd: the destination fails and never starts a guest, and
// the source, its connection broken, runs its guest again.
const MISMATCHES: Array<{ name: string; source: number; destination: number | undefined; waitMs?: number; error: RegExp }> = [
  {
    name: 'a destination without the capability refuses the source\'s channels',
    source: 2, destination: undefined,
    error: /A second connection arrived on unix:\/memory\/multifd: the source uses multifd, but the multifd capability is off here/,
  },
  {
    name: 'a source with more channels than the destination expects is refused at its first extra one',
    source: 3, destination: 2,
    error: /multifd: received channel id 2, but multifd-channels is 2 here/,
  },
  {
    name: 'a source with fewer channels than the destination expects fails once the wait for them is over',
    source: 1, destination: 2, waitMs: 300,
    error: /multifd: 1 of 2 channels connected within 0.3 s of the main one \(is multifd-channels the same on both sides\?\)/,
  },
];

for (const { name, source, destination, waitMs, error } of MISMATCHES) {
  test(`multifd: ${name}; the source guest runs on`, async (t) => {
    const { src, dst } = pair(4 * MiB, network(), waitMs);
    src.vm.fillPages(0, 512);
    multifd(src, source);
    if (destination !== undefined) multifd(dst, destination);
    src.migration.setParameters({ 'max-bandwidth': 0 });
    await failsBoth(t, src, dst, error);
  });
}

/** A multifd migration of 16 MiB of data capped at 32 MiB/s, once `bytes` went on its channels. */
async function midway(t: TestContext, bytes: number, dirtying: boolean): Promise<{ src: Side; dst: Side; net: ReturnType<typeof network> }> {
  const net = network();
  const { src, dst } = pair(16 * MiB, net);
  src.vm.fillPages(0, 4096);
  if (dirtying) {
    src.vm.startWorkload(64, 1);
    t.after(() => src.vm.stopWorkload());
  }
  multifd(src, 2);
  multifd(dst, 2);
  src.migration.setParameters({ 'max-bandwidth': 32 * MiB });
  await dst.migration.migrateIncoming(URI);
  src.migration.migrate(URI);
  while ((src.migration.queryMigrate().ram?.['multifd-bytes'] ?? 0) < bytes) await new Promise((r) => setTimeout(r, 5));
  return { src, dst, net };
}

test('multifd: a channel that breaks mid-stream fails both sides; the source guest runs on', async (t) => {
  const { src, dst, net } = await midway(t, 2 * MiB, true);
  net.made[2]!.destroy(new Error('cable pulled'));
  await settle(src, dst);
  src.vm.stopWorkload();
  assert.equal(src.migration.status, 'failed');
  assert.equal(dst.migration.incomingStatus, 'failed');
  assert.equal(dst.vm.runState, 'inmigrate');
  runningAgain(t, src);
});

test('multifd: cancel while pages go over the channels closes all of them; the source guest runs on', async (t) => {
  const { src, dst, net } = await midway(t, 1 * MiB, false);
  src.migration.cancel();
  await settle(src, dst);
  assert.equal(src.migration.status, 'cancelled');
  assert.equal(dst.migration.incomingStatus, 'failed');
  runningAgain(t, src);
  for (const c of net.made) await assert.rejects(c.write(new Uint8Array(1)), `${c.description} was closed`);
});

test('multifd-compression: cancel while packets are being compressed closes the streams with the channels; nothing is left unhandled; the source guest runs on', async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => {
    unhandled.push(reason);
  };
  process.on('unhandledRejection', onUnhandled);
  t.after(() => process.off('unhandledRejection', onUnhandled));
  const net = network();
  const { src, dst } = pair(16 * MiB, net);
  // Pages that do not compress: the cap then holds the sender back with packets in the streams.
  src.vm.ram.set(randomBytes(12 * MiB));
  for (const side of [src, dst]) {
    multifd(side, 2);
    side.migration.setParameters({ 'multifd-compression': 'zlib', 'multifd-zlib-level': 9 });
  }
  src.migration.setParameters({ 'max-bandwidth': 16 * MiB });
  await dst.migration.migrateIncoming(URI);
  src.migration.migrate(URI);
  while ((src.migration.queryMigrate().ram?.['multifd-bytes'] ?? 0) < 1 * MiB) await new Promise((r) => setTimeout(r, 5));
  src.migration.cancel();
  await settle(src, dst);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(src.migration.status, 'cancelled');
  assert.equal(dst.migration.incomingStatus, 'failed');
  assert.equal(dst.vm.runState, 'inmigrate');
  runningAgain(t, src);
  assert.deepEqual(unhandled, []);
});

test('multifd: refused where it cannot work, in QEMU\'s words where QEMU has them', async () => {
  const src = makeSide({ memorySize: 1 * MiB }, { connect: () => Promise.reject(new Error('no')) });
  multifd(src, 2);
  for (const uri of ['exec:cat > /dev/null', 'fd:3']) {
    assert.throws(() => src.migration.migrate(uri), /^MigrationError: multifd is not supported by current protocol$/);
  }
  assert.throws(() => src.migration.setCapabilities([{ capability: 'xbzrle', state: true }]), /Multifd is not compatible with xbzrle/);
  assert.equal(src.migration.status, 'none', 'nothing started');

  const dst = makeSide({ memorySize: 1 * MiB, incoming: true }, { listen: () => Promise.reject(new Error('no')) });
  multifd(dst, 2);
  await assert.rejects(dst.migration.migrateIncoming('exec:cat /dev/null'), /^MigrationError: multifd is not supported by current protocol$/);
});

test('multifd: packets hold at most 128 pages of one block, go to a channel that is not pushing back, and SYNC on every channel', async () => {
  const pairs = [0, 1].map(() => createMemoryChannelPair());
  const sender = new MultifdSender(pairs.map(([near]) => near), new Uint8Array(16));
  const ram = new Uint8Array(1 * MiB);
  for (let page = 0; page < 200; page++) sender.queue('pc.ram', ram, page * 4096, undefined);
  sender.queue('other', ram, 0, undefined);
  sender.sync();
  await sender.flush();
  assert.equal(sender.pages, 201);
  // 128 + 72 pages of pc.ram, 1 of other, then one SYNC per channel.
  assert.equal(sender.packets, 5);
  assert.equal(sender.bytesWritten, 2 * 64 + 5 * 1344 + 201 * 4096);
});
