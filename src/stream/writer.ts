// The buffered writer under every outgoing stream (QEMU's QEMUFile, write side): big-endian
// integers and byte runs go into one buffer that is handed to the channel when full, and
// the first error is remembered so callers check once per section instead of per write.

import { StreamFormatError, TransportError } from '../errors.js';
import type { Channel, VectoredWriter } from '../transport/channel.js';
import { keepShape } from '../hot-shapes.js';

const DEFAULT_BUFFER_SIZE = 1024 * 1024;
const MIN_BUFFER_SIZE = 64;
/** Spare buffers kept for reuse: enough to cover what a channel queues before it pushes back. */
const MAX_FREE_BUFFERS = 16;
/** Below this a reference costs more than the copy it saves (an iovec entry, and a split of the buffer). */
const MIN_REFERENCE_BYTES = 1024;

/**
 * A fresh buffer for the next batch. Handed-over buffers belong to the channel until it
 * says it is done with them; only then are they reused. In Node, Buffer.allocUnsafeSlow skips zero-filling (we overwrite every
 * byte we send); elsewhere (browsers) a plain Uint8Array is used. Feature-detected, not
 * imported, so this module stays free of `node:` imports.
 */
type Allocator = (size: number) => Uint8Array;
const nodeBuffer = (globalThis as { Buffer?: { allocUnsafeSlow?: (n: number) => Uint8Array } }).Buffer;
const allocate: Allocator =
  typeof nodeBuffer?.allocUnsafeSlow === 'function'
    ? (size) => {
        const b = nodeBuffer.allocUnsafeSlow!(size);
        return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
      }
    : (size) => new Uint8Array(size);

export class StreamWriter {
  readonly #channel: Channel;
  readonly #bufferSize: number;
  #buf: Uint8Array;
  #view: DataView;
  #pos = 0;
  /** Channel writes whose promise has not settled, and who waits for them all to settle. */
  #unsettled = 0;
  #drained: Array<() => void> = [];
  #handedOver = 0;
  /** Buffers the channel has given back (see Channel.write's `done`), to fill again. */
  readonly #free: Uint8Array[] = [];
  #error: Error | null = null;
  #closed = false;
  /** The channel's vectored writes, when it has them: see byReference(). */
  readonly #vectored: VectoredWriter | undefined;
  #refCount = 0;
  #refBytes = 0;
  #referenced = 0;
  readonly #refAt: Uint32Array;
  readonly #refAddress: Float64Array;
  readonly #refLength: Uint32Array;

  constructor(channel: Channel, options?: { bufferSize?: number }) {
    keepShape(this);
    const size = options?.bufferSize ?? DEFAULT_BUFFER_SIZE;
    if (!Number.isInteger(size) || size < MIN_BUFFER_SIZE) {
      throw new TransportError(`Cannot create a stream writer for ${channel.description}: buffer size ${size} is below ${MIN_BUFFER_SIZE} bytes`);
    }
    this.#channel = channel;
    this.#bufferSize = size;
    this.#buf = allocate(size);
    this.#view = new DataView(this.#buf.buffer, this.#buf.byteOffset, size);
    this.#vectored = channel.vectored;
    const refs = this.#vectored?.maxRefs ?? 0;
    this.#refAt = new Uint32Array(refs);
    this.#refAddress = new Float64Array(refs);
    this.#refLength = new Uint32Array(refs);
  }

  /** All bytes accepted so far, buffered or sent (QEMU's qemu_file_transferred). */
  get bytesWritten(): number {
    return this.#handedOver + this.#pos + this.#refBytes;
  }

  /** True when the caller should `await flush()`: a full buffer went out and the channel has not taken it yet. */
  get needsFlush(): boolean {
    return this.#unsettled > 0 || this.#pos >= this.#bufferSize || (this.#refCount > 0 && this.#refCount >= this.#refAt.length);
  }

  /** Bytes byReference() handed to the channel by address rather than copying them. */
  get bytesByReference(): number {
    return this.#referenced;
  }

  /** Whether byReference() hands memory to the channel by address (else it copies). */
  get writesByReference(): boolean {
    return this.#vectored !== undefined;
  }

