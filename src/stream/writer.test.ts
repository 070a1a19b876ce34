import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError, TransportError } from '../errors.js';
import { createCollectingChannel, createMemoryChannelPair } from './memory-channel.js';
import { StreamWriter } from './writer.js';
import { toHex } from './testing.js';
import type { Channel } from '../transport/channel.js';

test('writer: integers are big-endian and bytesWritten counts everything accepted', async () => {
  const ch = createCollectingChannel();
  const w = new StreamWriter(ch, { bufferSize: 64 });
  w.u8(0xab);
  w.be16(0x1234);
  w.be32(0xdeadbeef);
  w.be64(0x0102030405060708n);
  w.be64(2 ** 40 + 5);
  w.bytes(new Uint8Array([9, 8, 7]));
  assert.equal(w.bytesWritten, 1 + 2 + 4 + 8 + 8 + 3);
  assert.equal(ch.length, 0, 'nothing handed over before the buffer fills or flush()');
  await w.flush();
  assert.equal(toHex(ch.bytes()), 'ab' + '1234' + 'deadbeef' + '0102030405060708' + '0000010000000005' + '090807');
});

test('writer: be64 of a negative bigint writes two\'s complement; of an unsafe number throws a FerryError', async () => {
  const ch = createCollectingChannel();
  const w = new StreamWriter(ch, { bufferSize: 64 });
  w.be64(-1n);
  assert.throws(() => w.be64(2 ** 60), StreamFormatError);
  assert.throws(() => w.be64(-3), StreamFormatError);
  await w.flush();
  assert.equal(toHex(ch.bytes()), 'ffffffffffffffff');
});

test('writer: full buffers go out whole and are never touched again', async () => {
  const ch = createCollectingChannel();
  const w = new StreamWriter(ch, { bufferSize: 64 });
  const data = new Uint8Array(200).map((_, i) => i);
  w.bytes(data);
  // 200 bytes through a 64-byte buffer: three full buffers handed over, 8 bytes pending.
  assert.equal(ch.chunks.length, 3);
  assert.ok(ch.chunks.every((c) => c.byteLength === 64));
  const snapshot = ch.chunks.map((c) => toHex(c));
  data.fill(0xff); // the writer copied: the caller may reuse its array
  w.bytes(new Uint8Array(100).fill(0xee));
  assert.deepEqual(ch.chunks.slice(0, 3).map((c) => toHex(c)), snapshot, 'handed-over chunks must not change');
  await w.close();
  assert.equal(ch.length, 300);
  assert.ok(ch.ended);
  const all = ch.bytes();
  for (let i = 0; i < 200; i++) assert.equal(all[i], i);
  assert.ok(all.subarray(200).every((b) => b === 0xee));
});

test('writer: integers straddling a buffer boundary start a fresh buffer', async () => {
  const ch = createCollectingChannel();
  const w = new StreamWriter(ch, { bufferSize: 64 });
  w.bytes(new Uint8Array(62));
  w.be32(0x01020304);
  await w.flush();
  const all = ch.bytes();
  assert.equal(all.length, 66);
  assert.equal(toHex(all.subarray(62)), '01020304');
});

test('writer: honours channel backpressure — needsFlush until the reader drains', async () => {
  const [a, b] = createMemoryChannelPair({ highWaterMark: 100 });
  const w = new StreamWriter(a, { bufferSize: 64 });
  w.bytes(new Uint8Array(64 * 3));
  assert.equal(w.needsFlush, true);
  let flushed = false;
  const flushing = w.flush().then(() => {
    flushed = true;
  });
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(flushed, false, 'flush waits while the peer has not read');
  let got = 0;
  while (got < 192) got += (await b.read())!.byteLength;
  await flushing;
  assert.equal(flushed, true);
  assert.equal(w.needsFlush, false);
});

test('writer: the first error is kept, later writes are dropped, flush and close reject with it', async () => {
  const ch = createCollectingChannel({ failAfterBytes: 64 });
  const w = new StreamWriter(ch, { bufferSize: 64 });
  w.bytes(new Uint8Array(64)); // accepted
  w.bytes(new Uint8Array(64)); // rejected by the channel
  w.bytes(new Uint8Array(64));
  await assert.rejects(w.flush(), TransportError);
  assert.ok(w.error instanceof TransportError);
  const first = w.error;
  w.u8(1);
  await assert.rejects(w.close(), (e) => e === first);
  assert.equal(ch.length, 64);
});

