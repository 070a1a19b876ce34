// The buffered reader under every incoming stream (QEMU's QEMUFile, read side): chunks
// from the channel are kept as they arrived and read in place, so a RAM page is copied
// once, from the received chunk straight into guest RAM. Every read is bounds-checked.

import { FerryError, StreamFormatError, StreamTruncatedError, TransportError } from '../errors.js';
import type { Channel, ScatteredReader } from '../transport/channel.js';
import { keepShape } from '../hot-shapes.js';

const EMPTY = new Uint8Array(0);

export class StreamReader {
  readonly #channel: Channel;
  /** The chunk being read, a DataView over it, and the read position in it. */
  #cur: Uint8Array = EMPTY;
  #curView: DataView = new DataView(EMPTY.buffer);
  #pos = 0;
  /** Chunks received after #cur, oldest first, from #head on. */
  #queue: Uint8Array[] = [];
  #head = 0;
  /** Unread bytes in #cur and #queue together. */
  #buffered = 0;
  #consumed = 0;
  #eof = false;
  #failure: Error | null = null;
  /** Scratch for integers that straddle two chunks. */
  readonly #scratch = new Uint8Array(8);
  readonly #scratchView = new DataView(this.#scratch.buffer);

  constructor(channel: Channel) {
    keepShape(this);
    this.#channel = channel;
  }

  /** Bytes consumed so far, counted from the start of the stream. */
  get offset(): number {
    return this.#consumed;
  }

  /** Bytes buffered now: reads of up to this many bytes need no await. */
  available(): number {
    return this.#buffered;
  }

