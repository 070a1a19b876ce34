// Where a source's bytes are: written on the main stream and, with multifd, on its
// channels (counted as QEMU counts them), taken by the destination, or still queued in
// this process or the socket (as far as the OS tells). The switchover decision measures
// the bandwidth on what the destination took, and a downtime ends only once it has taken
// the last byte. The connections themselves are here too, so a failure closes them all.

import type { Channel } from '../transport/channel.js';
import type { StreamWriter } from '../stream/writer.js';
import type { MultifdSender } from './multifd-send.js';

/** How long the end of a migration waits for the destination to take what its socket still holds. */
const DELIVERY_WAIT_MS = 5000;

export class OutgoingDelivery {
  /** The main stream's connection (post-copy recovery replaces it). */
  channel: Channel | undefined;
  /** The `multifd` channels' sender, once they connected. */
  multifd: MultifdSender | undefined;
  /** Connections made for multifd channels, kept so a cancel or failure can tear them down. */
  readonly multifdChannels: Channel[] = [];
  readonly #now: () => number;
  readonly #sleep: (ms: number) => Promise<void>;

  constructor(now: () => number, sleep: (ms: number) => Promise<void>) {
    this.#now = now;
    this.#sleep = sleep;
  }

  /** Whether the OS tells what the main connection still holds (sockets do; pipes and files do not). */
  get tellsUnsent(): boolean {
    return this.channel?.unsent !== undefined;
  }

  /** Bytes written on the main stream and, with multifd, on its channels (compressed pages at their own size, as QEMU counts them). */
  written(w: StreamWriter): number {
    return w.bytesWritten + (this.multifd?.bytesCounted ?? 0);
  }

  /** Bytes written that the destination has not taken yet, on every connection (where the OS tells), counted as written() counts. */
  unsent(): number {
    return (this.channel?.unsent?.() ?? 0) + (this.multifd?.unsentCounted() ?? 0);
  }

  /**
   * Bytes the destination has taken: what the stream writer accepted, less what still
   * waits in this process or the socket's send queue. The bandwidth that decides the
   * switchover is measured on these — on a local socket with tens of MiB of buffer, bytes
   * accepted run far ahead of bytes the destination has.
   */
  delivered(w: StreamWriter): number {
    return this.written(w) - this.unsent();
  }

  /** Everything written so far handed to the connections; throws the writer's error. */
  async flush(w: StreamWriter): Promise<void> {
    await w.flush();
    if (w.error) throw w.error;
    await this.multifd?.flush();
  }

  /**
   * After the last flush: wait until the destination has taken every byte, as far as the
   * OS tells (a socket's send queue; a local socket holds tens of MiB), so that the
   * downtime covers them — QEMU's ends at its last write to a socket whose buffer is a
   * few hundred KiB. At most until `until` (DELIVERY_WAIT_MS by default: a destination
   * that stopped reading fails on its own, and the close that follows reports it). True
   * once nothing is left unsent, or when the channel cannot tell.
   */
  async waitDelivered(w: StreamWriter, until = this.#now() + DELIVERY_WAIT_MS, giveUp?: () => boolean): Promise<boolean> {
    if (!this.tellsUnsent) return true;
    while (!w.error && this.unsent() > 0 && this.#now() < until && giveUp?.() !== true) await this.#sleep(1);
    return this.unsent() === 0;
  }

  /** Tear every connection down (a cancel, a failure). */
  destroy(err?: Error): void {
    this.channel?.destroy(err);
    for (const c of this.multifdChannels) c.destroy(err);
  }
}
