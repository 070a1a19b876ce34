// A Channel over Node streams — a socket (tcp, unix, fd) or a child's pipes (exec) — built
// for bulk throughput: writes hand the caller's buffer to the kernel without a copy, reads
// pass on the chunks Node allocates, and both sides apply backpressure.

import type { Readable, Writable } from 'node:stream';
import { debuglog } from 'node:util';
import { TransportError } from '../errors.js';
import type { Channel, ScatteredReader, VectoredBatch, VectoredWriter } from './channel.js';
import { DIRECT_MAX_REFS, DirectWrites } from './direct-writes.js';
import { SplicedWrites } from './spliced-writes.js';
import { errorCode, syscallError, toTransportError } from './errors.js';
import type { PooledReads, ReadBufferPool } from './read-pool.js';
import { keepShape } from '../hot-shapes.js';
import { EAGAIN, EINTR, IOV_MAX, addressOf, readv, socketSendQueue, waitReadable } from '../sys/libc.js';

const debug = debuglog('ferry');

/** Bytes the channel queues before write() waits for the OS to drain them. */
export const DEFAULT_WRITE_HIGH_WATER_MARK = 8 * 1024 * 1024;
/** Bytes received but not yet read() before the channel stops reading from the OS. */
export const DEFAULT_READ_HIGH_WATER_MARK = 8 * 1024 * 1024;

export interface StreamChannelOptions {
  readonly description: string;
  /** Where bytes come from; null for a send-only channel (read() then reports end of stream). */
  readonly readable: Readable | null;
  /** Where bytes go; null for a receive-only channel (write() then rejects). */
  readonly writable: Writable | null;
  /**
   * Received bytes allowed to wait for read() before the readable is paused. (The write
   * side's mark is the writable's own: transports create it with `writableHighWaterMark`.)
   */
  readonly readHighWaterMark?: number;
  /**
   * Set when the readable is a net.Socket created with this object's `onread`: chunks
   * then come from a pool that release() refills, and 'data' events are not used.
   */
  readonly pooledReads?: PooledReads;
  /**
   * The writable's descriptor (a socket's), when vectored writes may go to it directly;
   * undefined once it is closed. Without it the channel has no `vectored`.
   */
  readonly directFd?: () => number | undefined;
  /**
   * The descriptor under the writable when it is not written directly (a TLS session on a
   * socket): its send queue still counts in unsent().
   */
  readonly sendQueueFd?: () => number | undefined;
  /** The channel is a TLS session (Channel.tls). */
  readonly tls?: boolean;
  /** Set the kernel's receive buffer of the descriptor to `bytes` (Channel.holdReceived); absent where that hides nothing from the sender. */
  readonly receiveBuffer?: (bytes: number) => void;
  /**
   * Vectored writes to `directFd` go through a pipe by reference (spliced-writes.ts) rather
   * than writev: for unix-domain sockets, where the peer then copies guest pages once.
   */
  readonly spliceWrites?: boolean;
}

/** A write or vectored write that waits for the ones before it (see #pump), or a barrier for end(). */
type QueuedWrite =
  | { kind: 'write'; data: Uint8Array; done: (() => void) | undefined; resolve(): void; reject(error: Error): void }
  | { kind: 'vectored'; batch: VectoredBatch; done: (() => void) | undefined; resolve(): void; reject(error: Error): void }
  | { kind: 'barrier'; resolve(): void; reject(error: Error): void };

interface Waiter<T> {
  resolve(value: T): void;
  reject(error: Error): void;
}

export class StreamChannel implements Channel {
  readonly description: string;
  readonly #readable: Readable | null;
  readonly #writable: Writable | null;
  #readHighWaterMark: number;
  readonly #pool: ReadBufferPool | null;

  // Received chunks not yet read(): an array with a moving head, so taking one is O(1).
  #chunks: Uint8Array[] = [];
  #head = 0;
  #queuedBytes = 0;
  #paused = false;
  #readEnded = false;
  #readWaiter: Waiter<Uint8Array | null> | null = null;

