// multifd-compression (QEMU 7.2's multifd-zlib.c and multifd-zstd.c): each channel keeps
// one compression stream from its first packet to its last. A packet's pages, one after
// another, go into it and are flushed at the packet's end (zlib's Z_SYNC_FLUSH, zstd's
// ZSTD_e_flush), so the destination can take every packet whole as it comes; the packet
// header says how many bytes of compressed data follow it (next_packet_size) and carries
// the method in its flags. The streams never end: there is no frame or checksum trailer,
// and each side's stream must see every packet of its channel in order.
//
// The work runs on libuv's thread pool — Node's zlib streams, libzstd through koffi — so
// channels compress and decompress in parallel, as QEMU's channel threads do.

import zlib from 'node:zlib';
import { MigrationError } from '../errors.js';
import { ZstdCompressStream, ZstdDecompressStream, zstdAvailable, zstdCompressBound } from '../sys/zstd.js';

export type MultifdCompression = 'none' | 'zlib' | 'zstd';

/** The method's value in a packet's flags (MULTIFD_FLAG_NOCOMP / _ZLIB / _ZSTD). */
export function compressionFlag(method: MultifdCompression): number {
  return method === 'zlib' ? 1 << 1 : method === 'zstd' ? 2 << 1 : 0;
}

/** The method a packet's flags name, for errors. */
export function compressionName(flags: number): string {
  const m = (flags >>> 1) & 7;
  return m === 0 ? 'none' : m === 1 ? 'zlib' : m === 2 ? 'zstd' : `method ${m}`;
}

/**
 * The most compressed bytes one packet may carry: twice its pages, what QEMU's zlib
 * receiver sets aside (its zstd one takes less, ZSTD_compressBound of the pages). A
 * bigger next_packet_size is refused before anything is read.
 */
export const MULTIFD_MAX_COMPRESSED_BYTES = 2 * 512 * 1024;
/** The pages of a full packet: 128 of 4 KiB. */
const MULTIFD_PACKET_DATA_BYTES = 512 * 1024;

/** The sending end of one channel's stream. */
export interface PacketCompressor {
  /** `pages` (the packet's pages, one after another; the caller does not change them after) compressed and flushed. */
  compress(pages: Uint8Array): Promise<Uint8Array>;
  close(): void;
}

/** The receiving end of one channel's stream. */
export interface PacketDecompressor {
  /**
   * One packet's compressed bytes: its `expected` bytes of pages, in memory the
   * decompressor uses again for the next packet (the caller copies the pages out first).
   * Throws, saying what was wrong, when the data is corrupt or makes more or fewer bytes
   * than that.
   */
  decompress(input: Uint8Array, expected: number): Promise<Uint8Array>;
  close(): void;
}

/**
 * Refuse, before anything starts, a method this host cannot carry out (zstd without the
 * system's libzstd), in QEMU's words where QEMU has them.
 */
export function checkCompressionAvailable(method: MultifdCompression): void {
  if (method === 'zstd' && !zstdAvailable()) {
    throw new MigrationError('multifd-compression zstd: this host has no libzstd (libzstd.so.1, Debian\'s libzstd1)');
  }
}

export function packetCompressor(method: MultifdCompression, level: number): PacketCompressor {
  if (method === 'zlib') return new ZlibCompressor(level);
  if (method === 'zstd') return new ZstdCompressor(level);
  throw new RangeError(`multifd-compression ${method} compresses nothing`);
}

export function packetDecompressor(method: MultifdCompression): PacketDecompressor {
  if (method === 'zlib') return new ZlibDecompressor();
  if (method === 'zstd') return new ZstdDecompressor();
  throw new RangeError(`multifd-compression ${method} compresses nothing`);
}

/**
 * A Node zlib stream driven one packet at a time: the packet goes in, a Z_SYNC_FLUSH
 * follows, and what came out by the flush's end is the packet's — the next packet is
 * written only then, so no output is ever taken for the wrong one.
 */
class ZlibPackets {
  readonly #stream: zlib.Deflate | zlib.Inflate;
  #chunks: Buffer[] = [];
  #bytes = 0;
  /** Output beyond this fails the packet (a decompression bomb stops here). */
  #limit = Number.POSITIVE_INFINITY;
  /** Where the packet's output goes as it comes, instead of being gathered in #chunks. */
  #into: Uint8Array | undefined;
  #error: Error | null = null;
  #reject: ((err: Error) => void) | undefined;
  #tail: Promise<unknown> = Promise.resolve();

