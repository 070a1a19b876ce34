// Vectored writes to a unix-domain socket without copying guest pages on the sending side:
// vmsplice(2) puts references to the pages into a pipe, splice(2) moves them on to the
// socket, and the kernel hands the very pages to the peer, whose read copies them once.
// With writev the sending kernel first copies each page into a socket buffer of its own,
// and that copy was most of the source's time over unix sockets (a C program with the
// migration's layout, 1 GiB of THP-backed memory, same loopback: writev 7.6–8.1 GB/s, the
// sender 0.12–0.14 CPU-s per GiB; vmsplice and splice 8.7–11.5 GB/s, 0.06–0.10 CPU-s).
// Over loopback tcp the same path was slower than writev (2.3 GB/s), so tcp keeps writev.
//
// What is referenced is read when the peer reads, not when the write returns. For guest
// RAM that is what pre-copy already allows: a page the guest writes after the dirty-log
// sync that sent it is in the next sync's log and goes again, later in the same stream,
// so whatever the peer saw of it is overwritten. (It is what QEMU's zero-copy-send relies
// on too.) Everything else in a batch — chunk headers, block names, records — lives in the
// stream writer's buffer, which is written again as soon as the batch is out; those bytes
// are copied first into a ring of this writer's own, and a stretch of the ring is written
// again only once the socket's send queue says the peer has read every byte sent from it.

import { TransportError } from '../errors.js';
import {
  EAGAIN, EINTR, IOV_MAX, O_CLOEXEC, O_NONBLOCK, SPLICE_F_NONBLOCK,
  addressOf, closeFd, pipe2, setPipeSize, socketSendQueue, splice, vmsplice,
} from '../sys/libc.js';
import { IOVEC_BYTES, consumeIovec } from './iovec.js';
import type { VectoredBatch } from './channel.js';
import { batchIovec, untilWritten } from './direct-writes.js';
import { syscallError } from './errors.js';
import { keepShape } from '../hot-shapes.js';

/** What the pipe is asked to hold: a slot per entry, so 1024 slots take a full batch. */
const PIPE_BYTES = 4 * 1024 * 1024;
/** Unprivileged processes are capped at /proc/sys/fs/pipe-max-size (1 MiB by default). */
const PIPE_BYTES_UNPRIVILEGED = 1024 * 1024;
/** Default ring for the copied bytes: a batch holds ~8 bytes of them per 4 KiB page. */
export const SPLICE_RING_BYTES = 1024 * 1024;
/** How long to wait before looking at the send queue again when the ring is still in use. */
const RING_POLL_MS = 1;

/** A stretch of the ring and the stream position the peer must have read past before it is free. */
interface RingUse {
  start: number;
  end: number;
  /** Bytes spliced into the socket once this stretch's batch was all in it. */
  streamEnd: number;
}

export class SplicedWrites {
  readonly #description: string;
  readonly #fd: () => number | undefined;
  readonly #iov = new Uint8Array(IOV_MAX * IOVEC_BYTES);
  readonly #view = new DataView(this.#iov.buffer);
  readonly #ring: Uint8Array;
  readonly #ringAddress: number;
  /** Where the next batch's copied bytes go in the ring. */
  #ringAt = 0;
  /** Stretches of the ring in use, oldest first. */
  readonly #inUse: RingUse[] = [];
  #pipeRead = -1;
  #pipeWrite = -1;
  /** Entries of the batch being written: [#first, #entries) are still to go into the pipe. */
  #entries = 0;
  #first = 0;
  /** Bytes in the pipe, not yet in the socket. */
  #inPipe = 0;
  /** Bytes of the batch the socket has not taken yet (in the pipe or not yet in it). */
  #remaining = 0;
  /** Every byte spliced into the socket so far. */
  #spliced = 0;
  get remaining(): number {
    return this.#remaining;
  }

  /** Times a batch found the socket full (or the ring still read from) and waited. */
  waits = 0;
  /** Bytes that went by reference (not copied on this side): the trace and tests read it. */
  referencedBytes = 0;

  /**
   * A pipe for `fd`'s socket, or a TransportError when this process cannot have one
   * (the caller then writes with writev). `ringBytes` is for tests.
   */
  static open(description: string, fd: () => number | undefined, ringBytes = SPLICE_RING_BYTES): SplicedWrites | TransportError {
    const fds = pipe2(O_NONBLOCK | O_CLOEXEC);
    if (typeof fds === 'number') return syscallError('pipe2', fds, description, 'writing to');
    if (setPipeSize(fds[1], PIPE_BYTES) < 0) setPipeSize(fds[1], PIPE_BYTES_UNPRIVILEGED);
    return new SplicedWrites(description, fd, fds, ringBytes);
  }

  private constructor(description: string, fd: () => number | undefined, pipe: [number, number], ringBytes: number) {
    keepShape(this);
    this.#description = description;
    this.#fd = fd;
    this.#pipeRead = pipe[0];
    this.#pipeWrite = pipe[1];
    this.#ring = new Uint8Array(ringBytes);
    this.#ringAddress = Number(addressOf(this.#ring));
  }

