// In-memory Channels for tests and benchmarks: a connected pair with backpressure, a
// channel that reads from a Uint8Array in chunks, and a sink that collects what is written.

import { TransportError } from '../errors.js';
import type { Channel } from '../transport/channel.js';

const DEFAULT_HIGH_WATER_MARK = 4 * 1024 * 1024;

interface Waiter<T> {
  resolve(value: T): void;
  reject(error: Error): void;
}

/** One direction of a pair: chunks queued by the writer, taken by the reader. */
class Pipe {
  readonly chunks: Uint8Array[] = [];
  head = 0;
  queuedBytes = 0;
  ended = false;
  error: Error | null = null;
  reader: Waiter<Uint8Array | null> | null = null;
  /** Writers waiting for the queue to drain below the high-water mark. */
  drainWaiters: Waiter<void>[] = [];

  constructor(readonly highWaterMark: number) {}

  push(data: Uint8Array): void {
    if (this.reader) {
      const reader = this.reader;
      this.reader = null;
      reader.resolve(data);
      return;
    }
    this.chunks.push(data);
    this.queuedBytes += data.byteLength;
  }

  take(): Uint8Array | undefined {
    if (this.head >= this.chunks.length) return undefined;
    const chunk = this.chunks[this.head]!;
    this.chunks[this.head] = EMPTY;
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.chunks.length) {
      this.chunks.splice(0, this.head);
      this.head = 0;
    }
    this.queuedBytes -= chunk.byteLength;
    if (this.queuedBytes < this.highWaterMark && this.drainWaiters.length > 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w.resolve();
    }
    return chunk;
  }

  fail(error: Error): void {
    if (this.error) return;
    this.error = error;
    this.chunks.length = 0;
    this.head = 0;
    this.queuedBytes = 0;
    if (this.reader) {
      this.reader.reject(error);
      this.reader = null;
    }
    for (const w of this.drainWaiters) w.reject(error);
    this.drainWaiters = [];
  }
}

const EMPTY = new Uint8Array(0);

class PipeEndpoint implements Channel {
  /** Each end of a pair reads what the other writes. */
  readonly duplex = true;
  #destroyed: Error | null = null;

  constructor(
    readonly description: string,
    private readonly incoming: Pipe,
    private readonly outgoing: Pipe,
  ) {}

