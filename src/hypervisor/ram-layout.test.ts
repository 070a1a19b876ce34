import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HIGH_RAM_BASE, RAM_BLOCK_MAX_BYTES, planRamBlocks } from './ram-layout.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

test('RAM up to the first block\'s limit is the one "pc.ram" block it always was', () => {
  assert.deepEqual(planRamBlocks(256 * MiB), [{ idstr: 'pc.ram', guestAddress: 0, offset: 0, size: 256 * MiB }]);
  assert.deepEqual(planRamBlocks(4 * GiB), [{ idstr: 'pc.ram', guestAddress: 0, offset: 0, size: 4 * GiB }]);
  assert.deepEqual(planRamBlocks(0xe0000000, 0xe0000000), [{ idstr: 'pc.ram', guestAddress: 0, offset: 0, size: 0xe0000000 }]);
});

test('the sim\'s 10 GiB: blocks of 4 GiB, guest addresses equal to their offsets', () => {
  assert.deepEqual(planRamBlocks(10 * GiB), [
    { idstr: 'pc.ram', guestAddress: 0, offset: 0, size: 4 * GiB },
    { idstr: 'pc.ram.1', guestAddress: 4 * GiB, offset: 4 * GiB, size: 4 * GiB },
    { idstr: 'pc.ram.2', guestAddress: 8 * GiB, offset: 8 * GiB, size: 2 * GiB },
  ]);
});

test('a PC\'s 8 GiB with the hole at 3.5 GiB: the rest from 4 GiB, back to back in the host mapping', () => {
  const low = 0xe0000000;
  const blocks = planRamBlocks(8 * GiB, low);
  assert.deepEqual(blocks, [
    { idstr: 'pc.ram', guestAddress: 0, offset: 0, size: low },
    { idstr: 'pc.ram.1', guestAddress: HIGH_RAM_BASE, offset: low, size: RAM_BLOCK_MAX_BYTES },
    { idstr: 'pc.ram.2', guestAddress: HIGH_RAM_BASE + 4 * GiB, offset: low + 4 * GiB, size: 8 * GiB - low - 4 * GiB },
  ]);
  assert.equal(blocks.reduce((n, b) => n + b.size, 0), 8 * GiB);
  for (const b of blocks) assert.ok(b.size <= RAM_BLOCK_MAX_BYTES);
});

test('a size or a limit that cannot be laid out is refused', () => {
  assert.throws(() => planRamBlocks(0), /Cannot lay out 0 bytes/);
  assert.throws(() => planRamBlocks(1.5), /Cannot lay out/);
  assert.throws(() => planRamBlocks(GiB, 5 * GiB), /at most at 4 GiB/);
});