  /**
   * Resolve once at least `n` bytes are buffered. Rejects with StreamTruncatedError if
   * the stream ends first (naming `section` and the offset), TransportError if the
   * channel broke.
   */
  async ensure(n: number, section?: string): Promise<void> {
    if (this.#buffered >= n) return;
    if (!(await this.fill(n))) {
      throw new StreamTruncatedError(
        `Stream ended at offset ${this.#consumed + this.#buffered}${section === undefined ? '' : ` in section "${section}"`}: ` +
          `needed ${n} bytes at offset ${this.#consumed}, only ${this.#buffered} remain`,
        this.#consumed + this.#buffered,
        section,
      );
    }
  }

  /** Buffer at least `n` bytes if the stream has them: false when it ends first. */
  async fill(n: number): Promise<boolean> {
    while (this.#buffered < n) {
      if (this.#eof) return false;
      if (this.#failure) throw this.#failure;
      let chunk: Uint8Array | null;
      try {
        chunk = await this.#channel.read();
      } catch (err) {
        this.#failure =
          err instanceof FerryError
            ? err
            : new TransportError(`Cannot read from ${this.#channel.description} at offset ${this.#consumed + this.#buffered}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
        throw this.#failure;
      }
      if (chunk === null) {
        this.#eof = true;
        return false;
      }
      this.#append(chunk);
    }
    return true;
  }

  /** Keep `chunk` after everything buffered. */
  #append(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    if (this.#pos >= this.#cur.byteLength && this.#head >= this.#queue.length) {
      this.#setCurrent(chunk);
    } else {
      this.#queue.push(chunk);
    }
    this.#buffered += chunk.byteLength;
  }

  /** True when the channel ended exactly here (nothing buffered, nothing more to come). */
  async atEnd(): Promise<boolean> {
    if (this.#buffered > 0) return false;
    return !(await this.fill(1));
  }

  u8(): number {
    this.#need(1);
    if (this.#pos >= this.#cur.byteLength) this.#advance();
    this.#buffered--;
    this.#consumed++;
    return this.#cur[this.#pos++]!;
  }

  be16(): number {
    if (this.#cur.byteLength - this.#pos >= 2) {
      const v = this.#curView.getUint16(this.#pos);
      this.#take(2);
      return v;
    }
    this.#gather(2);
    return this.#scratchView.getUint16(0);
  }

  be32(): number {
    if (this.#cur.byteLength - this.#pos >= 4) {
      const v = this.#curView.getUint32(this.#pos);
      this.#take(4);
      return v;
    }
    this.#gather(4);
    return this.#scratchView.getUint32(0);
  }

  be64(): bigint {
    if (this.#cur.byteLength - this.#pos >= 8) {
      const v = this.#curView.getBigUint64(this.#pos);
      this.#take(8);
      return v;
    }
    this.#gather(8);
    return this.#scratchView.getBigUint64(0);
  }

  /** The next `n` bytes, as a copy the caller owns. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    this.copyTo(out, 0, n);
    return out;
  }

  /** Copy the next `n` bytes straight into `target` at `targetOffset` (guest RAM: no intermediate copy). */
  copyTo(target: Uint8Array, targetOffset: number, n: number): void {
    if (!Number.isInteger(n) || n < 0 || !Number.isInteger(targetOffset) || targetOffset < 0 || targetOffset + n > target.byteLength) {
      // The target offset usually comes from the stream (a RAM page address): a bad one is the stream's fault.
      throw new StreamFormatError(
        `Cannot copy ${n} stream bytes at offset ${this.#consumed} to offset ${targetOffset} of a ${target.byteLength}-byte target`,
        this.#consumed,
      );
    }
    this.#need(n);
    let done = 0;
    while (done < n) {
      if (this.#pos >= this.#cur.byteLength) this.#advance();
      const take = Math.min(n - done, this.#cur.byteLength - this.#pos);
      // A view made with the constructor: about half the cost of subarray() per page.
      const cur = this.#cur;
      target.set(new Uint8Array(cur.buffer, cur.byteOffset + this.#pos, take), targetOffset + done);
      this.#pos += take;
      done += take;
    }
    this.#buffered -= n;
    this.#consumed += n;
  }

  /**
   * The bytes that follow without a chunk boundary, for a caller that decodes a run of
   * small records in place: read them through `view` from `start` up to `end`, then
   * consume what was decoded with skipContiguous(). Nothing is copied. Valid until the
   * next read of any kind.
   */
  contiguous(): { readonly view: DataView; readonly start: number; readonly end: number } {
    if (this.#pos >= this.#cur.byteLength && this.#head < this.#queue.length) this.#advance();
    return { view: this.#curView, start: this.#pos, end: this.#cur.byteLength };
  }

  /** Consume `n` bytes that contiguous() showed. */
  skipContiguous(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > this.#cur.byteLength - this.#pos) {
      throw new StreamTruncatedError(`Cannot skip ${n} contiguous bytes at offset ${this.#consumed}: only ${this.#cur.byteLength - this.#pos} follow in this chunk`, this.#consumed);
    }
    this.#take(n);
  }

  /** Skip `n` bytes (which must be buffered). */
  skip(n: number): void {
    this.#need(n);
    let left = n;
    while (left > 0) {
      if (this.#pos >= this.#cur.byteLength) this.#advance();
      const take = Math.min(left, this.#cur.byteLength - this.#pos);
      this.#pos += take;
      left -= take;
    }
    this.#buffered -= n;
    this.#consumed += n;
  }

  /** The byte `at` bytes ahead, without consuming it (must be buffered). */
  peekU8(at = 0): number {
    this.#need(at + 1);
    let index = this.#pos + at;
    if (index < this.#cur.byteLength) return this.#cur[index]!;
    index -= this.#cur.byteLength;
    for (let q = this.#head; q < this.#queue.length; q++) {
      const chunk = this.#queue[q]!;
      if (index < chunk.byteLength) return chunk[index]!;
      index -= chunk.byteLength;
    }
    throw new StreamTruncatedError(`Cannot peek ${at + 1} bytes ahead at offset ${this.#consumed}`, this.#consumed);
  }

  /**
   * The channel's scattered reads, when it has them and nothing received waits in the
   * channel: the bytes after those buffered here (available()) then come from a scattered
   * read. The caller accounts for what it reads that way with skipScattered() and gives
   * back what it read but cannot use with takeBack(); it calls resume() on them when done.
   */
  scattered(): ScatteredReader | null {
    const io = this.#channel.scattered;
    if (io === undefined || this.#eof || this.#failure !== null || !io.ready()) return null;
    return io;
  }

  /** Count `n` bytes as read that a scattered read put elsewhere (nothing may be buffered). */
  skipScattered(n: number): void {
    if (this.#buffered !== 0) {
      throw new StreamTruncatedError(`Cannot skip ${n} bytes read around the buffer at offset ${this.#consumed}: ${this.#buffered} buffered bytes come first`, this.#consumed);
    }
    this.#consumed += n;
  }

  /** Bytes of the stream that a scattered read took and this reader is to read after what it holds (the caller's copy). */
  takeBack(chunk: Uint8Array): void {
    this.#append(chunk);
  }

  /** Reads are synchronous: the caller awaited ensure() first. A read past that is a truncation, not a crash. */
  #need(n: number): void {
    if (n > this.#buffered) {
      throw new StreamTruncatedError(
        `Cannot read ${n} bytes at offset ${this.#consumed}: only ${this.#buffered} are buffered (ensure() was not awaited)`,
        this.#consumed,
      );
    }
  }

  #take(n: number): void {
    this.#pos += n;
    this.#buffered -= n;
    this.#consumed += n;
  }

  /** Read `n` bytes (≤ 8) that may straddle chunks into #scratch. */
  #gather(n: number): void {
    this.#need(n);
    for (let i = 0; i < n; i++) {
      if (this.#pos >= this.#cur.byteLength) this.#advance();
      this.#scratch[i] = this.#cur[this.#pos++]!;
    }
    this.#buffered -= n;
    this.#consumed += n;
  }

  /** Move to the next queued chunk (the caller checked that one exists). */
  #advance(): void {
    const next = this.#queue[this.#head];
    if (next === undefined) {
      throw new StreamTruncatedError(`Stream reader lost its place at offset ${this.#consumed}`, this.#consumed);
    }
    this.#queue[this.#head] = EMPTY;
    this.#head++;
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
    } else if (this.#head > 1024) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    this.#setCurrent(next);
  }

  #setCurrent(chunk: Uint8Array): void {
    // The chunk we leave is fully read and nothing refers into it (bytes() copies), so a
    // channel that lends pooled buffers may fill it again: the receiver then never pays
    // for fresh memory (Channel.release).
    if (this.#cur !== EMPTY) this.#channel.release?.(this.#cur);
    this.#cur = chunk;
    this.#curView = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    this.#pos = 0;
  }
}

/**
 * Give V8 type feedback for the reader's paths that join a value from two received chunks
 * (#gather, #advance), before it compiles the decoders around them: a warm-up over sockets
 * splits a chunk header only now and then, and compiled code that meets a path it has no
 * feedback for is thrown away there. An idle guest's 9-byte ZERO chunks split at most of
 * a real migration's reads; the decoders were dropped in its first pass, and the stop
 * waited for the destination to catch up (src/vmm/warm-up.ts runs this after each round).
 */
export async function warmUpSplitReads(): Promise<void> {
  const PIECE = 3;
  const bytes = new Uint8Array(128).map((_, i) => i);
  let next = 0;
  const pieces: Channel = {
    description: 'split reads (warm-up)',
    read: async () => (next < bytes.byteLength ? bytes.subarray(next, (next += PIECE)) : null),
    write: async () => {},
    end: async () => {},
    destroy: () => {},
  };
  const r = new StreamReader(pieces);
  await r.ensure(bytes.byteLength);
  // Every width, starting at each offset within a piece: split, or at a piece's start.
  for (let phase = 0; phase < PIECE; phase++) {
    for (const width of [1, 2, 4, 8]) {
      while (r.offset % PIECE !== phase) r.u8();
      if (width === 1) r.u8();
      else if (width === 2) r.be16();
      else if (width === 4) r.be32();
      else r.be64();
    }
  }
}
