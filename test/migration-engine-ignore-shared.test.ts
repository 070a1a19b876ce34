// The `x-ignore-shared` capability (QEMU 7.2): RAM that both ends map from one file
// (memory-backend-file, share=on) is not sent — the destination already has it — and the
// stream says so: the configuration lists the capability, for the destination to match,
// and MEM_SIZE gives each block's guest-physical address, for it to check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { digest, makePair, makeSide, memoryNetwork, migrateToEnd } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;
const IGNORE_SHARED = [{ capability: 'x-ignore-shared', state: true }];

/** A source and a destination whose pc.ram is the same memory; vga.vram (1 MiB) is each its own. */
function sharedPair(options: { srcCap: boolean; dstCap: boolean; dstAddress?: number; dstShared?: boolean }) {
  const shared = new Uint8Array(16 * MiB);
  const extraBlocks = [{ idstr: 'vga.vram', size: MiB }];
  const { src, dst } = makePair(16 * MiB, {
    source: { sharedRam: { bytes: shared }, extraBlocks },
    destination: { extraBlocks, ...(options.dstShared === false ? {} : { sharedRam: { bytes: shared, guestAddress: options.dstAddress ?? 0 } }) },
  });
  if (options.srcCap) src.migration.setCapabilities(IGNORE_SHARED);
  if (options.dstCap) dst.migration.setCapabilities(IGNORE_SHARED);
  src.migration.setParameters({ 'max-bandwidth': 0 });
  return { src, dst, shared };
}

test('x-ignore-shared: the shared block is not sent, the other is; the destination runs on the same memory', async (t) => {
  const { src, dst } = sharedPair({ srcCap: true, dstCap: true });
  src.vm.fillPages(0, 4096, 7); // all of the shared pc.ram
  src.vm.memory[1]!.bytes.fill(0x5a, 0, 64 * 4096); // 64 pages of vga.vram
  src.vm.startWorkload(32);
  t.after(() => src.vm.stopWorkload());
  await migrateToEnd(src, dst);
  const info = src.migration.queryMigrate();
  assert.equal(info.status, 'completed', info['error-desc']);
  assert.equal(dst.migration.incomingStatus, 'completed', dst.migration.queryMigrate()['error-desc']);
  assert.equal(dst.vm.runState, 'running');
  assert.equal(digest(dst.vm.memory[1]!.bytes), digest(src.vm.memory[1]!.bytes), 'vga.vram came over');
  assert.equal(dst.vm.memory[0]!.bytes, src.vm.memory[0]!.bytes, 'pc.ram is the one memory');
  assert.deepEqual(src.vm.dirtyLog.startedFor, [false, true], 'the shared block is not logged (QEMU logs no ignored block)');
  // QEMU's ram_bytes_total leaves ignored blocks out; nothing of pc.ram went.
  assert.equal(info.ram?.total, MiB);
  assert.ok((info.ram?.normal ?? 0) >= 64 && (info.ram?.normal ?? 0) <= 256, `pages sent: ${info.ram?.normal}`);
  assert.ok((info.ram?.transferred ?? 0) < 2 * MiB, `transferred ${info.ram?.transferred}`);
});

test('x-ignore-shared: on at one end only is refused at the configuration, in QEMU\'s words, and the destination never starts', async () => {
  for (const [srcCap, dstCap, words] of [
    [true, false, 'Capability x-ignore-shared is off, but received capability is on'],
    [false, true, 'Capability x-ignore-shared is on, but received capability is off'],
  ] as const) {
    const { src, dst } = sharedPair({ srcCap, dstCap });
    src.vm.fillPages(0, 16);
    await migrateToEnd(src, dst);
    assert.equal(dst.migration.incomingStatus, 'failed');
    assert.match(dst.migration.queryMigrate()['error-desc'] ?? '', new RegExp(`^${words} \\(stream offset \\d+, section "configuration"\\)`));
    assert.ok(!dst.vm.runStates.includes('running'));
    assert.equal(src.vm.runState, 'running', 'the source guest runs on');
  }
});

