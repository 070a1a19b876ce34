// QEMU 7.2's multifd channels (migration/multifd.c): with the `multifd` capability the
// source opens `multifd-channels` more connections beside the main stream, each opening
// with an initial packet (MultiFDInit_t: magic, version, the VM's UUID, the channel's id)
// and then carrying packets (MultiFDPacket_t) of up to 128 whole pages of one RAM block:
// a fixed-size header — its flags, how many pages it holds, a packet number, the block's
// name and every page's offset — followed by the pages themselves. Zero pages still go
// on the main stream as ZERO chunks. Before every EOS of a RAM section the source sends a
// packet flagged SYNC on each channel, and the destination, at that EOS, waits until
// every channel has reached its SYNC: pages sent before a dirty-log sync land before any
// sent after it, whichever channel each took. All integers are big-endian.

import { StreamFormatError } from '../errors.js';
import type { ScatteredReader } from '../transport/channel.js';
import { IOVEC_BYTES, consumeIovec, setIovec } from '../transport/iovec.js';
import type { StreamReader } from './reader.js';
import type { StreamWriter } from './writer.js';
import { MULTIFD_MAX_COMPRESSED_BYTES, compressionName } from './multifd-compression.js';

const PAGE_BYTES = 4096;

export const MULTIFD_MAGIC = 0x11223344;
export const MULTIFD_VERSION = 1;
/** MULTIFD_FLAG_SYNC: every page sent on the channel before it must land before the main stream goes on. */
export const MULTIFD_FLAG_SYNC = 1 << 0;
/** The three bits that name the packet's compression (0: none, 1: zlib, 2: zstd). */
export const MULTIFD_FLAG_COMPRESSION_MASK = 7 << 1;
/** MULTIFD_PACKET_SIZE / the target page size: the pages one packet can carry. */
export const MULTIFD_PACKET_PAGES = (512 * 1024) / 4096;
/** sizeof(MultiFDInit_t): magic, version, uuid[16], id, unused1[7], unused2[4] (u64). */
export const MULTIFD_INIT_BYTES = 4 + 4 + 16 + 1 + 7 + 4 * 8;
/** The fixed part of MultiFDPacket_t, before its offsets. */
const PACKET_FIXED_BYTES = 4 * 6 + 8 + 4 * 8 + 256;
const RAMBLOCK_BYTES = 256;
/** sizeof(MultiFDPacket_t) + 8 × 128: what QEMU reads and writes as one packet header. */
export const MULTIFD_PACKET_BYTES = PACKET_FIXED_BYTES + 8 * MULTIFD_PACKET_PAGES;

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8');

export interface MultifdInit {
  readonly uuid: Uint8Array;
  readonly id: number;
}

/** The initial packet of channel `id` (multifd_send_initial_packet). */
export function encodeMultifdInit(uuid: Uint8Array, id: number): Uint8Array {
  if (uuid.byteLength !== 16) throw new RangeError(`A multifd initial packet carries a 16-byte UUID, not ${uuid.byteLength} bytes`);
  if (!Number.isInteger(id) || id < 0 || id > 0xff) throw new RangeError(`multifd channel id ${id} is not a uint8`);
  const out = new Uint8Array(MULTIFD_INIT_BYTES);
  const view = new DataView(out.buffer);
  view.setUint32(0, MULTIFD_MAGIC);
  view.setUint32(4, MULTIFD_VERSION);
  out.set(uuid, 8);
  out[24] = id;
  return out;
}

/**
 * A channel's initial packet, checked as QEMU's multifd_recv_initial_packet does and in its
 * words: the magic, the version, the UUID (the destination's own: QEMU compares them
 * whatever `validate-uuid` says; both are zeros without -uuid / --uuid), the id below
 * `channels`. `where` names the connection for the error.
 */
