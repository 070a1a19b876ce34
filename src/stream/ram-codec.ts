// The RAM section's data, version 4 (QEMU ram.c): chunks of `be64 offset|flags`, the block
// idstr unless CONTINUE, then the payload — MEM_SIZE block lists, whole pages, zero pages
// and XBZRLE deltas — ended by EOS. Also XBZRLE's delta encoding itself (xbzrle.c).

import { StreamFormatError } from '../errors.js';
import { hex } from './format.js';
import type { StreamReader } from './reader.js';
import type { StreamWriter } from './writer.js';
import { readExactly, readScatteredPages } from './ram-scatter.js';
import type { ScatterSink } from './ram-scatter.js';
import { keepShape } from '../hot-shapes.js';

export const RAM_SAVE_FLAG_ZERO = 0x02;
export const RAM_SAVE_FLAG_MEM_SIZE = 0x04;
export const RAM_SAVE_FLAG_PAGE = 0x08;
export const RAM_SAVE_FLAG_EOS = 0x10;
export const RAM_SAVE_FLAG_CONTINUE = 0x20;
export const RAM_SAVE_FLAG_XBZRLE = 0x40;
/** Flags a QEMU stream may carry that Ferry refuses (RDMA, legacy compression, 8.0 multifd). */
export const RAM_SAVE_FLAG_HOOK = 0x80;
export const RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100;
export const RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200;

/** The byte after an XBZRLE chunk header (ram.c ENCODING_FLAG_XBZRLE). */
export const ENCODING_FLAG_XBZRLE = 0x01;
export const RAM_PAGE_SIZE = 4096;
const PAGE_MASK = RAM_PAGE_SIZE - 1;
/** Decoding caps: more blocks than this in MEM_SIZE is not a VM anyone runs. */
export const MAX_RAM_BLOCKS = 1024;
const TWO_32 = 0x100000000;
/** Offsets above 2^53 cannot be held in a number; no real block is that large. */
const MAX_OFFSET_HIGH_WORD = 0x1fffff;

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8');

export class RamChunkWriter {
  readonly #w: StreamWriter;
  /** QEMU's last_sent_block: the next chunk for the same block sets CONTINUE and omits the idstr. */
  #lastBlock: string | null = null;
  readonly #names = new Map<string, Uint8Array>();

  constructor(w: StreamWriter) {
    keepShape(this);
    this.#w = w;
  }