  #drainWaiters: Waiter<void>[] = [];
  readonly vectored?: VectoredWriter;
  readonly scattered?: ScatteredReader;
  /** Reading was stopped for scattered reads (see ScatteredReader). */
  #scatterPaused = false;
  #scatteredSinceTurn = 0;
  readonly duplex: boolean;
  readonly tls: boolean;
  readonly holdReceived?: (bytes: number) => void;
  readonly #sendQueueFd: (() => number | undefined) | undefined;
  readonly #direct: DirectWrites | SplicedWrites | null = null;
  readonly #directFd: (() => number | undefined) | undefined;
  /** A vectored write the socket has not taken all of yet; everything after it waits. */
  #directBusy: Promise<void> | null = null;
  /** Writes waiting, in order, for a vectored write or for Node's own queue to empty. */
  #queue: QueuedWrite[] = [];
  /** Writes handed to the writable whose callback has not run yet. */
  #nodeWrites = 0;
  #endPromise: Promise<void> | null = null;
  #writeClosed = false;

  /** The first failure; every later call reports it. */
  #error: Error | null = null;
  #destroyed = false;

  constructor(options: StreamChannelOptions) {
    keepShape(this);
    this.description = options.description;
    this.#readable = options.readable;
    this.#writable = options.writable;
    this.#readHighWaterMark = options.readHighWaterMark ?? DEFAULT_READ_HIGH_WATER_MARK;
    this.#pool = options.pooledReads?.pool ?? null;
    this.duplex = options.readable !== null && (options.readable as unknown) === options.writable;

    const readable = this.#readable;
    const writable = this.#writable;
    if (readable) {
      if (options.pooledReads) {
        options.pooledReads.attach((chunk) => {
          this.#onData(chunk);
          return true;
        });
      } else {
        readable.on('data', (chunk: Uint8Array) => this.#onData(chunk));
      }
      readable.on('end', () => this.#onReadEnd());
      readable.on('error', (err: Error) => this.#onError(err));
      readable.on('close', () => this.#onReadClose());
    } else {
      this.#readEnded = true;
    }
    if (writable) {
      if (writable !== (readable as unknown)) writable.on('error', (err: Error) => this.#onError(err));
      writable.on('drain', () => this.#onDrain());
      writable.on('close', () => this.#onWriteClose());
    } else {
      this.#writeClosed = true;
    }
    this.#directFd = options.directFd;
    this.#sendQueueFd = options.sendQueueFd ?? options.directFd;
    this.tls = options.tls === true;
    const receiveBuffer = options.receiveBuffer;
    if (receiveBuffer) {
      this.holdReceived = (bytes: number): void => {
        receiveBuffer(bytes);
        this.#readHighWaterMark = Math.min(this.#readHighWaterMark, bytes);
      };
    }
    if (writable && options.directFd) {
      const spliced = options.spliceWrites ? SplicedWrites.open(this.description, options.directFd) : null;
      // A process that cannot have a pipe writes with writev, as over tcp.
      if (spliced instanceof TransportError) debug('%s: no pipe for spliced writes (%s): writing with writev', this.description, spliced.message);
      this.#direct = spliced instanceof SplicedWrites ? spliced : new DirectWrites(this.description, options.directFd);
      this.vectored = new DirectVectoredWriter(this);
    }
    // Scattered reads go to the socket's descriptor around the readable; only a readable
    // that stops reading the moment it is paused (a socket with `onread`) can allow them.
    if (this.duplex && options.pooledReads && options.directFd) this.scattered = new SocketScatteredReader(this);
  }

  /** ScatteredReader.ready, for this channel's `scattered`. */
  scatterReady(): boolean {
    return this.#head === this.#chunks.length && this.#error === null && !this.#readEnded && !this.#destroyed && this.#directFd?.() !== undefined;
  }

  /** ScatteredReader.read, for this channel's `scattered`. */
  async scatterRead(iov: Uint8Array, count: number): Promise<number> {
    if (!this.#scatterPaused) {
      if (!this.scatterReady()) {
        throw this.#error ?? new TransportError(`Cannot read from ${this.description} around its buffer: received bytes are waiting to be read`);
      }
      this.#scatterPaused = true;
      this.#readable!.pause();
    }
    // While bytes keep coming, readv never has to wait, and nothing else on this thread
    // (QMP, timers) would run: every so often the wait goes through the event loop anyway.
    if (this.#scatteredSinceTurn >= SCATTER_BYTES_PER_TURN) {
      this.#scatteredSinceTurn = 0;
      const fd = this.#directFd!();
      if (fd !== undefined) await waitReadable(fd, SCATTER_WAIT_SLICE_MS);
    }
    for (;;) {
      if (this.#error) throw this.#error;
      const fd = this.#directFd!();
      if (fd === undefined || this.#destroyed) throw new TransportError(`Cannot read from ${this.description}: the socket was closed`);
      const n = readv(fd, iov, count);
      if (n === 0) {
        this.#readEnded = true;
        return 0;
      }
      if (n > 0) {
        this.#scatteredSinceTurn += n;
        return n;
      }
      if (n === -EINTR) continue;
      if (n !== -EAGAIN) {
        const error = syscallError('readv', n, this.description, 'reading from');
        this.#fail(error);
        throw error;
      }
      this.#scatteredSinceTurn = 0;
      await waitReadable(fd, SCATTER_WAIT_SLICE_MS);
    }
  }

  /** ScatteredReader.resume, for this channel's `scattered`. */
  scatterResume(): void {
    if (!this.#scatterPaused) return;
    this.#scatterPaused = false;
    if (!this.#paused && !this.#destroyed && !this.#readEnded) this.#readable?.resume();
  }

  read(): Promise<Uint8Array | null> {
    if (this.#head < this.#chunks.length) return Promise.resolve(this.#take());
    if (this.#error) return Promise.reject(this.#error);
    if (this.#readEnded) return Promise.resolve(null);
    if (this.#readWaiter) {
      return Promise.reject(new TransportError(`Cannot read from ${this.description}: another read() is still pending`));
    }
    return new Promise((resolve, reject) => {
      this.#readWaiter = { resolve, reject };
    });
  }

  write(data: Uint8Array, done?: () => void): Promise<void> {
    const refused = this.#refuseWrite();
    if (refused) return Promise.reject(refused);
    if (data.byteLength === 0) {
      done?.();
      return Promise.resolve();
    }
    if (this.#directBusy || this.#queue.length > 0) return this.#enqueue({ kind: 'write', data, done });
    return this.#writeNow(data, done);
  }

  /** Why a write cannot be taken now, or null. */
  #refuseWrite(): Error | null {
    if (this.#error) return this.#error;
    if (this.#endPromise || this.#writeClosed || !this.#writable) {
      return new TransportError(`Cannot write to ${this.description}: its sending side is closed`);
    }
    if (this.#writable.writableEnded) {
      // Node ends the sending side itself when the peer ends its own (allowHalfOpen off).
      return new TransportError(`Cannot write to ${this.description}: the peer closed the connection`);
    }
    return null;
  }

  /** VectoredWriter.write, for this channel's `vectored` (DirectVectoredWriter). */
  writeVectored(batch: VectoredBatch, done?: () => void): Promise<void> | undefined {
    const refused = this.#refuseWrite();
    if (refused) return Promise.reject(refused);
    // Straight to the socket only when nothing written before is still on its way.
    if (this.#directBusy || this.#queue.length > 0 || this.#writable!.writableLength > 0) {
      const copy: VectoredBatch = {
        buffer: batch.buffer, length: batch.length, count: batch.count,
        at: batch.at.slice(0, batch.count), address: batch.address.slice(0, batch.count), bytes: batch.bytes.slice(0, batch.count),
      };
      return this.#enqueue({ kind: 'vectored', batch: copy, done });
    }
    return this.#vectoredNow(batch, done);
  }

  /** The batch to the socket now: undefined when all of it went (see VectoredWriter.write). */
  #vectoredNow(batch: VectoredBatch, done: (() => void) | undefined): Promise<void> | undefined {
    let rest: Promise<void> | null;
    try {
      rest = this.#direct!.write(batch, () => this.#error);
    } catch (err) {
      const error = toTransportError(err, this.description, 'writing to');
      this.#fail(error);
      return Promise.reject(error);
    }
    if (rest === null) {
      done?.();
      return undefined;
    }
    const busy = rest.then(
      () => done?.(),
      (err: unknown) => this.#fail(toTransportError(err, this.description, 'writing to')),
    );
    this.#directBusy = busy;
    void busy.then(() => {
      this.#directBusy = null;
      this.#pump();
    });
    return rest;
  }

  #enqueue(op: Omit<Extract<QueuedWrite, { kind: 'write' }>, 'resolve' | 'reject'> | Omit<Extract<QueuedWrite, { kind: 'vectored' }>, 'resolve' | 'reject'> | { kind: 'barrier' }): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ ...op, resolve, reject } as QueuedWrite);
    });
  }

  /** Start what waits in #queue, in order, as far as nothing before it is still on its way. */
  #pump(): void {
    while (this.#queue.length > 0) {
      if (this.#error) {
        const queue = this.#queue;
        this.#queue = [];
        for (const op of queue) op.reject(this.#error);
        return;
      }
      if (this.#directBusy) return;
      const op = this.#queue[0]!;
      // Node's queue empties in a write callback, which calls this again.
      if (op.kind !== 'write' && this.#nodeWrites > 0) return;
      this.#queue.shift();
      if (op.kind === 'barrier') {
        op.resolve();
        continue;
      }
      const started = op.kind === 'write' ? this.#writeNow(op.data, op.done) : this.#vectoredNow(op.batch, op.done);
      if (started === undefined) op.resolve();
      else started.then(op.resolve, op.reject);
    }
  }

  #writeNow(data: Uint8Array, done: (() => void) | undefined): Promise<void> {
    if (!this.#writable) return Promise.reject(new TransportError(`Cannot write to ${this.description}: its sending side is closed`));
    // Writable.write wraps a Uint8Array in a Buffer over the same memory, and the socket
    // hands that to the kernel (writev) as is: the caller's bytes are never copied here.
    // Its callback runs once the kernel has the bytes: then `data` is the caller's again.
    // (On an error the callback gets it too; the buffer is just as free then.)
    let given = false;
    const giveBack = (): void => {
      if (given) return;
      given = true;
      done?.();
    };
    this.#nodeWrites++;
    const accepted = this.#writable.write(data, () => {
      giveBack();
      if (--this.#nodeWrites === 0 && this.#queue.length > 0 && !this.#directBusy) this.#pump();
    });
    // The socket wrote it all to the kernel at once (usual on loopback): the bytes are
    // copied, so `data` is free now. Node defers the callback to process.nextTick,
    // which a sender that only awaits promises does not reach for many writes; waiting
    // for it would make the caller take fresh buffers (a page fault per 4 KiB) meanwhile.
    if (this.#writable.writableLength === 0) giveBack();
    if (accepted) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#drainWaiters.push({ resolve, reject });
    });
  }

  unsent(): number {
    const fd = this.#sendQueueFd?.();
    const queued = (this.#writable?.writableLength ?? 0) + (this.#directBusy ? this.#direct!.remaining : 0);
    return queued + (fd === undefined ? 0 : socketSendQueue(fd));
  }

  drain(): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    // A barrier is reached once nothing before it is on its way (see #pump).
    if (!this.#directBusy && this.#queue.length === 0 && this.#nodeWrites === 0) return Promise.resolve();
    return this.#enqueue({ kind: 'barrier' });
  }

  end(): Promise<void> {
    if (this.#endPromise) return this.#endPromise;
    if (this.#error) return Promise.reject(this.#error);
    if (this.#directBusy || this.#queue.length > 0) {
      // Vectored writes go around the writable: end it only once they are all out.
      this.#endPromise = this.#enqueue({ kind: 'barrier' }).then(() => this.#endNow());
      this.#endPromise.catch(() => {});
      return this.#endPromise;
    }
    this.#endPromise = this.#endNow();
    return this.#endPromise;
  }

  #endNow(): Promise<void> {
    const writable = this.#writable;
    // Node may have ended the sending side already, when the peer ended first (allowHalfOpen off).
    if (!writable || writable.writableFinished || (this.#writeClosed && writable.writableLength === 0)) {
      return Promise.resolve();
    }
    const ended = new Promise<void>((resolve, reject) => {
      const onFinish = (): void => {
        cleanup();
        resolve();
      };
      const onFail = (): void => {
        cleanup();
        if (writable.writableFinished && !this.#error) resolve();
        else reject(this.#error ?? new TransportError(`${this.description} closed before everything written was flushed`));
      };
      const cleanup = (): void => {
        writable.off('finish', onFinish);
        writable.off('close', onFail);
        writable.off('error', onFail);
      };
      writable.on('finish', onFinish);
      writable.on('close', onFail);
      writable.on('error', onFail);
      if (!writable.writableEnded) writable.end();
    });
    // The caller may drop this promise (destroy after end); its rejection is then reported elsewhere.
    ended.catch(() => {});
    return ended;
  }

  destroy(error?: Error): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#fail(error ?? new TransportError(`${this.description} was closed`));
    // Chunks that arrived are dropped: destroy means "now", not "after what is queued".
    this.#chunks = [];
    this.#head = 0;
    this.#queuedBytes = 0;
    this.#readable?.destroy();
    if (this.#writable && this.#writable !== (this.#readable as unknown)) this.#writable.destroy();
    this.#closeDirect();
  }

  /** Let go of what the direct writes hold (a pipe), once nothing more can be written. */
  #closeDirect(): void {
    if (this.#direct instanceof SplicedWrites) this.#direct.close();
  }

  /** Take back a chunk read() returned, to read into it again; the caller must not use it after. */
  release(chunk: Uint8Array): void {
    this.#pool?.release(chunk);
  }

  /** How often a vectored write found the socket full and waited for room. */
  get directWaits(): number {
    return this.#direct?.waits ?? 0;
  }

  /** Bytes vectored writes handed to the socket by reference through a pipe (0 where they use writev). */
  get splicedBytes(): number {
    return this.#direct instanceof SplicedWrites ? this.#direct.referencedBytes : 0;
  }

  /** Bytes received and waiting for read(). */
  get queuedReadBytes(): number {
    return this.#queuedBytes;
  }

  #take(): Uint8Array {
    const chunk = this.#chunks[this.#head]!;
    this.#chunks[this.#head] = EMPTY;
    this.#head++;
    if (this.#head === this.#chunks.length) {
      this.#chunks = [];
      this.#head = 0;
    } else if (this.#head >= 1024) {
      this.#chunks = this.#chunks.slice(this.#head);
      this.#head = 0;
    }
    this.#queuedBytes -= chunk.byteLength;
    // Resume at half the mark so a consumer that keeps pace does not toggle per chunk.
    if (this.#paused && this.#queuedBytes <= this.#readHighWaterMark / 2 && !this.#destroyed) {
      this.#paused = false;
      if (!this.#scatterPaused) this.#readable?.resume();
    }
    return chunk;
  }

  #onData(chunk: Uint8Array): void {
    if (this.#destroyed) return;
    const waiter = this.#readWaiter;
    if (waiter) {
      this.#readWaiter = null;
      waiter.resolve(chunk);
      return;
    }
    this.#chunks.push(chunk);
    this.#queuedBytes += chunk.byteLength;
    if (!this.#paused && this.#queuedBytes >= this.#readHighWaterMark) {
      this.#paused = true;
      this.#readable?.pause();
    }
  }

  #onReadEnd(): void {
    this.#readEnded = true;
    const waiter = this.#readWaiter;
    if (waiter && this.#head === this.#chunks.length) {
      this.#readWaiter = null;
      waiter.resolve(null);
    }
  }

  #onReadClose(): void {
    // A close without 'end' and without 'error' means someone destroyed the stream.
    if (!this.#readEnded && !this.#error) {
      this.#fail(new TransportError(`${this.description} was closed before the end of the stream`));
    }
  }

  #onWriteClose(): void {
    this.#writeClosed = true;
    this.#closeDirect();
    const waiters = this.#drainWaiters;
    if (waiters.length === 0) return;
    this.#drainWaiters = [];
    const error = this.#error ?? new TransportError(`${this.description} closed while a write was waiting to drain`);
    for (const waiter of waiters) waiter.reject(error);
  }

  #onDrain(): void {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const waiter of waiters) waiter.resolve();
  }

  #onError(err: Error): void {
    const writing = errorCode(err) === 'EPIPE' || (this.#writable?.writableLength ?? 0) > 0 || this.#drainWaiters.length > 0;
    const error = toTransportError(err, this.description, writing ? 'writing to' : 'reading from');
    debug('transport: %s: %s', this.description, error.message);
    this.#fail(error);
  }

  #fail(error: Error): void {
    if (!this.#error) this.#error = error;
    const readWaiter = this.#readWaiter;
    this.#readWaiter = null;
    readWaiter?.reject(this.#error);
    const drainWaiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const waiter of drainWaiters) waiter.reject(this.#error);
    const queue = this.#queue;
    this.#queue = [];
    for (const op of queue) op.reject(this.#error);
  }
}

const EMPTY = new Uint8Array(0);
/** How long one wait for bytes to read lasts before the channel's state is looked at again. */
const SCATTER_WAIT_SLICE_MS = 100;
/** Bytes scattered reads take before they let the event loop turn once (see scatterRead). */
const SCATTER_BYTES_PER_TURN = 8 * 1024 * 1024;

/** A StreamChannel's `scattered` (a class for the reason DirectVectoredWriter is one). */
class SocketScatteredReader implements ScatteredReader {
  readonly maxEntries = IOV_MAX;
  readonly #channel: StreamChannel;

  constructor(channel: StreamChannel) {
    keepShape(this);
    this.#channel = channel;
  }

  addressOf(view: Uint8Array): number {
    return Number(addressOf(view));
  }

  ready(): boolean {
    return this.#channel.scatterReady();
  }

  read(iov: Uint8Array, count: number): Promise<number> {
    return this.#channel.scatterRead(iov, count);
  }

  resume(): void {
    this.#channel.scatterResume();
  }
}

/**
 * A StreamChannel's `vectored`: a class rather than an object with a closure per channel,
 * so that code V8 compiled around the call (inlined, page batch after page batch) stays
 * valid from one channel to the next — the migration warm-up's, then the real one's.
 */
class DirectVectoredWriter implements VectoredWriter {
  readonly maxRefs = DIRECT_MAX_REFS;
  readonly #channel: StreamChannel;

  constructor(channel: StreamChannel) {
    keepShape(this);
    this.#channel = channel;
  }

  write(batch: VectoredBatch, done?: () => void): Promise<void> | undefined {
    return this.#channel.writeVectored(batch, done);
  }
}