export function decodeMultifdInit(bytes: Uint8Array, localUuid: Uint8Array, channels: number, where: string): MultifdInit {
  if (bytes.byteLength < MULTIFD_INIT_BYTES) {
    throw new StreamFormatError(`${where}: multifd initial packet is ${bytes.byteLength} bytes, not ${MULTIFD_INIT_BYTES}`, 0, 'multifd');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, MULTIFD_INIT_BYTES);
  const magic = view.getUint32(0);
  if (magic !== MULTIFD_MAGIC) {
    throw new StreamFormatError(`${where}: multifd: received packet magic ${magic.toString(16)} expected ${MULTIFD_MAGIC.toString(16)}`, 0, 'multifd');
  }
  const version = view.getUint32(4);
  if (version !== MULTIFD_VERSION) {
    throw new StreamFormatError(`${where}: multifd: received packet version ${version} expected ${MULTIFD_VERSION}`, 4, 'multifd');
  }
  const uuid = bytes.slice(8, 24);
  const id = bytes[24]!;
  if (!uuid.every((b, i) => b === localUuid[i])) {
    throw new StreamFormatError(`${where}: multifd: received uuid '${uuidText(uuid)}' and expected uuid '${uuidText(localUuid)}' for channel ${id}`, 8, 'multifd');
  }
  // QEMU 7.2 lets an id equal to the channel count through (and then indexes past its
  // array); Ferry refuses it, with words that say what is wrong (QEMU's repeat the version's).
  if (id >= channels) {
    throw new StreamFormatError(`${where}: multifd: received channel id ${id}, but multifd-channels is ${channels} here`, 24, 'multifd');
  }
  return { uuid, id };
}