  /** The setup chunk: total RAM bytes, then every block's idstr and used length (ram_save_setup). */
  /**
   * MEM_SIZE: the total, then each block's name and length — and, with x-ignore-shared,
   * its guest-physical address (`address`, which every block then has), as QEMU 7.2's
   * ram_save_setup writes block->mr->addr.
   */
  memSize(blocks: ReadonlyArray<{ idstr: string; size: number; address?: number }>): void {
    let total = 0;
    for (const b of blocks) {
      if (!Number.isSafeInteger(b.size) || b.size < 0) {
        throw new StreamFormatError(`Cannot write RAM block "${b.idstr}": size ${b.size} is not a byte count`, this.#w.bytesWritten, 'ram');
      }
      total += b.size;
    }
    if (total & PAGE_MASK) {
      throw new StreamFormatError(`Cannot write MEM_SIZE: total RAM ${total} bytes is not a multiple of ${RAM_PAGE_SIZE}`, this.#w.bytesWritten, 'ram');
    }
    this.#w.be64(total + RAM_SAVE_FLAG_MEM_SIZE);
    for (const b of blocks) {
      const name = this.#name(b.idstr);
      this.#w.u8(name.byteLength);
      this.#w.bytes(name);
      this.#w.be64(b.size);
      if (b.address !== undefined) this.#w.be64(b.address);
    }
  }

  page(idstr: string, offset: number, data: Uint8Array): void {
    if (data.byteLength !== RAM_PAGE_SIZE) {
      throw new StreamFormatError(`Cannot write RAM page at ${offset} of "${idstr}": ${data.byteLength} bytes, not ${RAM_PAGE_SIZE}`, this.#w.bytesWritten, 'ram');
    }
    this.#header(idstr, offset, RAM_SAVE_FLAG_PAGE);
    this.#w.bytes(data);
  }

  /**
   * The page at byte `offset` of `ram` (a block's memory): by reference when the block's
   * memory has a fixed `ramAddress` and the channel takes references (the kernel then
   * reads the page from guest RAM), else copied straight from there.
   */
  pageOf(idstr: string, ram: Uint8Array, offset: number, ramAddress?: number): void {
    this.#header(idstr, offset, RAM_SAVE_FLAG_PAGE);
    this.#w.byReference(ram, offset, RAM_PAGE_SIZE, ramAddress);
  }

  /** A page of zeros, 9 bytes instead of 4105 (QEMU's save_zero_page: fill byte 0). */
  zero(idstr: string, offset: number): void {
    this.#header(idstr, offset, RAM_SAVE_FLAG_ZERO);
    this.#w.u8(0);
  }

  /**
   * `count` consecutive zero pages from `offset`: the same chunks as that many zero()
   * calls, for the stretches of never-touched RAM an idle guest is mostly made of.
   */
  zeroRun(idstr: string, offset: number, count: number): void {
    if (count <= 0) return;
    this.zero(idstr, offset);
    const w = this.#w;
    const flags = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE;
    for (let i = 1, at = offset + RAM_PAGE_SIZE; i < count; i++, at += RAM_PAGE_SIZE) {
      w.be64(at + flags);
      w.u8(0);
    }
  }

  /** A page as an XBZRLE delta against the copy the destination already has (ram.c save_xbzrle_page). */
  xbzrle(idstr: string, offset: number, encoded: Uint8Array): void {
    if (encoded.byteLength > RAM_PAGE_SIZE) {
      throw new StreamFormatError(`Cannot write XBZRLE page at ${offset} of "${idstr}": ${encoded.byteLength} encoded bytes exceed a page`, this.#w.bytesWritten, 'ram');
    }
    this.#header(idstr, offset, RAM_SAVE_FLAG_XBZRLE);
    this.#w.u8(ENCODING_FLAG_XBZRLE);
    this.#w.be16(encoded.byteLength);
    this.#w.bytes(encoded);
  }

  /** End of this section's RAM data; the next section starts without a last block, as in QEMU. */
  eos(): void {
    this.#w.be64(RAM_SAVE_FLAG_EOS);
    this.#lastBlock = null;
  }

  #header(idstr: string, offset: number, flag: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset & PAGE_MASK) {
      throw new StreamFormatError(`Cannot write RAM chunk for "${idstr}": offset ${offset} is not page-aligned`, this.#w.bytesWritten, 'ram');
    }
    const w = this.#w;
    if (idstr === this.#lastBlock) {
      w.be64(offset + (flag | RAM_SAVE_FLAG_CONTINUE));
      return;
    }
    const name = this.#name(idstr);
    w.be64(offset + flag);
    w.u8(name.byteLength);
    w.bytes(name);
    this.#lastBlock = idstr;
  }

  #name(idstr: string): Uint8Array {
    let name = this.#names.get(idstr);
    if (name === undefined) {
      name = encoder.encode(idstr);
      if (name.byteLength === 0 || name.byteLength > 255) {
        throw new StreamFormatError(`Cannot write RAM block idstr "${idstr.slice(0, 40)}": ${name.byteLength} bytes, expected 1 to 255`, this.#w.bytesWritten, 'ram');
      }
      this.#names.set(idstr, name);
    }
    return name;
  }
}

export interface RamChunkSink {
  /** `address`: each block's guest-physical address, when memSizeWithAddresses. */
  memSize(total: number, blocks: Array<{ idstr: string; size: number; address?: number }>): void;
  /** x-ignore-shared: each MEM_SIZE block carries its guest-physical address after its length. */
  readonly memSizeWithAddresses?: boolean;
  /** returns the RAM to copy the page into, and the byte offset in it; throws if the block/offset is unknown */
  pageTarget(idstr: string, offset: number): { ram: Uint8Array; offset: number };
  /**
   * Optional: store the page at `offset` of block `idstr` from the PAGE_SIZE bytes at
   * `byteOffset` of `buffer` (the received bytes, valid for this call only). With it, runs
   * of PAGE|CONTINUE chunks are decoded in place, without pageTarget()'s per-page object;
   * same checks. The ArrayBuffer rather than a view of it: reading a view's `.buffer` per
   * page went through V8's slow path (a C++ getter) and cost more than the call.
   */
  pageFrom?(idstr: string, offset: number, buffer: ArrayBufferLike, byteOffset: number): void;
  zero(idstr: string, offset: number, fill: number): void;
  /**
   * Optional: where pages may be read straight into (ram-scatter.ts), on a channel with
   * scattered reads. Both methods or neither.
   */
  scatterTarget?: ScatterSink['scatterTarget'];
  scatterStored?: ScatterSink['scatterStored'];
  /**
   * Optional: `count` zero pages (fill 0) from `offset` of block `idstr` on, brought by
   * consecutive ZERO|CONTINUE chunks — an idle guest's stream is mostly such runs. Returns
   * false, having done nothing, when it cannot take them all (an unknown block, a range
   * past its end): the chunks then go to zero() one by one, which reports the error at the
   * chunk it concerns, as without this.
   */
  zeroRun?(idstr: string, offset: number, count: number): boolean;
  xbzrle?(idstr: string, offset: number, encoded: Uint8Array): void;
}

/** What a RAM loader remembers between sections of one stream. */
export interface RamStreamState {
  /** The block the last page chunk named: a CONTINUE chunk means this block. */
  lastBlock: string | null;
}

/**
 * A chunk's page address from its header words. Below 4 GiB it is the low word alone, an
 * integer the engine keeps unboxed: the general form is a double, which code not yet
 * optimised allocates on the heap — for an idle guest's 262 144 ZERO chunks a GiB, enough
 * garbage to set off a collection while the destination takes the end of the stream.
 */
export function chunkOffset(high: number, low: number): number {
  const pageAddress = (low & ~PAGE_MASK) >>> 0;
  return high === 0 ? pageAddress : high * TWO_32 + pageAddress;
}

/** The flags of a zero page of the block named before: what an idle guest's stream is mostly made of. */
const ZERO_CONTINUE = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE;
const ZERO_CHUNK_BYTES = 9;

const PAGE_CONTINUE = RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE;
const PAGE_CHUNK_BYTES = 8 + RAM_PAGE_SIZE;

/** Whether a chunk header's low word is that of a PAGE|CONTINUE chunk (a page of the block named before). */
export function isPageContinue(low: number): boolean {
  return (low & PAGE_MASK) === PAGE_CONTINUE;
}

/**
 * Decode the PAGE|CONTINUE chunks that follow whole in the reader's current buffer in
 * place, as readZeroRun does for zero pages: a first pass is almost all of them. Stops at
 * anything else, at a chunk that straddles buffers, or at the buffer's end.
 */
function readPageRun(r: StreamReader, sink: RamChunkSink & { pageFrom: NonNullable<RamChunkSink['pageFrom']> }, block: string, last: number): number {
  for (;;) {
    const { view, start, end } = r.contiguous();
    const buffer = view.buffer;
    const base = view.byteOffset;
    let at = start;
    while (end - at >= PAGE_CHUNK_BYTES) {
      const high = view.getUint32(at);
      const low = view.getUint32(at + 4);
      if ((low & PAGE_MASK) !== PAGE_CONTINUE || high > MAX_OFFSET_HIGH_WORD) break;
      // Consumed first, as the general loop does, so an error names the same offset.
      r.skipContiguous(PAGE_CHUNK_BYTES);
      last = chunkOffset(high, low);
      sink.pageFrom(block, last, buffer, base + at + 8);
      at += PAGE_CHUNK_BYTES;
    }
    if (at !== end || r.available() < PAGE_CHUNK_BYTES) return last;
  }
}

/**
 * After a run of pages of `block` ending at `last`, with the reader's buffer used up to
 * less than a chunk: where the channel has scattered reads and nothing waits in it, read
 * what follows straight into guest RAM while it is the next pages in order
 * (ram-scatter.ts). The chunk begun in the buffer is completed first, through a small
 * read, and stored as usual.
 */
async function readPagesStraight(r: StreamReader, sink: RamChunkSink & { pageFrom: NonNullable<RamChunkSink['pageFrom']> }, block: string, last: number): Promise<void> {
  const io = r.scattered();
  if (io === null) return;
  try {
    if (r.available() > 0) {
      // Its header first, alone: whatever follows a chunk that is not a page may be all the
      // peer sends until it hears back, and a read for more would wait for ever.
      if (r.available() < 8 && !(await readExactly(r, io, 8 - r.available(), PAGE_CHUNK_BYTES))) return;
      let low = 0;
      for (let i = 4; i < 8; i++) low = low * 256 + r.peekU8(i);
      if (!isPageContinue(low)) return;
      if (!(await readExactly(r, io, PAGE_CHUNK_BYTES - r.available(), PAGE_CHUNK_BYTES))) return;
      const before = r.offset;
      last = readPageRun(r, sink, block, last);
      if (r.offset === before || r.available() !== 0) return;
    }
    await readScatteredPages(r, io, sink as ScatterSink & RamChunkSink, block, last);
  } finally {
    io.resume();
  }
}

/**
 * Decode the ZERO|CONTINUE chunks that follow in the reader's current buffer in place —
 * the same checks and the same sink calls as the general loop, without its per-chunk
 * reads. Stops at anything else, at a chunk that straddles buffers, or at the buffer's end;
 * the general loop takes it from there. Each chunk is consumed before the sink sees it,
 * so an error names the same offset the general loop would.
 */
function readZeroRun(r: StreamReader, sink: RamChunkSink, block: string): void {
  const runs = sink.zeroRun !== undefined;
  for (;;) {
    const { view, start, end } = r.contiguous();
    let at = start;
    // Fill-0 pages at consecutive offsets, read but not yet consumed: handed over as one run.
    let runOffset = 0;
    let runCount = 0;
    while (end - at >= ZERO_CHUNK_BYTES) {
      const high = view.getUint32(at);
      const low = view.getUint32(at + 4);
      if ((low & PAGE_MASK) !== ZERO_CONTINUE || high > MAX_OFFSET_HIGH_WORD) break;
      const fill = view.getUint8(at + 8);
      const offset = chunkOffset(high, low);
      at += ZERO_CHUNK_BYTES;
      if (runs && fill === 0) {
        if (runCount > 0 && offset === runOffset + runCount * RAM_PAGE_SIZE) {
          runCount++;
          continue;
        }
        flushZeroRun(r, sink, block, runOffset, runCount);
        runOffset = offset;
        runCount = 1;
        continue;
      }
      flushZeroRun(r, sink, block, runOffset, runCount);
      runCount = 0;
      r.skipContiguous(ZERO_CHUNK_BYTES);
      sink.zero(block, offset, fill);
    }
    flushZeroRun(r, sink, block, runOffset, runCount);
    // Go on into the next buffered chunk only when this one ended exactly at a chunk boundary.
    // (Both tests run whichever way: a warm-up whose runs never end at a buffer's end would
    // leave the second without type feedback, and V8 drops the compiled loop at the first
    // run that does — in an idle guest's first pass, while the stop waits for it.)
    const shortOfChunk = r.available() < ZERO_CHUNK_BYTES;
    if (at !== end || shortOfChunk) return;
  }
}

/** Consume a run's chunks and hand it over: whole, or chunk by chunk where the sink will not take it whole. */
function flushZeroRun(r: StreamReader, sink: RamChunkSink, block: string, offset: number, count: number): void {
  if (count === 0) return;
  if (sink.zeroRun!(block, offset, count)) {
    r.skipContiguous(count * ZERO_CHUNK_BYTES);
    return;
  }
  for (let i = 0; i < count; i++) {
    r.skipContiguous(ZERO_CHUNK_BYTES);
    sink.zero(block, offset + i * RAM_PAGE_SIZE, 0);
  }
}

/**
 * Read chunks until EOS, handing each to `sink`. The block named by the previous chunk
 * carries over CONTINUE chunks. QEMU 7.2's loader keeps it for the whole incoming
 * stream (a static in ram_block_from_stream), and its sender does start a new section
 * with a CONTINUE chunk when the block did not change — so a loader of a whole stream
 * passes one `state` to every call; without one, the block is forgotten at each call.
 */
export async function readRamChunks(r: StreamReader, sink: RamChunkSink, section: string, state: RamStreamState = { lastBlock: null }): Promise<void> {
  for (;;) {
    if (r.available() < 8) await r.ensure(8, section);
    const at = r.offset;
    const high = r.be32();
    const low = r.be32();
    const flags = low & PAGE_MASK;
    if (high > MAX_OFFSET_HIGH_WORD) {
      throw new StreamFormatError(`RAM chunk at offset ${at}: address 0x${hex(high, 8)}${hex(low >>> 0, 8)} is beyond 2^53`, at, section);
    }
    const offset = chunkOffset(high, low);
    const kind = flags & ~RAM_SAVE_FLAG_CONTINUE;
    const cont = (flags & RAM_SAVE_FLAG_CONTINUE) !== 0;

    if (kind === RAM_SAVE_FLAG_PAGE || kind === RAM_SAVE_FLAG_ZERO || kind === RAM_SAVE_FLAG_XBZRLE) {
      let block: string;
      if (cont) {
        if (state.lastBlock === null) {
          throw new StreamFormatError(`RAM chunk at offset ${at} says CONTINUE but no block was named before it`, at, section);
        }
        block = state.lastBlock;
      } else {
        block = await readIdstr(r, section, at);
        state.lastBlock = block;
      }
      // The chunk's body, or its first bytes, buffered through one call whatever its kind: a
      // PAGE split between two reads gives it type feedback in every warm-up, while a ZERO
      // chunk's fill byte in the next read is rare there — and common in an idle guest's stream.
      const body = kind === RAM_SAVE_FLAG_PAGE ? RAM_PAGE_SIZE : kind === RAM_SAVE_FLAG_ZERO ? 1 : 3;
      if (r.available() < body) await r.ensure(body, section);
      if (kind === RAM_SAVE_FLAG_PAGE) {
        const target = sink.pageTarget(block, offset);
        r.copyTo(target.ram, target.offset, RAM_PAGE_SIZE);
        if (sink.pageFrom) {
          const last = readPageRun(r, sink as Parameters<typeof readPageRun>[1], block, offset);
          if (sink.scatterTarget && r.available() < PAGE_CHUNK_BYTES) await readPagesStraight(r, sink as Parameters<typeof readPageRun>[1], block, last);
        }
      } else if (kind === RAM_SAVE_FLAG_ZERO) {
        sink.zero(block, offset, r.u8());
        readZeroRun(r, sink, block);
      } else {
        const encoding = r.u8();
        if (encoding !== ENCODING_FLAG_XBZRLE) {
          throw new StreamFormatError(`Failed to load XBZRLE page at offset ${at}: encoding 0x${hex(encoding, 2)} is not 0x01`, at, section);
        }
        const len = r.be16();
        if (len > RAM_PAGE_SIZE) {
          throw new StreamFormatError(`Failed to load XBZRLE page at offset ${at}: length ${len} exceeds a page`, at, section);
        }
        await r.ensure(len, section);
        const encoded = r.bytes(len);
        if (!sink.xbzrle) {
          throw new StreamFormatError(`RAM chunk at offset ${at} is an XBZRLE page, but this destination keeps no XBZRLE state`, at, section);
        }
        sink.xbzrle(block, offset, encoded);
      }
      continue;
    }
    if (cont) {
      throw new StreamFormatError(`Unknown RAM flags 0x${hex(flags, 3)} at offset ${at}: CONTINUE without a page`, at, section);
    }
    if (kind === RAM_SAVE_FLAG_EOS) return;
    if (kind === RAM_SAVE_FLAG_MEM_SIZE) {
      await readMemSize(r, sink, section, offset);
      continue;
    }
    throw new StreamFormatError(`Unknown RAM flags 0x${hex(flags, 3)} at offset ${at}${describeFlags(flags)}`, at, section);
  }
}

/** MEM_SIZE: blocks follow until their lengths add up to the total (ram.c ram_load_precopy). */
async function readMemSize(r: StreamReader, sink: RamChunkSink, section: string, total: number): Promise<void> {
  const blocks: Array<{ idstr: string; size: number; address?: number }> = [];
  const withAddresses = sink.memSizeWithAddresses === true;
  let remaining = total;
  while (remaining > 0) {
    if (blocks.length >= MAX_RAM_BLOCKS) {
      throw new StreamFormatError(`RAM block list has more than ${MAX_RAM_BLOCKS} blocks`, r.offset, section);
    }
    const at = r.offset;
    const idstr = await readIdstr(r, section, at);
    await r.ensure(8, section);
    const high = r.be32();
    const low = r.be32();
    const size = high * TWO_32 + low;
    if (high > MAX_OFFSET_HIGH_WORD || size > remaining) {
      throw new StreamFormatError(`RAM block "${idstr}" at offset ${at}: length ${high > MAX_OFFSET_HIGH_WORD ? 'beyond 2^53' : size} exceeds the ${remaining} bytes left of the ${total} announced`, at, section);
    }
    if (withAddresses) {
      await r.ensure(8, section);
      const addressHigh = r.be32();
      const address = addressHigh * TWO_32 + r.be32();
      if (addressHigh > MAX_OFFSET_HIGH_WORD) throw new StreamFormatError(`RAM block "${idstr}" at offset ${at}: guest address beyond 2^53`, at, section);
      blocks.push({ idstr, size, address });
    } else {
      blocks.push({ idstr, size });
    }
    remaining -= size;
  }
  sink.memSize(total, blocks);
}

async function readIdstr(r: StreamReader, section: string, chunkAt: number): Promise<string> {
  if (r.available() < 1) await r.ensure(1, section);
  const len = r.u8();
  if (len === 0) throw new StreamFormatError(`RAM chunk at offset ${chunkAt} names a block with an empty idstr`, chunkAt, section);
  if (r.available() < len) await r.ensure(len, section);
  return decoder.decode(r.bytes(len));
}

function describeFlags(flags: number): string {
  const names: string[] = [];
  if (flags & RAM_SAVE_FLAG_HOOK) names.push('HOOK (RDMA)');
  if (flags & RAM_SAVE_FLAG_COMPRESS_PAGE) names.push('COMPRESS_PAGE (legacy compression)');
  if (flags & RAM_SAVE_FLAG_MULTIFD_FLUSH) names.push('MULTIFD_FLUSH (QEMU 8.0+)');
  return names.length > 0 ? `: ${names.join(', ')} not supported` : '';
}

// ---- XBZRLE (xbzrle.c): zero-run / non-zero-run pairs over old XOR new, ULEB128 lengths ----

/**
 * Encode `newPage` against `oldPage` into `out`. Returns the encoded length (0 when the
 * pages are equal: nothing to send), or -1 when the encoding would not fit in `out`
 * (send the page whole). Same format as QEMU's xbzrle_encode_buffer.
 */
export function xbzrleEncode(oldPage: Uint8Array, newPage: Uint8Array, out: Uint8Array): number {
  const n = newPage.byteLength;
  if (oldPage.byteLength !== n) {
    throw new StreamFormatError(`Cannot XBZRLE-encode pages of ${oldPage.byteLength} and ${n} bytes`, 0, 'ram');
  }
  if (n > 0x3fff) throw new StreamFormatError(`Cannot XBZRLE-encode a ${n}-byte page: runs are limited to 16383 bytes`, 0, 'ram');
  // Compare a word at a time where both pages allow it (guest RAM and caches are page-aligned).
  const aligned = n % 4 === 0 && oldPage.byteOffset % 4 === 0 && newPage.byteOffset % 4 === 0;
  const o32 = aligned ? new Uint32Array(oldPage.buffer, oldPage.byteOffset, n >>> 2) : null;
  const n32 = aligned ? new Uint32Array(newPage.buffer, newPage.byteOffset, n >>> 2) : null;
  const dlen = out.byteLength;
  let i = 0;
  let d = 0;
  while (i < n) {
    if (d + 2 > dlen) return -1;
    const zStart = i;
    i = equalRunEnd(oldPage, newPage, o32, n32, i, n);
    if (i - zStart === n) return 0;
    if (i === n) return d; // a trailing unchanged run is not encoded
    d = putUleb(out, d, i - zStart);
    if (d + 2 > dlen) return -1;
    const nzStart = i;
    i = changedRunEnd(oldPage, newPage, o32, n32, i, n);
    const nzLen = i - nzStart;
    d = putUleb(out, d, nzLen);
    if (d + nzLen > dlen) return -1;
    out.set(newPage.subarray(nzStart, i), d);
    d += nzLen;
  }
  return d;
}

/** First index ≥ i where the pages differ (or n). */
function equalRunEnd(a: Uint8Array, b: Uint8Array, a32: Uint32Array | null, b32: Uint32Array | null, i: number, n: number): number {
  if (a32 && b32) {
    while (i < n && i & 3 && a[i] === b[i]) i++;
    if (i < n && (i & 3) === 0) {
      let w = i >>> 2;
      const words = n >>> 2;
      while (w < words && a32[w] === b32[w]) w++;
      i = w << 2;
    }
  }
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** First index ≥ i where the pages are equal again (or n). */
function changedRunEnd(a: Uint8Array, b: Uint8Array, a32: Uint32Array | null, b32: Uint32Array | null, i: number, n: number): number {
  if (a32 && b32) {
    while (i < n && i & 3 && a[i] !== b[i]) i++;
    if (i < n && (i & 3) === 0) {
      let w = i >>> 2;
      const words = n >>> 2;
      // A word continues the run only if all four bytes differ: no zero byte in the XOR.
      for (; w < words; w++) {
        const x = (a32[w]! ^ b32[w]!) >>> 0;
        if (((x - 0x01010101) & ~x & 0x80808080) !== 0) break;
      }
      i = w << 2;
    }
  }
  while (i < n && a[i] !== b[i]) i++;
  return i;
}

/** Apply an XBZRLE delta to `page` (which holds the old contents). Throws StreamFormatError on a malformed delta. */
export function xbzrleDecode(encoded: Uint8Array, page: Uint8Array): void {
  const slen = encoded.byteLength;
  const dlen = page.byteLength;
  let i = 0;
  let d = 0;
  const bad = (why: string): never => {
    throw new StreamFormatError(`Failed to load XBZRLE page - decode error: ${why} at byte ${i} of ${slen}`, 0, 'ram');
  };
  while (i < slen) {
    if (slen - i < 2) bad('truncated zero run');
    let [count, used] = getUleb(encoded, i);
    if (used < 0 || (i > 0 && count === 0)) bad('invalid zero-run length');
    i += used;
    d += count;
    if (d > dlen) bad(`zero run past the ${dlen}-byte page`);
    if (slen - i < 2) bad('truncated data run');
    [count, used] = getUleb(encoded, i);
    if (used < 0 || count === 0) bad('invalid data-run length');
    i += used;
    if (d + count > dlen || i + count > slen) bad(`data run of ${count} bytes overflows`);
    page.set(encoded.subarray(i, i + count), d);
    d += count;
    i += count;
  }
}

/** ULEB128 for values below 2^14 (uleb128_encode_small). */
function putUleb(out: Uint8Array, d: number, v: number): number {
  if (v < 0x80) {
    out[d] = v;
    return d + 1;
  }
  out[d] = (v & 0x7f) | 0x80;
  out[d + 1] = v >>> 7;
  return d + 2;
}

/** [value, bytes used], or used = -1 for more than two bytes (uleb128_decode_small). */
function getUleb(src: Uint8Array, i: number): [number, number] {
  const first = src[i]!;
  if (!(first & 0x80)) return [first, 1];
  const second = src[i + 1]!;
  if (second & 0x80) return [0, -1];
  return [(first & 0x7f) | (second << 7), 2];
}
