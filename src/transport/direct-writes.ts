// Vectored writes straight to a socket's descriptor: the caller's buffer with other memory
// of this process (guest RAM) spliced in, one writev(2) for up to a thousand pieces, so the
// kernel copies guest pages from where they are instead of from a copy made for the stream
// (QEMU's source sends pages the same way, from an iovec of guest memory). The descriptor
// stays non-blocking, as libuv keeps it: when the socket is full, the rest waits on libuv's
// thread pool (poll) for room, and the event loop runs meanwhile.

import { TransportError } from '../errors.js';
import { EAGAIN, EINTR, IOV_MAX, addressOf, waitWritable, writev } from '../sys/libc.js';
import { IOVEC_BYTES, consumeIovec, setIovec } from './iovec.js';
import type { VectoredBatch } from './channel.js';
import { syscallError } from './errors.js';
import { keepShape } from '../hot-shapes.js';

/** References per batch: each can split the buffer in two, so 2n + 1 entries fit in IOV_MAX. */
export const DIRECT_MAX_REFS = (IOV_MAX - 1) >> 1;
/** How long one wait for room lasts before the channel's state is looked at again. */
const WAIT_SLICE_MS = 100;

export class DirectWrites {
  readonly #description: string;
  readonly #fd: () => number | undefined;
  readonly #iov = new Uint8Array(IOV_MAX * IOVEC_BYTES);
  readonly #view = new DataView(this.#iov.buffer);
  /** Entries of the batch being written: [#first, #entries) are still to go. */
  #entries = 0;
  #first = 0;
  /** Bytes of the batch not yet written. */
  #remaining = 0;
  /** Bytes of the batch being written that the socket has not taken yet. */
  get remaining(): number {
    return this.#remaining;
  }

  /** Times a batch found the socket full and waited for room (the trace and tests read it). */
  waits = 0;

  /** `fd` answers the socket's descriptor now, or undefined once it is closed. */
  constructor(description: string, fd: () => number | undefined) {
    keepShape(this);
    this.#description = description;
    this.#fd = fd;
  }

  /**
   * Write `batch` now as far as the socket takes it. Returns null when every byte went,
   * else a promise that settles when the rest has (rejecting with a TransportError if the
   * socket fails or `aborted()` turns true first). Throws a TransportError on a failed write.
   */
  write(batch: VectoredBatch, aborted: () => Error | null): Promise<void> | null {
    this.#build(batch);
    if (this.#writeSome()) return null;
    return this.#finish(aborted);
  }

  async #finish(aborted: () => Error | null): Promise<void> {
    await untilWritten(this.#description, this.#fd, aborted, () => this.#writeSome(), () => this.waits++);
  }

  /** One writev of what is left; true when the batch is all out. */
  #writeSome(): boolean {
    for (;;) {
      const fd = this.#fd();
      if (fd === undefined) throw new TransportError(`Cannot write to ${this.#description}: the socket was closed`);
      const count = Math.min(this.#entries - this.#first, IOV_MAX);
      const n = writev(fd, new Uint8Array(this.#iov.buffer, this.#first * IOVEC_BYTES, count * IOVEC_BYTES), count);
      if (n < 0) {
        if (n === -EINTR) continue;
        if (n === -EAGAIN) return false;
        throw syscallError('writev', n, this.#description, 'writing to');
      }
      this.#advance(n);
      if (this.#first === this.#entries) return true;
    }
  }

  /** Drop `n` written bytes from the front of the pending entries. */
  #advance(n: number): void {
    this.#remaining -= n;
    if (this.#remaining === 0) {
      // All of it went (the usual case): nothing to walk.
      this.#first = this.#entries;
      return;
    }
    this.#first = consumeIovec(this.#view, this.#first, this.#entries, n);
  }

  #build(batch: VectoredBatch): void {
    const { entries, total } = batchIovec(this.#view, batch, Number(addressOf(batch.buffer)), this.#description);
    this.#entries = entries;
    this.#first = 0;
    this.#remaining = total;
  }

}

/**
 * Wait for room in the socket and `attempt` the rest of a batch again, until it says all
 * of it went (true). Throws `aborted()`'s error as soon as it gives one, and a
 * TransportError naming `description` once the socket is closed. `onWait` counts the waits.
 */
export async function untilWritten(
  description: string,
  fd: () => number | undefined,
  aborted: () => Error | null,
  attempt: () => boolean,
  onWait: () => void,
): Promise<void> {
  for (;;) {
    const now = fd();
    const stop = aborted();
    if (stop) throw stop;
    if (now === undefined) throw new TransportError(`Cannot write to ${description}: the socket was closed`);
    onWait();
    await waitWritable(now, WAIT_SLICE_MS);
    const stopNow = aborted();
    if (stopNow) throw stopNow;
    if (attempt()) return;
  }
}

/**
 * The iovec entries of `batch` into `view`: the buffer's bytes (which are at `base` in this
 * process) cut where each reference goes in, the references between. Returns how many
 * entries and bytes that makes; throws a TransportError naming `description` for a batch
 * that does not fit or a reference outside its buffer.
 */
export function batchIovec(view: DataView, batch: VectoredBatch, base: number, description: string): { entries: number; total: number } {
  if (batch.count > DIRECT_MAX_REFS) {
    throw new TransportError(`Cannot write to ${description}: ${batch.count} references in one batch, at most ${DIRECT_MAX_REFS}`);
  }
  let entries = 0;
  let start = 0;
  let total = batch.length;
  for (let i = 0; i < batch.count; i++) {
    const at = batch.at[i]!;
    if (at < start || at > batch.length) {
      throw new TransportError(`Cannot write to ${description}: reference ${i} goes at byte ${at}, outside ${start}..${batch.length}`);
    }
    if (at > start) setIovec(view, entries++, base + start, at - start);
    start = at;
    const bytes = batch.bytes[i]!;
    total += bytes;
    if (bytes > 0) setIovec(view, entries++, batch.address[i]!, bytes);
  }
  if (batch.length > start) setIovec(view, entries++, base + start, batch.length - start);
  return { entries, total };
}
