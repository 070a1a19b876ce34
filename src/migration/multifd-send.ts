// The source's multifd channels (QEMU 7.2's multifd_send_*): pages of data gathered into
// packets of up to 128 pages of one block, each packet handed whole to the next channel
// that is not pushing back (QEMU: the next channel with no job pending, round robin), and
// before every EOS a SYNC packet on every channel. One writer per channel; pages go by
// reference where the channel takes references, as on the main stream.

import { MigrationCancelledError, MigrationError, errorMessage } from '../errors.js';
import type { Channel } from '../transport/channel.js';
import { StreamWriter } from '../stream/writer.js';
import {
  MULTIFD_FLAG_SYNC, MULTIFD_PACKET_PAGES, encodeMultifdInit, multifdBlockName, writeMultifdPacketHeader,
} from '../stream/multifd.js';
import { keepShape } from '../hot-shapes.js';

const PAGE_BYTES = 4096;
const EMPTY_NAME = new Uint8Array(256);

export class MultifdSender {
  readonly #channels: readonly Channel[];
  readonly #writers: readonly StreamWriter[];
  #packetNum = 0;
  #next = 0;
  /** The packet being filled: its block, and the offsets of its pages. */
  #idstr = '';
  #name: Uint8Array = EMPTY_NAME;
  #ram: Uint8Array | undefined;
  #address: number | undefined;
  readonly #offsets = new Float64Array(MULTIFD_PACKET_PAGES);
  #count = 0;
  readonly #names = new Map<string, Uint8Array>();
  /** Packets sent, SYNC ones included, and pages in them (for traces and tests). */
  packets = 0;
  pages = 0;

  /** Takes the connected channels, in id order, and writes each one's initial packet. */
  constructor(channels: readonly Channel[], uuid: Uint8Array, options?: { bufferSize?: number }) {
    keepShape(this);
    this.#channels = channels;
    this.#writers = channels.map((c, id) => {
      const w = new StreamWriter(c, options);
      w.bytes(encodeMultifdInit(uuid, id));
      return w;
    });
  }

  get channels(): number {
    return this.#writers.length;
  }

  /** Every byte handed to the channels: initial packets, packet headers, pages (QEMU's multifd_bytes counts the last two). */
  get bytesWritten(): number {
    let sum = 0;
    for (const w of this.#writers) sum += w.bytesWritten;
    return sum;
  }

  /** Bytes written that the destination has not taken yet (where the channels can tell). */
  unsent(): number {
    let sum = 0;
    for (const c of this.#channels) sum += c.unsent?.() ?? 0;
    return sum;
  }

  /** The first error any channel met. */
  get error(): Error | null {
    for (const w of this.#writers) if (w.error) return w.error;
    return null;
  }

  /** True when every channel is pushing back: the sender should wait (settled()). */
  get backlogged(): boolean {
    for (const w of this.#writers) if (!w.backlogged) return false;
    return true;
  }

  /** Resolves once some channel can take more; rejects with a channel's error. */
  settled(): Promise<void> {
    return Promise.race(this.#writers.map((w) => w.settled()));
  }

  /** Page `offset` of block `idstr` (whose memory is `ram`, at `address` in this process when known). */
  queue(idstr: string, ram: Uint8Array, offset: number, address: number | undefined): void {
    if (this.#count > 0 && idstr !== this.#idstr) this.#sendPacket();
    if (this.#count === 0) {
      if (idstr !== this.#idstr) {
        this.#idstr = idstr;
        let name = this.#names.get(idstr);
        if (name === undefined) this.#names.set(idstr, (name = multifdBlockName(idstr)));
        this.#name = name;
      }
      this.#ram = ram;
      this.#address = address;
    }
    this.#offsets[this.#count++] = offset;
    if (this.#count === MULTIFD_PACKET_PAGES) this.#sendPacket();
  }

  /**
   * Before an EOS on the main stream (multifd_send_sync_main): the packet being filled goes
   * out, then a SYNC packet on every channel — the destination's EOS waits for all of them,
   * so each channel's buffer goes to its channel now (a failed write is kept as the
   * writer's error, seen at the next flush).
   */
  sync(): void {
    if (this.#count > 0) this.#sendPacket();
    for (const w of this.#writers) {
      writeMultifdPacketHeader(w, MULTIFD_FLAG_SYNC, this.#packetNum++, EMPTY_NAME, this.#offsets, 0);
      this.packets++;
      w.flush().catch(() => {});
    }
  }

  #sendPacket(): void {
    const writers = this.#writers;
    let i = this.#next;
    for (let tried = 0; tried < writers.length && writers[i]!.backlogged; tried++) i = (i + 1) % writers.length;
    const w = writers[i]!;
    this.#next = (i + 1) % writers.length;
    const count = this.#count;
    writeMultifdPacketHeader(w, 0, this.#packetNum++, this.#name, this.#offsets, count);
    const ram = this.#ram!;
    const address = this.#address;
    for (let p = 0; p < count; p++) w.byReference(ram, this.#offsets[p]!, PAGE_BYTES, address);
    this.#count = 0;
    this.packets++;
    this.pages += count;
  }

  /** Hand everything written to the channels and wait until they can take more; rejects with the first channel's error. */
  async flush(): Promise<void> {
    await this.#all((w) => w.flush());
  }

  /** Flush, then wait until the OS has every byte (Channel.drain). */
  async drain(): Promise<void> {
    await this.#all((w) => w.drain());
  }

  /** Flush and end every channel's sending side. */
  async close(): Promise<void> {
    await this.#all((w) => w.close());
  }

  /** `step` on every channel, all of them settled before the first error is thrown. */
  async #all(step: (w: StreamWriter) => Promise<void>): Promise<void> {
    await Promise.allSettled(this.#writers.map(step));
    const error = this.error;
    if (error) throw error;
  }

  destroy(error?: Error): void {
    for (const c of this.#channels) c.destroy(error);
  }
}

/**
 * Connect `count` multifd channels through `connect`, all at once as QEMU does. Each one
 * is pushed to `opened` as it connects, so that a cancel or a failure can tear it down;
 * one that connects after `cancelled()` is closed at once. If any fails, the migration
 * fails with its error (the caller closes the others with the rest).
 */
export async function connectMultifdChannels(count: number, connect: () => Promise<Channel>, opened: Channel[], cancelled: () => boolean, cancelSignal: Promise<never>): Promise<Channel[]> {
  const attempts = Array.from({ length: count }, () =>
    connect().then((c) => {
      opened.push(c);
      if (cancelled()) c.destroy(new MigrationCancelledError());
      return c;
    }),
  );
  const settled = await Promise.race([Promise.allSettled(attempts), cancelSignal]);
  if (cancelled()) throw new MigrationCancelledError();
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw new MigrationError(`Cannot open multifd channel: ${errorMessage(failed.reason)}`, { cause: failed.reason });
  return settled.map((r) => (r as PromiseFulfilledResult<Channel>).value);
}