  read(): Promise<Uint8Array | null> {
    if (this.#destroyed) return Promise.reject(this.#destroyed);
    if (this.incoming.error) return Promise.reject(this.incoming.error);
    const chunk = this.incoming.take();
    if (chunk) return Promise.resolve(chunk);
    if (this.incoming.ended) return Promise.resolve(null);
    if (this.incoming.reader) {
      return Promise.reject(new TransportError(`Cannot read from ${this.description}: a read is already pending`));
    }
    return new Promise((resolve, reject) => {
      this.incoming.reader = { resolve, reject };
    });
  }

  write(data: Uint8Array): Promise<void> {
    if (this.#destroyed) return Promise.reject(this.#destroyed);
    const pipe = this.outgoing;
    if (pipe.error) return Promise.reject(pipe.error);
    if (pipe.ended) return Promise.reject(new TransportError(`Cannot write to ${this.description}: the sending side was ended`));
    if (data.byteLength === 0) return Promise.resolve();
    pipe.push(data);
    if (pipe.queuedBytes < pipe.highWaterMark) return Promise.resolve();
    return new Promise((resolve, reject) => {
      pipe.drainWaiters.push({ resolve, reject });
    });
  }

  end(): Promise<void> {
    if (this.#destroyed) return Promise.reject(this.#destroyed);
    const pipe = this.outgoing;
    if (pipe.error) return Promise.reject(pipe.error);
    if (!pipe.ended) {
      pipe.ended = true;
      if (pipe.reader && pipe.head >= pipe.chunks.length) {
        const reader = pipe.reader;
        pipe.reader = null;
        reader.resolve(null);
      }
    }
    return Promise.resolve();
  }

  destroy(error?: Error): void {
    if (this.#destroyed) return;
    const reason = error ?? new TransportError(`${this.description} was closed`);
    this.#destroyed = reason;
    // The peer sees a broken connection, as a socket peer would.
    const broken = new TransportError(`${this.description}: the peer closed the connection`, { cause: reason });
    this.outgoing.fail(broken);
    this.incoming.fail(reason);
  }
}

/**
 * Two connected channels: what one writes, the other reads, in the same chunks.
 * write() resolves at once below `highWaterMark` queued bytes, after the reader drained
 * the queue otherwise — the backpressure a socket gives.
 */
export function createMemoryChannelPair(options?: { highWaterMark?: number; description?: string }): [Channel, Channel] {
  const hwm = options?.highWaterMark ?? DEFAULT_HIGH_WATER_MARK;
  const name = options?.description ?? 'memory:';
  const aToB = new Pipe(hwm);
  const bToA = new Pipe(hwm);
  return [new PipeEndpoint(`${name}a`, bToA, aToB), new PipeEndpoint(`${name}b`, aToB, bToA)];
}

/**
 * A channel that reads `data` in chunks of `chunkSize` bytes (the last one shorter), then
 * ends. Chunks are views of `data`, not copies: the reader must not change them (Ferry's
 * StreamReader never does). Writing to it fails.
 */
export function channelFromBytes(data: Uint8Array, options?: { chunkSize?: number; description?: string }): Channel {
  const chunkSize = options?.chunkSize ?? 64 * 1024;
  if (!Number.isInteger(chunkSize) || chunkSize <= 0) {
    throw new TransportError(`Cannot create a memory channel with chunk size ${chunkSize}: expected a positive integer`);
  }
  const description = options?.description ?? 'memory:bytes';
  let pos = 0;
  let destroyed: Error | null = null;
  return {
    description,
    read(): Promise<Uint8Array | null> {
      if (destroyed) return Promise.reject(destroyed);
      if (pos >= data.byteLength) return Promise.resolve(null);
      const end = Math.min(pos + chunkSize, data.byteLength);
      const chunk = data.subarray(pos, end);
      pos = end;
      return Promise.resolve(chunk);
    },
    write(): Promise<void> {
      return Promise.reject(new TransportError(`Cannot write to ${description}: it is read-only`));
    },
    end(): Promise<void> {
      return Promise.resolve();
    },
    destroy(error?: Error): void {
      destroyed ??= error ?? new TransportError(`${description} was closed`);
    },
  };
}

/** A write-only channel that keeps every chunk it is given; `bytes()` joins them. */
export interface CollectingChannel extends Channel {
  readonly chunks: readonly Uint8Array[];
  readonly ended: boolean;
  /** Total bytes received. */
  readonly length: number;
  bytes(): Uint8Array;
}

export function createCollectingChannel(options?: { description?: string; failAfterBytes?: number }): CollectingChannel {
  const description = options?.description ?? 'memory:collect';
  const chunks: Uint8Array[] = [];
  let length = 0;
  let ended = false;
  let destroyed: Error | null = null;
  return {
    description,
    chunks,
    get ended() {
      return ended;
    },
    get length() {
      return length;
    },
    bytes(): Uint8Array {
      const out = new Uint8Array(length);
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.byteLength;
      }
      return out;
    },
    read(): Promise<Uint8Array | null> {
      return Promise.reject(new TransportError(`Cannot read from ${description}: it is write-only`));
    },
    write(data: Uint8Array): Promise<void> {
      if (destroyed) return Promise.reject(destroyed);
      if (ended) return Promise.reject(new TransportError(`Cannot write to ${description}: it was ended`));
      if (options?.failAfterBytes !== undefined && length + data.byteLength > options.failAfterBytes) {
        return Promise.reject(new TransportError(`Cannot write to ${description}: the peer is gone (after ${length} bytes)`));
      }
      chunks.push(data);
      length += data.byteLength;
      return Promise.resolve();
    },
    end(): Promise<void> {
      if (destroyed) return Promise.reject(destroyed);
      ended = true;
      return Promise.resolve();
    },
    destroy(error?: Error): void {
      destroyed ??= error ?? new TransportError(`${description} was closed`);
    },
  };
}
