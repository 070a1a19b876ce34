import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HostMemory } from './host-memory.js';
import { markBacked, residencyAt, swapConfigured } from './page-residency.js';
import { MADV_NOHUGEPAGE, madviseRange } from './libc.js';

const MiB = 1024 * 1024;

test('a pagemap entry present or swapped is a backed page; one with neither reads as zero', () => {
  // Little-endian u64 entries as two u32 words: the flags are bits 30 (swapped) and 31 (present) of the high word.
  const PRESENT = 0x8000_0000;
  const SWAPPED = 0x4000_0000;
  const entries = Uint32Array.of(
    0x12345, PRESENT, // present (a PFN, hidden without CAP_SYS_ADMIN, is in the low bits)
    0, SWAPPED, // swapped out: mincore says "not resident", but the page holds data
    0xffffffff, 0x3fffffff, // neither, whatever the other bits say
    0, PRESENT | SWAPPED,
  );
  const vec = new Uint8Array(6).fill(7);
  markBacked(entries, 4, vec, 1);
  assert.deepEqual([...vec], [7, 1, 1, 0, 1, 7]);
});

const NO_SWAP = 'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n';
const SWAP_ON = NO_SWAP + '/swapfile                               file\t\t262140\t\t0\t\t-2\n';

for (const [how, swaps] of [['mincore (no swap)', NO_SWAP], ['pagemap (swap on)', SWAP_ON]] as const) {
  test(`residency from ${how}: untouched pages 0, written ones 1, given back ones 0 again`, () => {
    const host = HostMemory.allocate(8 * MiB);
    try {
      // 4 KiB pages, so one write backs one page (a huge page would back 512).
      madviseRange(host.address, 8 * MiB, MADV_NOHUGEPAGE);
      assert.equal(residencyAt(host.address, 8 * MiB, swaps).reduce((n, b) => n + b, 0), 0);
      host.bytes[5 * 4096] = 1;
      host.bytes[2000 * 4096 + 9] = 1;
      const vec = residencyAt(host.address, 8 * MiB, swaps);
      assert.deepEqual([...vec.keys()].filter((i) => vec[i] === 1), [5, 2000]);
      // A range that starts inside the mapping reads from there.
      assert.deepEqual([...residencyAt(host.address + BigInt(4 * 4096), 3 * 4096, swaps)], [0, 1, 0]);
      host.release();
      assert.equal(residencyAt(host.address, 8 * MiB, swaps).reduce((n, b) => n + b, 0), 0);
    } finally {
      host.unmap();
    }
  });
}

test('swap is configured when /proc/swaps lists anything below its header', () => {
  assert.equal(swapConfigured(NO_SWAP), false);
  assert.equal(swapConfigured(SWAP_ON), true);
  assert.equal(swapConfigured(null), true, 'unreadable is taken as swap on');
});
