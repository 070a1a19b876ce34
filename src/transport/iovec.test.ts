import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IOVEC_BYTES, consumeIovec, setIovec } from './iovec.js';

/** Entry `entry` as [address, length], read back the way the kernel reads it (two little-endian 64-bit words). */
function entryOf(entries: DataView, entry: number): [number, number] {
  return [Number(entries.getBigUint64(entry * IOVEC_BYTES, true)), Number(entries.getBigUint64(entry * IOVEC_BYTES + 8, true))];
}

test('iovec: an entry holds addresses above 4 GiB and lengths as the kernel reads them', () => {
  const entries = new DataView(new ArrayBuffer(2 * IOVEC_BYTES));
  setIovec(entries, 1, 0x7f12_3456_7000, 4096);
  assert.deepEqual(entryOf(entries, 1), [0x7f12_3456_7000, 4096]);
  assert.deepEqual(entryOf(entries, 0), [0, 0]);
});

test('iovec: consuming bytes skips whole entries and moves a part-done one on in place', () => {
  const entries = new DataView(new ArrayBuffer(3 * IOVEC_BYTES));
  setIovec(entries, 0, 0x1_0000_0000, 8);
  setIovec(entries, 1, 0x2_0000_0000, 4096);
  setIovec(entries, 2, 0x3_0000_0000, 8);
  assert.equal(consumeIovec(entries, 0, 3, 0), 0);
  assert.equal(consumeIovec(entries, 0, 3, 5), 0);
  assert.deepEqual(entryOf(entries, 0), [0x1_0000_0005, 3]);
  assert.equal(consumeIovec(entries, 0, 3, 3 + 100), 1);
  assert.deepEqual(entryOf(entries, 1), [0x2_0000_0064, 3996]);
  assert.equal(consumeIovec(entries, 1, 3, 3996 + 8), 3);
  // Past the end: nothing more to move on.
  assert.equal(consumeIovec(entries, 3, 3, 10), 3);
});