  constructor(stream: zlib.Deflate | zlib.Inflate, what: string) {
    this.#stream = stream;
    stream.on('data', (chunk: Buffer) => {
      const at = this.#bytes;
      this.#bytes += chunk.byteLength;
      if (this.#bytes > this.#limit) {
        this.#fail(new MigrationError(`${what}: the packet made more than the ${this.#limit} bytes it holds`));
        return;
      }
      if (this.#into !== undefined) this.#into.set(chunk, at);
      else this.#chunks.push(chunk);
    });
    stream.on('error', (err: Error) => this.#fail(new MigrationError(`${what}: ${err.message}`, { cause: err })));
  }

  /** `input` through the stream, flushed: all that came out. */
  async run(input: Uint8Array): Promise<Buffer> {
    const { chunks, bytes } = await this.#serially(input, Number.POSITIVE_INFINITY, undefined);
    return Buffer.concat(chunks, bytes);
  }

  /** `input` through the stream, flushed, its output written to `into` (at most its length): how many bytes came out. */
  async runInto(input: Uint8Array, into: Uint8Array): Promise<number> {
    return (await this.#serially(input, into.byteLength, into)).bytes;
  }

  #serially(input: Uint8Array, limit: number, into: Uint8Array | undefined): Promise<{ chunks: Buffer[]; bytes: number }> {
    const next = this.#tail.then(() => this.#one(input, limit, into));
    this.#tail = next.catch(() => {});
    return next;
  }

  #one(input: Uint8Array, limit: number, into: Uint8Array | undefined): Promise<{ chunks: Buffer[]; bytes: number }> {
    return new Promise((resolve, reject) => {
      if (this.#error) {
        reject(this.#error);
        return;
      }
      this.#chunks = [];
      this.#bytes = 0;
      this.#limit = limit;
      this.#into = into;
      this.#reject = reject;
      this.#stream.write(input);
      this.#stream.flush(zlib.constants.Z_SYNC_FLUSH, () => {
        this.#reject = undefined;
        if (this.#error) reject(this.#error);
        else resolve({ chunks: this.#chunks, bytes: this.#bytes });
      });
    });
  }

  #fail(error: Error): void {
    if (this.#error) return;
    this.#error = error;
    this.#stream.destroy();
    this.#reject?.(error);
  }

  close(): void {
    this.#fail(new MigrationError('multifd: the compression stream was closed'));
  }
}

/**
 * Node's zlib streams produce output in pieces of `chunkSize` (16 KiB by default), each one
 * a round trip to the thread pool: 32 per packet of pages inflated. In pieces as large as
 * two packets, one round trip does (inflate of a sweeping guest's packets, one stream, by
 * hand with a scratch script: 327–335 MB/s with 16 KiB pieces, 633–1827 MB/s with 1 MiB).
 */
const ZLIB_CHUNK_BYTES = 2 * MULTIFD_PACKET_DATA_BYTES;

class ZlibCompressor implements PacketCompressor {
  readonly #packets: ZlibPackets;

  constructor(level: number) {
    this.#packets = new ZlibPackets(zlib.createDeflate({ level, chunkSize: ZLIB_CHUNK_BYTES }), 'zlib');
  }

  compress(pages: Uint8Array): Promise<Uint8Array> {
    return this.#packets.run(pages);
  }

  close(): void {
    this.#packets.close();
  }
}

class ZlibDecompressor implements PacketDecompressor {
  readonly #packets = new ZlibPackets(zlib.createInflate({ chunkSize: ZLIB_CHUNK_BYTES }), 'zlib');
  /** Where each packet's output is gathered, kept from packet to packet. */
  #out = new Uint8Array(MULTIFD_PACKET_DATA_BYTES);

  async decompress(input: Uint8Array, expected: number): Promise<Uint8Array> {
    if (this.#out.byteLength < expected) this.#out = new Uint8Array(expected);
    const n = await this.#packets.runInto(input, this.#out.subarray(0, expected));
    if (n !== expected) throw new MigrationError(`zlib: packet size received ${n} size expected ${expected}`);
    return this.#out.subarray(0, n);
  }

  close(): void {
    this.#packets.close();
  }
}

/** One call at a time on a zstd context: each packet waits for the one before it. */
class Serial {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(work: () => Promise<T>): Promise<T> {
    const next = this.#tail.then(work);
    this.#tail = next.catch(() => {});
    return next;
  }
}

class ZstdCompressor implements PacketCompressor {
  readonly #stream: ZstdCompressStream;
  readonly #serial = new Serial();
  #error: Error | null = null;

  constructor(level: number) {
    this.#stream = new ZstdCompressStream(level);
  }

  /** Where every packet is compressed (one at a time), its bytes then copied out. */
  #out: Uint8Array | undefined;

  compress(pages: Uint8Array): Promise<Uint8Array> {
    return this.#serial.run(async () => {
      if (this.#error) throw this.#error;
      const bound = zstdCompressBound(pages.byteLength);
      // Kept: a fresh buffer per packet costs the host's first touch of its pages each time.
      if (this.#out === undefined || this.#out.byteLength < bound) this.#out = new Uint8Array(bound);
      const out = this.#out;
      try {
        const n = await this.#stream.compress(pages, out);
        return out.slice(0, n);
      } catch (err) {
        this.#error = err as Error;
        throw err;
      }
    });
  }

  close(): void {
    this.#error ??= new MigrationError('multifd: the compression stream was closed');
    // Freed once a call running on the thread pool is over.
    void this.#serial.run(async () => this.#stream.close());
  }
}

class ZstdDecompressor implements PacketDecompressor {
  readonly #stream = new ZstdDecompressStream();
  #out: Uint8Array | undefined;
  readonly #serial = new Serial();
  #error: Error | null = null;

  decompress(input: Uint8Array, expected: number): Promise<Uint8Array> {
    return this.#serial.run(async () => {
      if (this.#error) throw this.#error;
      // One byte more than expected: a packet that makes more says so by filling it. Kept
      // from packet to packet (fresh memory costs the host's first touch every time).
      if (this.#out === undefined || this.#out.byteLength < expected + 1) this.#out = new Uint8Array(Math.max(expected + 1, MULTIFD_PACKET_DATA_BYTES + 1));
      const out = this.#out.subarray(0, expected + 1);
      let n: number;
      try {
        n = await this.#stream.decompress(input, out);
      } catch (err) {
        this.#error = new MigrationError(`zstd: ${(err as Error).message}`, { cause: err });
        throw this.#error;
      }
      if (n !== expected) {
        // The stream is out of step from here on: every later packet fails too.
        this.#error = new MigrationError(`zstd: packet size received ${n > expected ? `more than ${expected}` : n} size expected ${expected}`);
        throw this.#error;
      }
      return out.subarray(0, n);
    });
  }

  close(): void {
    this.#error ??= new MigrationError('multifd: the decompression stream was closed');
    void this.#serial.run(async () => this.#stream.close());
  }
}