  /**
   * `n` bytes of `source` from byte `from`, which lives at `address` in this process: on a
   * channel with vectored writes the bytes are not copied but referenced, and the kernel
   * reads them from there when the batch goes out (QEMU's qemu_put_buffer_async) — so they
   * must stay mapped until flush() and what is sent is what they hold then. Elsewhere (or
   * with `address` undefined) the same as bytesFrom(). Guest pages of a running guest go
   * this way: one written after it was queued is in the dirty log and goes again.
   */
  byReference(source: Uint8Array, from: number, n: number, address: number | undefined): void {
    if (this.#vectored === undefined || address === undefined || n < MIN_REFERENCE_BYTES) {
      this.bytesFrom(source, from, n);
      return;
    }
    if (!Number.isInteger(from) || !Number.isInteger(n) || from < 0 || from + n > source.byteLength) {
      throw new StreamFormatError(`Cannot write ${n} bytes from offset ${from} of a ${source.byteLength}-byte source`, this.bytesWritten);
    }
    if (this.#refCount === this.#refAt.length) this.#handOver();
    const i = this.#refCount++;
    this.#refAt[i] = this.#pos;
    this.#refAddress[i] = address + from;
    this.#refLength[i] = n;
    this.#refBytes += n;
    this.#referenced += n;
  }

  /** The first error (a channel write that failed, or one set by setError); later writes are dropped. */
  get error(): Error | null {
    return this.#error;
  }

  /** Record an error found by a caller (QEMU's qemu_file_set_error); the first one wins. */
  setError(error: Error): void {
    this.#error ??= error;
  }

  u8(v: number): void {
    if (this.#pos + 1 > this.#bufferSize) this.#handOver();
    this.#buf[this.#pos++] = v;
  }

  be16(v: number): void {
    if (this.#pos + 2 > this.#bufferSize) this.#handOver();
    this.#view.setUint16(this.#pos, v);
    this.#pos += 2;
  }

  be32(v: number): void {
    if (this.#pos + 4 > this.#bufferSize) this.#handOver();
    this.#view.setUint32(this.#pos, v);
    this.#pos += 4;
  }

  be64(v: bigint | number): void {
    if (this.#pos + 8 > this.#bufferSize) this.#handOver();
    if (typeof v === 'number') {
      // Numbers stay off the bigint path (RAM chunk headers are written per page).
      if (!Number.isSafeInteger(v) || v < 0) {
        throw new StreamFormatError(`Cannot write be64 ${v}: not a non-negative safe integer (pass a bigint)`, this.bytesWritten);
      }
      this.#view.setUint32(this.#pos, Math.floor(v / 0x100000000));
      this.#view.setUint32(this.#pos + 4, v >>> 0);
    } else {
      this.#view.setBigUint64(this.#pos, BigInt.asUintN(64, v));
    }
    this.#pos += 8;
  }

  /** Copies `data` into the buffer (the caller may change it afterwards). */
  bytes(data: Uint8Array): void {
    let from = 0;
    const n = data.byteLength;
    while (from < n) {
      if (this.#pos === this.#bufferSize) this.#handOver();
      const take = Math.min(n - from, this.#bufferSize - this.#pos);
      this.#buf.set(from === 0 && take === n ? data : data.subarray(from, from + take), this.#pos);
      this.#pos += take;
      from += take;
    }
  }

  /**
   * Copies `n` bytes of `source` from byte `from` into the buffer: what bytes() does with
   * a subarray, without making one per call. A guest page is copied this way on every
   * send; a view made with the constructor costs about half what subarray() does (V8's
   * species lookup), measured per 4 KiB page in Node 20.
   */
  bytesFrom(source: Uint8Array, from: number, n: number): void {
    if (!Number.isInteger(from) || !Number.isInteger(n) || from < 0 || n < 0 || from + n > source.byteLength) {
      throw new StreamFormatError(`Cannot write ${n} bytes from offset ${from} of a ${source.byteLength}-byte source`, this.bytesWritten);
    }
    if (this.#bufferSize - this.#pos >= n) {
      this.#buf.set(new Uint8Array(source.buffer, source.byteOffset + from, n), this.#pos);
      this.#pos += n;
      return;
    }
    this.bytes(source.subarray(from, from + n));
  }

  /** True while buffers handed to the channel are not taken yet (it pushed back, or has not said). */
  get backlogged(): boolean {
    return this.#unsettled > 0;
  }

  /**
   * Wait until the channel has taken every buffer handed over so far, keeping the one
   * being filled: a sender that produces faster than the channel takes waits here
   * without cutting its writes short. Rejects with the first error.
   */
  async settled(): Promise<void> {
    if (this.#unsettled > 0) {
      await new Promise<void>((resolve) => this.#drained.push(resolve));
    }
    if (this.#error) throw this.#error;
  }

  /** Hand buffered bytes to the channel and wait until it can take more; rejects with the first error. */
  async flush(): Promise<void> {
    if (this.#pos > 0 || this.#refCount > 0) this.#handOver();
    await this.settled();
  }

  /**
   * Flush, then wait until the channel says the OS has every byte (where it can tell; a
   * channel without drain() is taken at flush()'s word). Rejects with the first error.
   */
  async drain(): Promise<void> {
    await this.flush();
    if (!this.#channel.drain) return;
    try {
      await this.#channel.drain();
    } catch (err) {
      this.setError(asTransportError(err, `Cannot write to ${this.#channel.description}`));
      throw this.#error;
    }
  }

  /** Flush, then end the channel's sending side. */
  async close(): Promise<void> {
    await this.flush();
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#channel.end();
    } catch (err) {
      this.setError(asTransportError(err, `Cannot close ${this.#channel.description}`));
      throw this.#error;
    }
  }

  /** Give the current buffer (and the references into it) to the channel and continue in a fresh one. */
  #handOver(): void {
    const filled = this.#pos;
    const refs = this.#refCount;
    if (filled === 0 && refs === 0) return;
    const out = filled === this.#bufferSize || refs > 0 ? this.#buf : this.#buf.subarray(0, filled);
    this.#handedOver += filled + this.#refBytes;
    this.#refCount = 0;
    this.#refBytes = 0;
    const full = this.#buf;
    // Reuse a buffer the channel is done with: fresh memory costs a page fault per 4 KiB
    // on first touch (20-40 µs each on these machines), far more than the copy into it.
    this.#buf = this.#free.pop() ?? allocate(this.#bufferSize);
    this.#view = new DataView(this.#buf.buffer, this.#buf.byteOffset, this.#bufferSize);
    this.#pos = 0;
    if (this.#error) return; // QEMUFile: once failed, writes are dropped.
    if (this.#closed) {
      this.setError(new TransportError(`Cannot write to ${this.#channel.description}: the stream was closed`));
      return;
    }
    let write: Promise<void> | undefined;
    const giveBack = (): void => {
      if (this.#free.length < MAX_FREE_BUFFERS) this.#free.push(full);
    };
    try {
      write =
        refs > 0
          ? this.#vectored!.write({ buffer: out, length: filled, count: refs, at: this.#refAt, address: this.#refAddress, bytes: this.#refLength }, giveBack)
          : this.#channel.write(out, giveBack);
    } catch (err) {
      this.setError(asTransportError(err, `Cannot write to ${this.#channel.description}`));
      return;
    }
    // The kernel took the whole batch already: nothing to wait for.
    if (write === undefined) return;
    this.#unsettled++;
    // The rejection handler is attached at once so a failed write is never unhandled.
    write.then(
      () => this.#settled(),
      (err: unknown) => {
        this.setError(asTransportError(err, `Cannot write to ${this.#channel.description}`));
        this.#settled();
      },
    );
  }

  #settled(): void {
    if (--this.#unsettled > 0) return;
    const waiters = this.#drained;
    this.#drained = [];
    for (const resolve of waiters) resolve();
  }
}

function asTransportError(err: unknown, action: string): Error {
  if (err instanceof TransportError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new TransportError(`${action}: ${message}`, { cause: err });
}
