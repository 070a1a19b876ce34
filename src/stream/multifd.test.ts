import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError } from '../errors.js';
import {
  MULTIFD_FLAG_SYNC, MULTIFD_INIT_BYTES, MULTIFD_PACKET_BYTES, MULTIFD_PACKET_PAGES, decodeMultifdInit, decodeMultifdPacket,
  encodeMultifdInit, multifdBlockName, writeMultifdPacketHeader,
} from './multifd.js';
import { asciiHex, toHex, writtenBytes } from './testing.js';

const UUID = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
const ZEROS = new Uint8Array(16);

test('multifd: the initial packet, byte for byte (MultiFDInit_t: 64 bytes)', () => {
  const bytes = encodeMultifdInit(UUID, 3);
  assert.equal(MULTIFD_INIT_BYTES, 64);
  assert.equal(
    toHex(bytes),
    [
      '11223344', // be32 MULTIFD_MAGIC
      '00000001', // be32 MULTIFD_VERSION
      toHex(UUID), // the VM's UUID
      '03', // u8 channel id
      '00'.repeat(7), // unused1
      '00'.repeat(32), // unused2: four u64
    ].join(''),
  );
  assert.deepEqual(decodeMultifdInit(bytes, UUID, 4, 'ch'), { uuid: UUID, id: 3 });
});

test('multifd: an initial packet is refused in QEMU\'s words, naming the connection and the field', () => {
  const refuse = (bytes: Uint8Array, channels: number, message: RegExp, offset: number): void => {
    assert.throws(() => decodeMultifdInit(bytes, UUID, channels, 'multifd connection tcp:x'), (err: unknown) => {
      assert.ok(err instanceof StreamFormatError);
      assert.match(err.message, /^multifd connection tcp:x: /);
      assert.match(err.message, message);
      assert.equal(err.offset, offset);
      return true;
    });
  };
  const magic = encodeMultifdInit(UUID, 0);
  magic[0] = 0x51;
  refuse(magic, 2, /multifd: received packet magic 51223344 expected 11223344/, 0);
  const version = encodeMultifdInit(UUID, 0);
  version[7] = 2;
  refuse(version, 2, /multifd: received packet version 2 expected 1/, 4);
  refuse(encodeMultifdInit(ZEROS, 1), 2, /multifd: received uuid '00000000-0000-0000-0000-000000000000' and expected uuid 'a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf' for channel 1/, 8);
  refuse(encodeMultifdInit(UUID, 2), 2, /received channel id 2, but multifd-channels is 2 here/, 24);
  refuse(encodeMultifdInit(UUID, 0).subarray(0, 63), 2, /initial packet is 63 bytes, not 64/, 0);
});

test('multifd: a packet header, byte for byte (MultiFDPacket_t and 128 offsets: 1344 bytes)', async () => {
  const offsets = new Float64Array(MULTIFD_PACKET_PAGES);
  offsets[0] = 0x1000;
  offsets[1] = 0x1_2345_6000;
  const bytes = await writtenBytes((w) => writeMultifdPacketHeader(w, 0, 0x1_0000_0002, multifdBlockName('pc.ram'), offsets, 2));
  assert.equal(MULTIFD_PACKET_BYTES, 1344);
  assert.equal(bytes.byteLength, MULTIFD_PACKET_BYTES);
  assert.equal(
    toHex(bytes),
    [
      '11223344', // magic
      '00000001', // version
      '00000000', // flags: no SYNC, MULTIFD_FLAG_NOCOMP
      '00000080', // pages_alloc: 128
      '00000002', // normal_pages
      '00002000', // next_packet_size: 2 pages
      '0000000100000002', // packet_num
      '00'.repeat(32), // unused[4]
      asciiHex('pc.ram') + '00'.repeat(250), // ramblock[256], NUL-padded
      '0000000000001000', '0000000123456000', // offset[0], offset[1]
      '00'.repeat(8 * 126), // the rest of offset[128]
    ].join(''),
  );
  const packet = decodeMultifdPacket(bytes, 0, 'ch');
  assert.equal(packet.flags, 0);
  assert.equal(packet.pagesAlloc, 128);
  assert.equal(packet.normalPages, 2);
  assert.equal(packet.nextPacketSize, 8192);
  assert.equal(packet.packetNum, 0x1_0000_0002);
  assert.equal(packet.ramblock, 'pc.ram');
  assert.deepEqual([...packet.offsets], [0x1000, 0x1_2345_6000]);
});

test('multifd: a SYNC packet carries no pages and names no block', async () => {
  const bytes = await writtenBytes((w) => writeMultifdPacketHeader(w, MULTIFD_FLAG_SYNC, 7, new Uint8Array(256), new Float64Array(128), 0));
  const packet = decodeMultifdPacket(bytes, 0, 'ch');
  assert.equal(packet.flags, MULTIFD_FLAG_SYNC);
  assert.equal(packet.normalPages, 0);
  assert.equal(packet.nextPacketSize, 0);
  assert.equal(packet.ramblock, '');
  assert.equal(packet.offsets.length, 0);
});

