import { test } from 'node:test';
import assert from 'node:assert/strict';
import { channelFromBytes } from '../stream/memory-channel.js';
import { MULTIFD_FLAG_SYNC, encodeMultifdInit, multifdBlockName, writeMultifdPacketHeader } from '../stream/multifd.js';
import { prng, writtenBytes } from '../stream/testing.js';
import { FerryError } from '../errors.js';
import { MultifdReceiver } from './multifd-recv.js';
import { compressionFlag, packetCompressor } from '../stream/multifd-compression.js';
import { zstdAvailable } from '../sys/zstd.js';

const UUID = new Uint8Array(16);
const BLOCK = 64 * 4096;

interface Packet { flags?: number; block?: string; pages?: Array<[number, number]> }

/** A channel's bytes: its initial packet, then packets of [offset, fill byte] pages. */
async function channelBytes(id: number, packets: Packet[]): Promise<Uint8Array> {
  return writtenBytes((w) => {
    w.bytes(encodeMultifdInit(UUID, id));
    for (const p of packets) {
      const pages = p.pages ?? [];
      const offsets = new Float64Array(128);
      pages.forEach(([offset], i) => (offsets[i] = offset));
      writeMultifdPacketHeader(w, p.flags ?? 0, 0, multifdBlockName(p.block ?? 'pc.ram'), offsets, pages.length);
      for (const [, fill] of pages) w.bytes(new Uint8Array(4096).fill(fill));
    }
  });
}

function receiver(channels: number, errors: Error[]): { rx: MultifdReceiver; ram: Uint8Array } {
  const ram = new Uint8Array(BLOCK);
  const rx = new MultifdReceiver({
    channels,
    uuid: UUID,
    sink: { blocks: () => [{ idstr: 'pc.ram', size: BLOCK }], multifdPage: () => ram },
    onError: (err) => errors.push(err),
    connectWaitMs: 2000,
  });
  return { rx, ram };
}

test('multifd receiver: pages land, and each channel waits at its SYNC until the main stream lets it go', async () => {
  const errors: Error[] = [];
  const { rx, ram } = receiver(2, errors);
  // Page 0 goes on channel 0 before the SYNC, its newer copy on channel 1 after it: the
  // newer one must win whichever channel is read first.
  rx.add(channelFromBytes(await channelBytes(0, [{ pages: [[0, 1]] }, { flags: MULTIFD_FLAG_SYNC }]), { chunkSize: 1000 }));
  rx.add(channelFromBytes(await channelBytes(1, [{ flags: MULTIFD_FLAG_SYNC }, { pages: [[0, 2], [4096, 3]] }, { flags: MULTIFD_FLAG_SYNC }]), { chunkSize: 100_000 }));
  await rx.syncMain();
  assert.equal(ram[0], 1, 'the first pass\'s copy, and nothing after its SYNC yet');
  assert.equal(ram[4096], 0);
  // Channel 0 has no second SYNC: it ends there, and the main stream waiting for one is told so.
  await assert.rejects(rx.syncMain(), /multifd channel 0 \(memory:bytes\): ended before the SYNC the main stream waits for/);
  assert.equal(ram[0], 2);
  assert.equal(ram[4096], 3);
  assert.equal(rx.pages, 3);
  rx.close();
});

test('multifd receiver: a hostile channel fails the migration in QEMU\'s words, naming the channel and the byte offset', async () => {
  const cases: Array<[Packet[], RegExp]> = [
    [[{ block: 'pc.rom', pages: [[0, 1]] }], /multifd channel 0 \(memory:bytes\): multifd: unknown ram block pc.rom/],
    [[{ pages: [[BLOCK, 1]] }], /multifd: offset too long 262144 \(max 262144\)/],
    [[{ pages: [[100, 1]] }], /multifd: offset not page-aligned 100/],
  ];
  for (const [packets, message] of cases) {
    const errors: Error[] = [];
    const { rx } = receiver(1, errors);
    rx.add(channelFromBytes(await channelBytes(0, packets)));
    await assert.rejects(rx.syncMain(), message);
    assert.equal(errors.length, 1, 'the caller is told once, to break the main stream');
    assert.match(errors[0]!.message, message);
    rx.close();
  }
  // Cut inside a packet.
  const errors: Error[] = [];
  const { rx } = receiver(1, errors);
  const whole = await channelBytes(0, [{ pages: [[0, 1]] }]);
  rx.add(channelFromBytes(whole.subarray(0, 64 + 1000)));
  await assert.rejects(rx.syncMain(), /multifd channel 0 \(memory:bytes\): ended at offset 1064 inside a packet \(1344 bytes from offset 64\)/);
  rx.close();
});