test('x-ignore-shared: the shared block at another guest address is refused (QEMU\'s "Mismatched GPAs")', async () => {
  const { src, dst } = sharedPair({ srcCap: true, dstCap: true, dstAddress: 1 << 30 });
  await migrateToEnd(src, dst);
  assert.equal(dst.migration.incomingStatus, 'failed');
  assert.match(dst.migration.queryMigrate()['error-desc'] ?? '', /^Mismatched GPAs for block pc\.ram 0!= 1073741824 \(stream offset \d+, section "ram"\)/);
  assert.ok(!dst.vm.runStates.includes('running'));
});

test('x-ignore-shared: pages of a block the destination shares but the source sends are refused (QEMU\'s "should not be migrated")', async () => {
  // The source's pc.ram is its own memory: it sends every page of it.
  const shared = new Uint8Array(16 * MiB);
  const { src, dst } = makePair(16 * MiB, { destination: { sharedRam: { bytes: shared } } });
  src.migration.setCapabilities(IGNORE_SHARED);
  dst.migration.setCapabilities(IGNORE_SHARED);
  src.vm.fillPages(0, 16);
  await migrateToEnd(src, dst);
  assert.equal(dst.migration.incomingStatus, 'failed');
  assert.match(dst.migration.queryMigrate()['error-desc'] ?? '', /^block pc\.ram should not be migrated ! \(stream offset \d+, section "ram"\)/);
  assert.ok(shared.every((byte) => byte === 0), 'nothing was written into the shared memory');
});

test('x-ignore-shared: without a shared block it changes only the stream\'s header; every page goes as ever', async () => {
  const { src, dst } = makePair(8 * MiB);
  src.migration.setCapabilities(IGNORE_SHARED);
  dst.migration.setCapabilities(IGNORE_SHARED);
  src.migration.setParameters({ 'max-bandwidth': 0 });
  src.vm.fillPages(0, 512, 3);
  await migrateToEnd(src, dst);
  assert.equal(dst.migration.incomingStatus, 'completed', dst.migration.queryMigrate()['error-desc']);
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
  assert.equal(src.migration.queryMigrate().ram?.total, 8 * MiB);
  assert.equal(src.vm.dirtyLog.startedFor, undefined, 'every block logged');
});

test('x-ignore-shared with multifd: the shared block goes on no channel, the other block\'s pages do', async (t) => {
  const shared = new Uint8Array(16 * MiB);
  const extraBlocks = [{ idstr: 'vga.vram', size: MiB }];
  const net = memoryNetwork();
  const src = makeSide({ memorySize: 16 * MiB, sharedRam: { bytes: shared }, extraBlocks }, { connect: net.connect });
  const dst = makeSide({ memorySize: 16 * MiB, incoming: true, sharedRam: { bytes: shared }, extraBlocks }, { listen: net.listen });
  src.migration.setParameters({ 'max-bandwidth': 0 });
  for (const side of [src, dst]) {
    side.migration.setCapabilities(IGNORE_SHARED);
    side.migration.setParameters({ 'multifd-channels': 2 });
    side.migration.setCapabilities([{ capability: 'multifd', state: true }]);
  }
  src.vm.fillPages(0, 4096, 5);
  src.vm.memory[1]!.bytes.fill(0x3c, 0, 128 * 4096);
  src.vm.startWorkload(32);
  t.after(() => src.vm.stopWorkload());
  await dst.migration.migrateIncoming('unix:/memory/listen');
  src.migration.migrate('unix:/memory/listen');
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  const info = src.migration.queryMigrate();
  assert.equal(info.status, 'completed', info['error-desc']);
  assert.equal(dst.migration.incomingStatus, 'completed', dst.migration.queryMigrate()['error-desc']);
  assert.equal(digest(dst.vm.memory[1]!.bytes), digest(src.vm.memory[1]!.bytes));
  assert.equal(net.made.length, 3, 'the main connection and two channels');
  assert.ok((info.ram?.['multifd-bytes'] ?? 0) > 128 * 4096 && (info.ram?.['multifd-bytes'] ?? 0) < 2 * MiB, `multifd bytes: ${info.ram?.['multifd-bytes']}`);
});
