import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCollectingChannel, type CollectingChannel } from '../stream/memory-channel.js';
import { MULTIFD_INIT_BYTES, MULTIFD_PACKET_BYTES } from '../stream/multifd.js';
import { MultifdSender } from './multifd-send.js';
import type { MultifdCompression } from '../stream/multifd-compression.js';

const UUID = new Uint8Array(16);
const PAGES = 300;

/** Two collecting channels whose unsent() is whatever the test says the destination has not taken. */
function channels(): { chans: CollectingChannel[]; notTaken: number[] } {
  const notTaken = [0, 0];
  const chans = [0, 1].map((i) => Object.assign(createCollectingChannel({ description: `memory:${i}` }), { unsent: () => notTaken[i]! }));
  return { chans, notTaken };
}

/** 300 pages (mostly zeros: they compress well), queued and synced, everything flushed. */
async function sent(compression: MultifdCompression): Promise<{ sender: MultifdSender; chans: CollectingChannel[]; notTaken: number[] }> {
  const { chans, notTaken } = channels();
  const sender = new MultifdSender(chans, UUID, compression === 'none' ? undefined : { compression, level: 1 });
  const ram = new Uint8Array(PAGES * 4096);
  for (let p = 0; p < PAGES; p++) new DataView(ram.buffer).setUint32(p * 4096, p + 1);
  for (let p = 0; p < PAGES; p++) sender.queue('pc.ram', ram, p * 4096, undefined);
  sender.sync();
  await sender.flush();
  return { sender, chans, notTaken };
}

// QEMU 7.2's multifd_send_pages counts a packet as its header plus its pages' own size.
const COUNTED = 2 * MULTIFD_INIT_BYTES + 3 * MULTIFD_PACKET_BYTES + PAGES * 4096 + 2 * MULTIFD_PACKET_BYTES;

test('multifd sender, uncompressed: bytes counted are the bytes written, and what is not taken is what the channels hold', async () => {
  const { sender, chans, notTaken } = await sent('none');
  assert.equal(sender.bytesWritten, chans[0]!.length + chans[1]!.length);
  assert.equal(sender.bytesCounted, COUNTED, '3 packets (128 + 128 + 44 pages) and a SYNC on each channel');
  assert.equal(sender.bytesWritten, COUNTED);
  assert.equal(sender.unsentCounted(), 0);
  notTaken[0] = 5000;
  notTaken[1] = 7;
  assert.equal(sender.unsentCounted(), 5007);
  sender.destroy();
});

test('multifd sender, zlib: pages count at their own size, as QEMU counts them; what the destination has not taken counts the pages it stands for', async () => {
  const { sender, chans, notTaken } = await sent('zlib');
  assert.equal(sender.bytesWritten, chans[0]!.length + chans[1]!.length);
  assert.equal(sender.bytesCounted, COUNTED, 'pages at 4096 bytes each, whatever they went as');
  assert.ok(sender.bytesWritten < COUNTED / 10, `${sender.bytesWritten} bytes written for ${COUNTED} counted`);
  assert.equal(sender.compressedFrom, PAGES * 4096);
  // What the destination has taken only grows. Nothing taken: all of it is left, pages at
  // their own size.
  notTaken[0] = chans[0]!.length;
  notTaken[1] = chans[1]!.length;
  assert.equal(sender.unsentCounted(), COUNTED);
  // Channel 0 taken bit by bit: between everything and nothing, never growing.
  let last = COUNTED;
  for (let left = chans[0]!.length; left >= MULTIFD_PACKET_BYTES; left -= 97) {
    notTaken[0] = left;
    const unsent = sender.unsentCounted();
    assert.ok(unsent >= 0 && unsent <= last, `${unsent} counted not taken with ${left} bytes not taken`);
    last = unsent;
  }
  // Only each channel's SYNC packet not taken: exactly those.
  notTaken[0] = MULTIFD_PACKET_BYTES;
  notTaken[1] = MULTIFD_PACKET_BYTES;
  assert.equal(sender.unsentCounted(), 2 * MULTIFD_PACKET_BYTES);
  // Everything taken: nothing counted is left.
  notTaken[0] = 0;
  notTaken[1] = 0;
  assert.equal(sender.unsentCounted(), 0);
  sender.destroy();
});