test('multifd receiver: the same channel id twice, and channels that never come, are refused', async () => {
  const errors: Error[] = [];
  const { rx } = receiver(2, errors);
  rx.add(channelFromBytes(await channelBytes(0, [{ flags: MULTIFD_FLAG_SYNC }])));
  rx.add(channelFromBytes(await channelBytes(0, [{ flags: MULTIFD_FLAG_SYNC }])));
  await assert.rejects(rx.syncMain(), /multifd: received id '0' already setup'/);
  rx.close();

  const late: Error[] = [];
  const waiting = new MultifdReceiver({ channels: 2, uuid: UUID, sink: { blocks: () => [], multifdPage: () => new Uint8Array(0) }, onError: (err) => late.push(err), connectWaitMs: 50 });
  waiting.add(channelFromBytes(await channelBytes(1, [{ flags: MULTIFD_FLAG_SYNC }])));
  await assert.rejects(waiting.syncMain(), /multifd: 1 of 2 channels connected within 0.05 s of the main one/);
  assert.equal(late.length, 1);
  waiting.close();
});

test('multifd receiver: 400 mutations of a real channel\'s bytes end in a typed error naming the channel, or load pages inside the RAM', async () => {
  const random = prng(7);
  const packets: Packet[] = [];
  for (let p = 0; p < 6; p++) {
    const pages: Array<[number, number]> = [];
    for (let i = 0; i < 1 + Math.floor(random() * 8); i++) pages.push([Math.floor(random() * 64) * 4096, 1 + Math.floor(random() * 250)]);
    packets.push({ pages }, ...(p % 2 === 1 ? [{ flags: MULTIFD_FLAG_SYNC }] : []));
  }
  const good = await channelBytes(0, packets);
  const syncs = packets.filter((p) => p.flags === MULTIFD_FLAG_SYNC).length;
  let refused = 0;
  for (let round = 0; round < 400; round++) {
    const bytes = good.slice();
    const kind = round % 4;
    if (kind === 3) {
      // Cut anywhere.
      const cut = Math.floor(random() * bytes.byteLength);
      await feed(bytes.subarray(0, cut));
      continue;
    }
    // Bytes of a header (the init packet or a packet's fixed part and offsets), or anywhere.
    for (let n = 0; n < 1 + Math.floor(random() * 3); n++) {
      const at = kind === 0 ? Math.floor(random() * 64) : kind === 1 ? 64 + Math.floor(random() * 1344) : Math.floor(random() * bytes.byteLength);
      bytes[at] = Math.floor(random() * 256);
    }
    await feed(bytes);
  }
  assert.ok(refused > 150, `only ${refused} of 400 refused`);

  async function feed(bytes: Uint8Array): Promise<void> {
    const ram = new Uint8Array(BLOCK);
    const errors: Error[] = [];
    const rx = new MultifdReceiver({
      channels: 1, uuid: UUID, connectWaitMs: 2000,
      sink: { blocks: () => [{ idstr: 'pc.ram', size: BLOCK }], multifdPage: (_b, offset) => { assert.ok(offset >= 0 && offset + 4096 <= BLOCK && offset % 4096 === 0, `page at ${offset}`); return ram; } },
      onError: (err) => errors.push(err),
    });
    rx.add(channelFromBytes(bytes, { chunkSize: 1 + Math.floor(random() * 5000) }));
    try {
      for (let i = 0; i < syncs; i++) await rx.syncMain();
    } catch (err) {
      refused++;
      assert.ok(err instanceof FerryError, `not a typed error: ${String(err)}`);
      assert.match(err.message, /multifd/);
    } finally {
      rx.close();
    }
  }
});

for (const method of ['zlib', 'zstd'] as const) {
  test(`multifd receiver, ${method}: a channel's compressed packets land whole, and 200 mutations of its bytes end in a typed error naming the channel, or load pages inside the RAM`, { skip: method === 'zstd' && !zstdAvailable() ? 'libzstd.so.1 did not load on this host' : false }, async () => {
    const random = prng(11);
    const compressor = packetCompressor(method, 1);
    const expected = new Uint8Array(BLOCK);
    const pieces: Uint8Array[] = [];
    /** Where each packet's compressed data lies in the channel's bytes. */
    const dataRanges: Array<[number, number]> = [];
    let length = 0;
    const push = (bytes: Uint8Array): void => {
      pieces.push(bytes);
      length += bytes.byteLength;
    };
    let syncs = 0;
    const header = async (flags: number, offsets: Float64Array, count: number, size: number): Promise<Uint8Array> =>
      writtenBytes((w) => writeMultifdPacketHeader(w, flags, 0, multifdBlockName('pc.ram'), offsets, count, size));
    push(encodeMultifdInit(UUID, 0));
    for (let p = 0; p < 6; p++) {
      const count = 1 + Math.floor(random() * 8);
      const offsets = new Float64Array(128);
      const data = new Uint8Array(count * 4096);
      for (let i = 0; i < count; i++) {
        offsets[i] = Math.floor(random() * 64) * 4096;
        for (let j = 0; j < 4096; j++) data[i * 4096 + j] = (j * (p + 3) + i) & 0xff;
      }
      // Within a packet a page named twice lands as its last copy.
      for (let i = 0; i < count; i++) expected.set(data.subarray(i * 4096, (i + 1) * 4096), offsets[i]!);
      const compressed = await compressor.compress(data);
      push(await header(compressionFlag(method), offsets, count, compressed.byteLength));
      dataRanges.push([length, length + compressed.byteLength]);
      push(compressed);
      if (p % 2 === 1) {
        push(await header(MULTIFD_FLAG_SYNC, new Float64Array(128), 0, 0));
        syncs++;
      }
    }
    compressor.close();
    const good = Buffer.concat(pieces);

    const feed = async (bytes: Uint8Array): Promise<{ ram: Uint8Array; error?: unknown }> => {
      const ram = new Uint8Array(BLOCK);
      const rx = new MultifdReceiver({
        channels: 1, uuid: UUID, connectWaitMs: 2000, compression: method,
        sink: { blocks: () => [{ idstr: 'pc.ram', size: BLOCK }], multifdPage: (_b, offset) => { assert.ok(offset >= 0 && offset + 4096 <= BLOCK && offset % 4096 === 0, `page at ${offset}`); return ram; } },
        onError: () => {},
      });
      rx.add(channelFromBytes(bytes, { chunkSize: 1 + Math.floor(random() * 5000) }));
      try {
        for (let i = 0; i < syncs; i++) await rx.syncMain();
        return { ram };
      } catch (error) {
        return { ram, error };
      } finally {
        rx.close();
      }
    };
    const whole = await feed(good);
    assert.equal(whole.error, undefined);
    assert.ok(Buffer.from(whole.ram).equals(Buffer.from(expected)), 'every page as sent');

    // A changed byte of compressed data may still decompress (to other bytes: QEMU's format
    // has no checksum, as for uncompressed pages); what must never happen is anything but a
    // typed error, or a page outside the RAM.
    let refused = 0;
    let refusedByCodec = 0;
    for (let round = 0; round < 200; round++) {
      const bytes = new Uint8Array(good);
      if (round % 4 === 3) {
        const { error } = await feed(bytes.subarray(0, Math.floor(random() * bytes.byteLength)));
        if (error !== undefined) refused++;
        assert.ok(error === undefined || error instanceof FerryError, `not a typed error: ${String(error)}`);
        continue;
      }
      // Half the rounds in the compressed data, the rest anywhere (mostly headers).
      for (let n = 0; n < 1 + Math.floor(random() * 3); n++) {
        const [from, to] = dataRanges[Math.floor(random() * dataRanges.length)]!;
        const at = round % 2 === 0 ? from + Math.floor(random() * (to - from)) : Math.floor(random() * bytes.byteLength);
        bytes[at] = Math.floor(random() * 256);
      }
      const { error } = await feed(bytes);
      if (error !== undefined) {
        refused++;
        assert.ok(error instanceof FerryError, `not a typed error: ${String(error)}`);
        assert.match(error.message, /multifd/);
        if (error.message.includes(`${method}: `)) refusedByCodec++;
      }
    }
    assert.ok(refused > 60 && refusedByCodec > 20, `${refused} of 200 refused, ${refusedByCodec} of them by ${method}`);
  });
}

test('multifd receiver, zlib: a compressed channel holds its receive queue to 4 MiB of pages at the ratio so far, from 128 KiB to 8 MiB', async () => {
  const random = prng(5);
  const compressor = packetCompressor('zlib', 1);
  const pieces: Uint8Array[] = [encodeMultifdInit(UUID, 0)];
  const offsets = new Float64Array(128);
  for (let i = 0; i < 64; i++) offsets[i] = i * 4096;
  /** Per packet: compressed bytes in, bytes of pages out. */
  const sizes: Array<[number, number]> = [];
  // Two packets of near-zero pages (a ratio in the hundreds), then three of random bytes.
  for (const kind of ['zeros', 'zeros', 'random', 'random', 'random']) {
    const data = new Uint8Array(64 * 4096);
    if (kind === 'random') for (let j = 0; j < data.length; j++) data[j] = Math.floor(random() * 256);
    else for (let i = 0; i < 64; i++) data[i * 4096] = i + 1;
    const compressed = await compressor.compress(data);
    pieces.push(await writtenBytes((w) => writeMultifdPacketHeader(w, compressionFlag('zlib'), 0, multifdBlockName('pc.ram'), offsets, 64, compressed.byteLength)), compressed);
    sizes.push([compressed.byteLength, data.byteLength]);
  }
  pieces.push(await writtenBytes((w) => writeMultifdPacketHeader(w, MULTIFD_FLAG_SYNC, 0, multifdBlockName('pc.ram'), new Float64Array(128), 0)));
  compressor.close();
  const held: number[] = [];
  const ram = new Uint8Array(BLOCK);
  const rx = new MultifdReceiver({
    channels: 1, uuid: UUID, connectWaitMs: 2000, compression: 'zlib',
    sink: { blocks: () => [{ idstr: 'pc.ram', size: BLOCK }], multifdPage: () => ram },
    onError: () => {},
  });
  rx.add(Object.assign(channelFromBytes(Buffer.concat(pieces), { chunkSize: 4096 }), { holdReceived: (bytes: number) => held.push(bytes) }));
  await rx.syncMain();
  rx.close();
  // After the first packet: far under 128 KiB at its ratio, so 128 KiB.
  assert.equal(held[0], 128 * 1024, `held ${held.join(', ')}`);
  // After the last: 4 MiB of pages at the ratio of all five (set again when it moved by a quarter).
  let inBytes = 0;
  let outBytes = 0;
  for (const [i, o] of sizes) {
    inBytes += i;
    outBytes += o;
  }
  const wanted = Math.round((4 * 1024 * 1024 * inBytes) / outBytes);
  const last = held[held.length - 1]!;
  assert.ok(held.length >= 2 && last > 0.75 * wanted && last < 1.25 * wanted, `held ${held.join(', ')}; 4 MiB at the ratio of all is ${wanted}`);
  assert.ok(held.every((b) => b >= 128 * 1024 && b <= 8 * 1024 * 1024), `held ${held.join(', ')}`);
});