test('multifd: a hostile packet header is refused, naming the channel and the byte offset of the field', async () => {
  const good = await writtenBytes((w) => writeMultifdPacketHeader(w, 0, 1, multifdBlockName('pc.ram'), new Float64Array(128), 4));
  const mutate = (at: number, value: number): Uint8Array => {
    const bytes = good.slice();
    new DataView(bytes.buffer).setUint32(at, value);
    return bytes;
  };
  const cases: Array<[Uint8Array, RegExp, number]> = [
    [mutate(0, 0xdeadbeef), /received packet magic deadbeef and expected magic 11223344/, 0],
    [mutate(4, 9), /received packet version 9 and expected version 1/, 4],
    [mutate(12, 129), /received packet with size 129 and expected a size of 128/, 12],
    [mutate(16, 129), /received packet with 129 pages and expected maximum pages are 128/, 16],
    [mutate(8, 1 << 1), /flags received 2 flags expected 0: pages compressed with zlib, and multifd-compression is none here/, 8],
    [mutate(8, 2 << 1), /pages compressed with zstd/, 8],
  ];
  for (const [bytes, message, field] of cases) {
    assert.throws(() => decodeMultifdPacket(bytes, 5000, 'multifd channel 1 (unix:/x)'), (err: unknown) => {
      assert.ok(err instanceof StreamFormatError, String(err));
      assert.match(err.message, /^multifd channel 1 \(unix:\/x\): multifd: /);
      assert.match(err.message, message);
      assert.equal(err.offset, 5000 + field);
      return true;
    });
  }
});

test('multifd: with multifd-compression, a packet must name the same method and carry 1 to 1 MiB of compressed data', async () => {
  const ZLIB = 1 << 1;
  const ZSTD = 2 << 1;
  const header = (flags: number, size: number): Promise<Uint8Array> =>
    writtenBytes((w) => writeMultifdPacketHeader(w, flags, 1, multifdBlockName('pc.ram'), new Float64Array(128), 4, size));
  const zlibPacket = decodeMultifdPacket(await header(ZLIB, 1234), 0, 'ch', ZLIB);
  assert.equal(zlibPacket.nextPacketSize, 1234);
  assert.equal(decodeMultifdPacket(await header(ZSTD, 2 * 512 * 1024), 0, 'ch', ZSTD).nextPacketSize, 2 * 512 * 1024);
  const refuse = async (flags: number, size: number, expected: number, message: RegExp, field: number): Promise<void> => {
    const bytes = await header(flags, size);
    assert.throws(() => decodeMultifdPacket(bytes, 100, 'ch', expected), (err: unknown) => {
      assert.ok(err instanceof StreamFormatError, String(err));
      assert.match(err.message, message);
      assert.equal(err.offset, 100 + field);
      return true;
    });
  };
  await refuse(0, 4 * 4096, ZLIB, /flags received 0 flags expected 2: pages compressed with none, and multifd-compression is zlib here/, 8);
  await refuse(ZSTD, 100, ZLIB, /flags received 4 flags expected 2: pages compressed with zstd, and multifd-compression is zlib here/, 8);
  await refuse(ZLIB, 2 * 512 * 1024 + 1, ZLIB, /received a packet of 1048577 compressed bytes \(1 to 1048576 for 4 pages\)/, 20);
  await refuse(ZSTD, 0, ZSTD, /received a packet of 0 compressed bytes/, 20);
});

test('multifd: what QEMU 7.2 leaves in a SYNC packet is taken as QEMU takes it: a stale next_packet_size, flags it never reads', async () => {
  // QEMU's SYNC packet after a full one says 524288 bytes follow; none do (its receiver reads normal_pages pages).
  const sync = await writtenBytes((w) => writeMultifdPacketHeader(w, MULTIFD_FLAG_SYNC, 9, new Uint8Array(256), new Float64Array(128), 0));
  new DataView(sync.buffer, sync.byteOffset).setUint32(20, 524288);
  assert.equal(decodeMultifdPacket(sync, 0, 'ch').nextPacketSize, 524288);
  new DataView(sync.buffer, sync.byteOffset).setUint32(8, MULTIFD_FLAG_SYNC | (1 << 1));
  assert.equal(decodeMultifdPacket(sync, 0, 'ch').normalPages, 0);
});

test('multifd: a block name that does not fit in the packet is refused before anything is written', () => {
  assert.throws(() => multifdBlockName('x'.repeat(256)), /longer than a multifd packet holds/);
  assert.equal(multifdBlockName('x'.repeat(255)).byteLength, 256);
});