function uuidText(u: Uint8Array): string {
  const h = [...u].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export interface MultifdPacket {
  readonly flags: number;
  /** The pages the sender's packet has room for (QEMU's pages_alloc: 128). */
  readonly pagesAlloc: number;
  /** The pages that follow the header. */
  readonly normalPages: number;
  /**
   * The sender's next_packet_size. Without compression the bytes that follow are
   * normalPages × 4096 whatever it says: QEMU 7.2 sets it only for a packet with pages, and
   * its SYNC packets carry the previous packet's (524288 after a full one); its receiver
   * never reads it. Ferry writes the true figure, 0 in a SYNC packet.
   */
  readonly nextPacketSize: number;
  readonly packetNum: number;
  /** The RAM block's idstr (QEMU: NUL-terminated in 256 bytes); '' in a packet with no pages. */
  readonly ramblock: string;
  /** Byte offsets of the pages in the block, `normalPages` of them. */
  readonly offsets: Float64Array;
}

/**
 * Write one packet header (multifd_send_fill_packet): `count` pages of block `ramblock` at
 * `offsets` (bytes into the block), `flags` (SYNC, the compression), the global packet
 * number, and how many bytes follow (the pages, or their compressed form). Those bytes
 * are the caller's to write after it.
 */
export function writeMultifdPacketHeader(w: StreamWriter, flags: number, packetNum: number, ramblock: Uint8Array, offsets: Float64Array, count: number, nextPacketSize = count * PAGE_BYTES): void {
  w.be32(MULTIFD_MAGIC);
  w.be32(MULTIFD_VERSION);
  w.be32(flags);
  w.be32(MULTIFD_PACKET_PAGES);
  w.be32(count);
  w.be32(nextPacketSize);
  w.be64(packetNum);
  for (let i = 0; i < 4; i++) w.be64(0);
  w.bytes(ramblock);
  for (let i = 0; i < count; i++) w.be64(offsets[i]!);
  for (let i = count; i < MULTIFD_PACKET_PAGES; i++) w.be64(0);
}

/** A block's idstr as a packet carries it: NUL-padded to 256 bytes (strncpy). */
export function multifdBlockName(idstr: string): Uint8Array {
  const name = encoder.encode(idstr);
  if (name.byteLength > RAMBLOCK_BYTES - 1) throw new RangeError(`RAM block name "${idstr}" is longer than a multifd packet holds`);
  const out = new Uint8Array(RAMBLOCK_BYTES);
  out.set(name);
  return out;
}

/**
 * One packet header, checked as multifd_recv_unfill_packet does and in its words: the
 * magic and version, no more pages than a packet holds, and — for a packet with pages, as
 * QEMU's recv_pages methods — the compression this side's `multifd-compression` expects
 * (`compression`: its flag value, 0 for none); a compressed packet's size at most
 * MULTIFD_MAX_COMPRESSED_BYTES. Offsets are checked against the block by the caller, who
 * knows the blocks. `at` is the header's byte offset in its channel, `where` the channel,
 * for errors.
 */
export function decodeMultifdPacket(bytes: Uint8Array, at: number, where: string, compression = 0): MultifdPacket {
  const view = new DataView(bytes.buffer, bytes.byteOffset, MULTIFD_PACKET_BYTES);
  const fail = (message: string, field: number): never => {
    throw new StreamFormatError(`${where}: multifd: ${message}`, at + field, 'multifd');
  };
  const magic = view.getUint32(0);
  if (magic !== MULTIFD_MAGIC) fail(`received packet magic ${magic.toString(16)} and expected magic ${MULTIFD_MAGIC.toString(16)}`, 0);
  const version = view.getUint32(4);
  if (version !== MULTIFD_VERSION) fail(`received packet version ${version} and expected version ${MULTIFD_VERSION}`, 4);
  const flags = view.getUint32(8);
  const pagesAlloc = view.getUint32(12);
  if (pagesAlloc > MULTIFD_PACKET_PAGES) fail(`received packet with size ${pagesAlloc} and expected a size of ${MULTIFD_PACKET_PAGES}`, 12);
  const normalPages = view.getUint32(16);
  if (normalPages > pagesAlloc) fail(`received packet with ${normalPages} pages and expected maximum pages are ${pagesAlloc}`, 16);
  const method = flags & MULTIFD_FLAG_COMPRESSION_MASK;
  if (method !== compression && normalPages > 0) {
    fail(`flags received ${method.toString(16)} flags expected ${compression.toString(16)}: pages compressed with ${compressionName(method)}, and multifd-compression is ${compressionName(compression)} here`, 8);
  }
  const nextPacketSize = view.getUint32(20);
  if (compression !== 0 && normalPages > 0 && (nextPacketSize === 0 || nextPacketSize > MULTIFD_MAX_COMPRESSED_BYTES)) {
    fail(`received a packet of ${nextPacketSize} compressed bytes (1 to ${MULTIFD_MAX_COMPRESSED_BYTES} for ${normalPages} pages)`, 20);
  }
  const high = view.getUint32(24);
  const packetNum = high * 0x100000000 + view.getUint32(28);
  let ramblock = '';
  const offsets = new Float64Array(normalPages);
  if (normalPages > 0) {
    const name = bytes.subarray(64, 64 + RAMBLOCK_BYTES - 1);
    const end = name.indexOf(0);
    ramblock = decoder.decode(end < 0 ? name : name.subarray(0, end));
    for (let i = 0; i < normalPages; i++) {
      const hi = view.getUint32(PACKET_FIXED_BYTES + 8 * i);
      const lo = view.getUint32(PACKET_FIXED_BYTES + 8 * i + 4);
      // Past 2^53 a number cannot hold it; no block is that large, so the block check fails it.
      offsets[i] = hi > 0x1fffff ? Number.MAX_VALUE : hi * 0x100000000 + lo;
    }
  }
  return { flags, pagesAlloc, normalPages, nextPacketSize, packetNum, ramblock, offsets };
}

/**
 * Read the `count` pages that come next on a multifd channel straight into memory — page i
 * at host address `addresses[i]` — with readv(2), and with them as much of the next packet
 * header as has arrived, into `scratch` (MULTIFD_PACKET_BYTES), which the reader then holds
 * to be read as usual. The reader must hold nothing and `io` be its channel's scattered
 * reads, ready; the caller resumes them. False when the stream ended before the last page.
 */
export async function readMultifdPagesStraight(r: StreamReader, io: ScatteredReader, addresses: Float64Array, count: number, scratch: Uint8Array): Promise<boolean> {
  const entries = count + 1;
  const iov = new Uint8Array(entries * IOVEC_BYTES);
  const view = new DataView(iov.buffer);
  for (let i = 0; i < count; i++) setIovec(view, i, addresses[i]!, PAGE_BYTES);
  setIovec(view, count, io.addressOf(scratch), MULTIFD_PACKET_BYTES);
  const pageBytes = count * PAGE_BYTES;
  let got = 0;
  let first = 0;
  while (got < pageBytes) {
    const n = await io.read(new Uint8Array(iov.buffer, first * IOVEC_BYTES, (entries - first) * IOVEC_BYTES), entries - first);
    if (n === 0) break;
    got += n;
    first = consumeIovec(view, first, entries, n);
  }
  const pagesIn = Math.min(got, pageBytes);
  r.skipScattered(pagesIn);
  if (got > pageBytes) r.takeBack(scratch.slice(0, got - pageBytes));
  return pagesIn === pageBytes;
}
