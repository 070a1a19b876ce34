import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestPhysical } from './guest-physical.js';

test('reads and writes go to the block that holds the guest address, little-endian', () => {
  const low = new Uint8Array(0x2000);
  const high = new Uint8Array(0x1000);
  const memory = new GuestPhysical([{ guestAddress: 0x1_0000_0000, bytes: high }, { guestAddress: 0, bytes: low }]);
  assert.equal(memory.size, 0x3000);
  memory.setUint32(0x1ffc, 0x11223344);
  assert.deepEqual([...low.subarray(0x1ffc)], [0x44, 0x33, 0x22, 0x11]);
  memory.setUint32(0x1_0000_0ffc, 7);
  assert.equal(new DataView(high.buffer).getUint32(0xffc, true), 7);
  assert.equal(memory.getUint32(0x1ffc), 0x11223344, 'back in the first block after the second');
  memory.setBigUint64(0x1_0000_0008, 2n ** 40n);
  assert.equal(memory.getBigUint64(0x1_0000_0008), 2n ** 40n);
});

test('an address outside every block, or an access across a block\'s end, is a RangeError naming it', () => {
  const memory = new GuestPhysical([{ guestAddress: 0, bytes: new Uint8Array(0x1000) }, { guestAddress: 0x1000, bytes: new Uint8Array(0x1000) }]);
  assert.throws(() => memory.getUint32(0x2000), /0x2000 \(\+4\) is not in guest RAM/);
  assert.throws(() => memory.getUint32(0xffe), /0xffe/, 'blocks that touch are still two views');
  assert.equal(memory.contains(0, 0x1000), true);
  assert.equal(memory.contains(0x800, 0x1000), false);
  assert.throws(() => new GuestPhysical([]), /at least one RAM block/);
});