test('writer: setError stops the stream like a channel failure', async () => {
  const ch = createCollectingChannel();
  const w = new StreamWriter(ch, { bufferSize: 64 });
  const err = new TransportError('cancelled');
  w.setError(err);
  w.setError(new TransportError('second'));
  w.bytes(new Uint8Array(100));
  await assert.rejects(w.flush(), (e) => e === err);
  assert.equal(ch.length, 0);
});

test('writer: a channel whose write throws synchronously becomes the stream error', async () => {
  const ch: Channel = {
    description: 'throwing',
    read: () => Promise.resolve(null),
    write: () => {
      throw new Error('boom');
    },
    end: () => Promise.resolve(),
    destroy: () => undefined,
  };
  const w = new StreamWriter(ch, { bufferSize: 64 });
  w.bytes(new Uint8Array(10));
  await assert.rejects(w.flush(), (e: unknown) => e instanceof TransportError && /boom/.test(e.message));
});

test('writer: refuses a buffer too small to hold a header', () => {
  assert.throws(() => new StreamWriter(createCollectingChannel(), { bufferSize: 8 }), TransportError);
});

test('writer: settled() waits for the channel without cutting the buffer being filled short', async () => {
  const [a, b] = createMemoryChannelPair({ highWaterMark: 100 });
  const sizes: number[] = [];
  const write = a.write.bind(a);
  a.write = (data, done) => {
    sizes.push(data.byteLength);
    return write(data, done);
  };
  const w = new StreamWriter(a, { bufferSize: 64 });
  w.bytes(new Uint8Array(64 * 3 + 10)); // three full buffers out, 10 bytes kept
  assert.equal(w.backlogged, true);
  let settled = false;
  const settling = w.settled().then(() => {
    settled = true;
  });
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(settled, false, 'settled() waits while the peer has not read');
  let got = 0;
  while (got < 192) got += (await b.read())!.byteLength;
  await settling;
  assert.equal(w.backlogged, false);
  assert.deepEqual(sizes, [64, 64, 64], 'the 10 bytes stay in the writer');
  w.bytes(new Uint8Array(54));
  await w.flush();
  assert.deepEqual(sizes, [64, 64, 64, 64], 'and go out in a full buffer');
});

test('writer: byReference copies where the channel has no vectored writes, or the run is small, or no address is known', async () => {
  const ch = createCollectingChannel();
  const w = new StreamWriter(ch, { bufferSize: 64 * 1024 });
  assert.equal(w.writesByReference, false);
  const ram = new Uint8Array(3 * 4096).map((_, i) => i & 0xff);
  w.byReference(ram, 4096, 4096, 0x1000);
  w.byReference(ram, 0, 16, undefined);
  assert.throws(() => w.byReference(ram, 8192, 8192, 0x1000), StreamFormatError);
  await w.flush();
  assert.deepEqual(ch.bytes(), new Uint8Array([...ram.subarray(4096, 8192), ...ram.subarray(0, 16)]));
});

test('writer: on a vectored channel, references ride between the buffered bytes in order, at most maxRefs a batch', async () => {
  const batches: Array<{ length: number; at: number[]; address: number[]; bytes: number[] }> = [];
  const plain: number[] = [];
  const ch: Channel = {
    description: 'vectored-fake', read: async () => null, end: async () => {}, destroy: () => {},
    write: async (d) => { plain.push(d.byteLength); },
    vectored: {
      maxRefs: 3,
      write: async (b) => {
        batches.push({ length: b.length, at: [...b.at.subarray(0, b.count)], address: [...b.address.subarray(0, b.count)], bytes: [...b.bytes.subarray(0, b.count)] });
      },
    },
  };
  const w = new StreamWriter(ch, { bufferSize: 64 * 1024 });
  assert.equal(w.writesByReference, true);
  const ram = new Uint8Array(8 * 4096);
  for (let i = 0; i < 4; i++) {
    w.be64(i);
    w.byReference(ram, i * 4096, 4096, 0x10000);
  }
  w.byReference(ram, 0, 100, 0x10000); // small: copied
  assert.equal(w.bytesWritten, 4 * (8 + 4096) + 100);
  await w.flush();
  assert.deepEqual(batches, [
    // The fourth header was buffered before its page found the batch full: it ends this one…
    { length: 32, at: [8, 16, 24], address: [0x10000, 0x11000, 0x12000], bytes: [4096, 4096, 4096] },
    // …and its page starts the next, before the copied bytes.
    { length: 100, at: [0], address: [0x13000], bytes: [4096] },
  ]);
  assert.deepEqual(plain, []);
});
