import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { GuestMemoryBlock } from '../hypervisor/types.js';
import { pmemsave } from './pmemsave.js';

function block(idstr: string, guestAddress: number, size: number, fill: number): GuestMemoryBlock {
  return { idstr, guestAddress, size, bytes: new Uint8Array(size).fill(fill) } as unknown as GuestMemoryBlock;
}

test('pmemsave: guest-physical memory as the guest sees it, across blocks, with zeros where no block is', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-pmemsave-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // Listed out of address order: pmemsave goes by guest address.
  const memory = [block('high', 0x3000, 0x1000, 0xbb), block('low', 0, 0x2000, 0xaa)];
  const file = join(dir, 'mem.bin');
  await pmemsave(memory, 0x1800, 0x2000, file);
  const bytes = readFileSync(file);
  assert.equal(bytes.byteLength, 0x2000);
  assert.ok(bytes.subarray(0, 0x800).every((b) => b === 0xaa), 'the end of "low"');
  assert.ok(bytes.subarray(0x800, 0x1800).every((b) => b === 0), 'the hole between the blocks reads as zeros');
  assert.ok(bytes.subarray(0x1800).every((b) => b === 0xbb), 'the start of "high"');
  // Past the last block: zeros, as QEMU's unassigned memory.
  await pmemsave(memory, 0x3800, 0x1000, file);
  assert.deepEqual([...readFileSync(file).subarray(0x7fe, 0x802)], [0xbb, 0xbb, 0, 0]);
  await pmemsave(memory, 0, 0, file);
  assert.equal(readFileSync(file).byteLength, 0);
});

test('pmemsave: a bad address, size or file is refused, saying which', async () => {
  const memory = [block('ram', 0, 0x1000, 1)];
  await assert.rejects(pmemsave(memory, -1, 16, '/tmp/x'), /Invalid parameter 'val'/);
  await assert.rejects(pmemsave(memory, 0, 1.5, '/tmp/x'), /Invalid parameter 'size'/);
  await assert.rejects(pmemsave(memory, 0, 16, '/nonexistent-dir/x.bin'), /Could not open '\/nonexistent-dir\/x.bin'/);
});