  /** As DirectWrites.write: null when every byte is in the socket, else a promise for the rest. */
  write(batch: VectoredBatch, aborted: () => Error | null): Promise<void> | null {
    if (this.#pipeWrite < 0) throw new TransportError(`Cannot write to ${this.#description}: the socket was closed`);
    if (batch.length > this.#ring.byteLength) {
      throw new TransportError(`Cannot write to ${this.#description}: ${batch.length} bytes around the references, at most ${this.#ring.byteLength}`);
    }
    // The batch's arrays are the caller's again once this returns: the entries are built
    // now, pointing where its bytes will be in the ring.
    const at = batch.length > 0 && this.#ringAt + batch.length > this.#ring.byteLength ? 0 : this.#ringAt;
    const { entries, total } = batchIovec(this.#view, batch, this.#ringAddress + at, this.#description);
    this.#entries = entries;
    this.#first = 0;
    this.#remaining = total;
    this.referencedBytes += total - batch.length;
    if (!this.#ringFree(at, at + batch.length)) return this.#afterRing(batch, at, total, aborted);
    this.#take(batch, at, total);
    if (this.#pump()) return null;
    return this.#finish(aborted);
  }

  /** Close the pipe (the channel is closing); a write after this fails. */
  close(): void {
    if (this.#pipeWrite < 0) return;
    closeFd(this.#pipeWrite);
    closeFd(this.#pipeRead);
    this.#pipeWrite = -1;
    this.#pipeRead = -1;
  }

  async #afterRing(batch: VectoredBatch, at: number, total: number, aborted: () => Error | null): Promise<void> {
    for (;;) {
      const stop = aborted();
      if (stop) throw stop;
      this.waits++;
      await new Promise((resolve) => setTimeout(resolve, RING_POLL_MS));
      const stopNow = aborted();
      if (stopNow) throw stopNow;
      if (this.#ringFree(at, at + batch.length)) break;
    }
    this.#take(batch, at, total);
    if (this.#pump()) return;
    return this.#finish(aborted);
  }

  /**
   * Whether the peer has read every byte sent from ring bytes [start, end), so they may be
   * written again; the stretches it has read are forgotten on the way.
   */
  #ringFree(start: number, end: number): boolean {
    if (start === end) return true;
    const fd = this.#fd();
    // What the peer has read for certain: the send queue counts every byte not yet read
    // (with the kernel's own overhead on top, which only makes this smaller).
    const read = fd === undefined ? this.#spliced : this.#spliced - socketSendQueue(fd);
    while (this.#inUse.length > 0) {
      const oldest = this.#inUse[0]!;
      if (oldest.end <= start || oldest.start >= end) break;
      if (oldest.streamEnd > read) return false;
      this.#inUse.shift();
    }
    return true;
  }

  /** Copy the batch's own bytes to ring byte `at` (where its entries point) and note the stretch in use. */
  #take(batch: VectoredBatch, at: number, total: number): void {
    if (batch.length === 0) return;
    this.#ring.set(batch.buffer.subarray(0, batch.length), at);
    this.#ringAt = at + batch.length;
    this.#inUse.push({ start: at, end: at + batch.length, streamEnd: this.#spliced + total });
  }

  async #finish(aborted: () => Error | null): Promise<void> {
    await untilWritten(this.#description, this.#fd, aborted, () => this.#pump(), () => this.waits++);
  }

  /** Fill the pipe from the batch and empty it into the socket until both are done (true) or the socket is full (false). */
  #pump(): boolean {
    for (;;) {
      const fd = this.#fd();
      if (fd === undefined || this.#pipeWrite < 0) throw new TransportError(`Cannot write to ${this.#description}: the socket was closed`);
      if (this.#first < this.#entries) {
        const count = Math.min(this.#entries - this.#first, IOV_MAX);
        const n = vmsplice(this.#pipeWrite, new Uint8Array(this.#iov.buffer, this.#first * IOVEC_BYTES, count * IOVEC_BYTES), count, SPLICE_F_NONBLOCK);
        if (n < 0 && n !== -EAGAIN && n !== -EINTR) throw syscallError('vmsplice', n, this.#description, 'writing to');
        if (n > 0) {
          this.#inPipe += n;
          this.#first = consumeIovec(this.#view, this.#first, this.#entries, n);
        }
      }
      if (this.#inPipe === 0) return true;
      const moved = splice(this.#pipeRead, fd, this.#inPipe, SPLICE_F_NONBLOCK);
      if (moved < 0) {
        if (moved === -EINTR) continue;
        if (moved === -EAGAIN) return false;
        throw syscallError('splice', moved, this.#description, 'writing to');
      }
      this.#inPipe -= moved;
      this.#spliced += moved;
      this.#remaining -= moved;
      if (this.#inPipe === 0 && this.#first === this.#entries) return true;
    }
  }
}
