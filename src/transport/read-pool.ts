// Receive buffers that come back: the socket reads into a pooled buffer (net's `onread`),
// the consumer gets a view of the bytes read, and Channel.release() returns the buffer.
// Reusing warm memory costs a receiver about a third of the CPU of fresh buffers per read.

import net from 'node:net';
import { keepShape } from '../hot-shapes.js';

/** Size of one receive buffer: one read syscall takes up to this much. */
export const READ_BUFFER_SIZE = 1024 * 1024;
/** Released buffers kept for reuse; beyond this they are left to the garbage collector. */
const MAX_POOLED = 32;

export class ReadBufferPool {
  readonly bufferSize: number;
  readonly #free: Uint8Array[] = [];
  // Buffers handed out and not yet released: a release of anything else (or twice) is
  // ignored, so a confused caller can never make two live chunks share memory.
  readonly #lent = new WeakSet<ArrayBufferLike>();

  constructor(bufferSize = READ_BUFFER_SIZE) {
    keepShape(this);
    this.bufferSize = bufferSize;
  }

  take(): Uint8Array {
    const buffer = this.#free.pop() ?? new Uint8Array(this.bufferSize);
    this.#lent.add(buffer.buffer);
    return buffer;
  }

  /** Give back a chunk (any view into a taken buffer); it must not be used afterwards. */
  release(chunk: Uint8Array): void {
    const backing = chunk.buffer;
    if (!this.#lent.has(backing)) return;
    this.#lent.delete(backing);
    if (this.#free.length < MAX_POOLED) this.#free.push(new Uint8Array(backing, 0, this.bufferSize));
  }
}

/**
 * The `onread` option for a net.Socket that reads into a pool, plus the place the chunks
 * go. Chunks that arrive before a consumer is attached are held for it.
 */
export class PooledReads {
  readonly pool: ReadBufferPool;
  readonly onread: { buffer: () => Uint8Array; callback: (bytesRead: number, buffer: Uint8Array) => boolean };
  #sink: ((chunk: Uint8Array) => boolean) | null = null;
  #early: Uint8Array[] = [];

  constructor(pool = new ReadBufferPool()) {
    keepShape(this);
    this.pool = pool;
    this.onread = {
      buffer: () => this.pool.take(),
      callback: (bytesRead, buffer) => {
        const chunk = buffer.subarray(0, bytesRead);
        if (this.#sink) return this.#sink(chunk);
        this.#early.push(chunk);
        return true;
      },
    };
  }

  /** Start delivering to `sink`; it returns false to ask the socket to stop reading. */
  attach(sink: (chunk: Uint8Array) => boolean): void {
    this.#sink = sink;
    const early = this.#early;
    this.#early = [];
    for (const chunk of early) sink(chunk);
  }
}

/**
 * Rebuild a socket that Node created for us (an accepted connection, a child's stdout)
 * around the same libuv handle, with a pooled `onread` — Node offers `onread` only to
 * sockets the caller constructs. Must run before the original has delivered any data.
 * The original gives up the handle and is destroyed when the new socket closes, so its
 * owner's bookkeeping (a server's connection count, a child's 'close') still completes.
 * Where Node's internals are not as expected, the original is returned unchanged.
 */
export function adoptWithPooledReads(
  original: net.Socket,
  options: { writable: boolean; writableHighWaterMark?: number },
  pooledReads = new PooledReads(),
): { socket: net.Socket; pooledReads?: PooledReads } {
  const internals = original as unknown as { _handle?: object | null };
  const handle = internals._handle;
  if (!handle || typeof (handle as { readStart?: unknown }).readStart !== 'function' || original.readableLength > 0) {
    return { socket: original };
  }
  const socket = new net.Socket({
    handle,
    onread: pooledReads.onread,
    allowHalfOpen: false,
    readable: true,
    writable: options.writable,
    ...(options.writableHighWaterMark === undefined ? {} : { writableHighWaterMark: options.writableHighWaterMark }),
  } as net.SocketConstructorOpts);
  internals._handle = null;
  socket.once('close', () => original.destroy());
  original.on('error', () => {});
  return { socket, pooledReads };
}
