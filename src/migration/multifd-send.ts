// The source's multifd channels (QEMU 7.2's multifd_send_*): pages of data gathered into
// packets of up to 128 pages of one block, each packet handed whole to the next channel
// that is not pushing back (QEMU: the next channel with no job pending, round robin), and
// before every EOS a SYNC packet on every channel. One writer per channel; pages go by
// reference where the channel takes references, as on the main stream. With
// `multifd-compression` each channel has its own compression stream (multifd-compression.ts):
// a packet's pages are copied out of guest RAM (the guest may be writing them) and
// compressed on the thread pool, and the packet goes on its channel once they are, in the
// order the channel was given its packets.

import { MigrationCancelledError, MigrationError, errorMessage } from '../errors.js';
import type { Channel } from '../transport/channel.js';
import { StreamWriter } from '../stream/writer.js';
import {
  MULTIFD_FLAG_SYNC, MULTIFD_INIT_BYTES, MULTIFD_PACKET_BYTES, MULTIFD_PACKET_PAGES, encodeMultifdInit, multifdBlockName, writeMultifdPacketHeader,
} from '../stream/multifd.js';
import { keepShape } from '../hot-shapes.js';
import { compressionFlag, packetCompressor, type MultifdCompression, type PacketCompressor } from '../stream/multifd-compression.js';

const PAGE_BYTES = 4096;
const EMPTY_NAME = new Uint8Array(256);
/** Packets a channel may have being compressed before it counts as pushing back. */
const MAX_COMPRESSING = 2;

/** A channel's compression: its stream, and the packets still on their way through it. */
interface Compressing {
  readonly compressor: PacketCompressor;
  /** Packets handed to the stream and not yet written to the channel. */
  pending: number;
  /** Settles once everything given to this channel so far is written to its writer. */
  tail: Promise<void>;
  /** Woken when `pending` falls. */
  wake: (() => void) | undefined;
  /** Packet buffers the compressor is done with, to fill again (fresh memory costs the host's first touch). */
  readonly free: Uint8Array[];
  /** Where its packets ended on the wire and in QEMU's count. */
  readonly marks: WireMarks;
}

/**
 * A compressed channel's packets as written, each as where it ended in the channel's bytes
 * and in QEMU's count (pages at their own size): what the destination has taken of the
 * count, told from how much of the channel's bytes it has taken. Exact at each packet's
 * end, in proportion inside one.
 */
class WireMarks {
  #wire: number[] = [];
  #counted: number[] = [];
  #head = 0;
  /** The last mark the destination has passed. */
  #baseWire = 0;
  #baseCounted = 0;
  #total = 0;

  /** `written`: the channel's bytes so far (its initial packet), counted as they are. */
  constructor(written: number) {
    this.written(written, written);
  }

  /** A packet counted as `counted` bytes was written; the channel's bytes now end at `wireEnd`. */
  written(wireEnd: number, counted: number): void {
    this.#total += counted;
    this.#wire.push(wireEnd);
    this.#counted.push(this.#total);
  }

  /** Of the count, what the destination has when it has taken `wire` of the channel's bytes. */
  delivered(wire: number): number {
    const ends = this.#wire;
    while (this.#head < ends.length && ends[this.#head]! <= wire) {
      this.#baseWire = ends[this.#head]!;
      this.#baseCounted = this.#counted[this.#head]!;
      this.#head++;
    }
    if (this.#head > 1024) {
      ends.splice(0, this.#head);
      this.#counted.splice(0, this.#head);
      this.#head = 0;
    }
    if (this.#head === ends.length || wire <= this.#baseWire) return this.#baseCounted;
    const nextWire = ends[this.#head]!;
    const nextCounted = this.#counted[this.#head]!;
    return this.#baseCounted + ((wire - this.#baseWire) * (nextCounted - this.#baseCounted)) / (nextWire - this.#baseWire);
  }
}

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
  /** Per channel, with `multifd-compression`: its stream; else empty. */
  readonly #compressing: readonly Compressing[];
  readonly #flag: number;
  /** Packets sent, SYNC ones included, and pages in them (for traces and tests). */
  packets = 0;
  pages = 0;
  /** With compression: the bytes of the pages that went into it, and what came out. */
  compressedFrom = 0;
  compressedTo = 0;
  /**
   * The bytes QEMU 7.2 counts for what was handed to the channels (multifd_send_pages):
   * each packet as its header plus its pages *uncompressed*, when it is queued — so that
   * `transferred`, the bandwidth the switchover is decided on and `max-bandwidth` mean page
   * bytes whatever the compression. Without compression, every byte written.
   */
  #counted = 0;

  /**
   * Takes the connected channels, in id order, and writes each one's initial packet.
   * `compression` (QEMU's multifd-compression, at `level`) other than none compresses every
   * packet's pages.
   */
  constructor(channels: readonly Channel[], uuid: Uint8Array, options?: { bufferSize?: number; compression?: MultifdCompression; level?: number; initialPacketsSent?: boolean }) {
    keepShape(this);
    this.#channels = channels;
    const compression = options?.compression ?? 'none';
    this.#flag = compressionFlag(compression);
    // connectMultifdChannels may have sent them already, each as its channel connected.
    this.#initialBytes = options?.initialPacketsSent ? MULTIFD_INIT_BYTES : 0;
    this.#writers = channels.map((c, id) => {
      const w = new StreamWriter(c, options?.bufferSize !== undefined ? { bufferSize: options.bufferSize } : undefined);
      if (!options?.initialPacketsSent) w.bytes(encodeMultifdInit(uuid, id));
      this.#counted += this.#initialBytes + w.bytesWritten;
      return w;
    });
    this.#compressing = compression === 'none' ? [] : this.#writers.map((w) => ({
      compressor: packetCompressor(compression, options?.level ?? 1), pending: 0, tail: Promise.resolve(), wake: undefined, free: [], marks: new WireMarks(this.#initialBytes + w.bytesWritten),
    }));
  }

  /** Bytes each channel carried before its writer: its initial packet when connectMultifdChannels sent it. */
  readonly #initialBytes: number;

  get channels(): number {
    return this.#writers.length;
  }

  /** True with multifd-compression other than none. */
  get compressing(): boolean {
    return this.#compressing.length > 0;
  }

  /** Every byte handed to the channels: initial packets, packet headers, pages — compressed where they are. */
  get bytesWritten(): number {
    let sum = 0;
    for (const w of this.#writers) sum += this.#initialBytes + w.bytesWritten;
    return sum;
  }

  /**
   * Bytes as QEMU counts them (#counted): initial packets, packet headers and pages, the
   * pages at their own size even where they went compressed, each packet as it is queued.
   */
  get bytesCounted(): number {
    return this.#counted;
  }

  /** Bytes written that the destination has not taken yet (where the channels can tell). */
  unsent(): number {
    let sum = 0;
    for (const c of this.#channels) sum += c.unsent?.() ?? 0;
    return sum;
  }

  /**
   * unsent() as bytesCounted counts: what was counted less what the destination has taken
   * of it — with compression, packets still being compressed, and the compressed bytes
   * still queued standing for the pages they hold (WireMarks).
   */
  unsentCounted(): number {
    let delivered = 0;
    for (let i = 0; i < this.#writers.length; i++) {
      const wire = this.#initialBytes + this.#writers[i]!.bytesWritten - (this.#channels[i]!.unsent?.() ?? 0);
      const c = this.#compressing[i];
      delivered += c === undefined ? wire : c.marks.delivered(wire);
    }
    return this.#counted - delivered;
  }

  /** The first error any channel met. */
  get error(): Error | null {
    for (const w of this.#writers) if (w.error) return w.error;
    return null;
  }

  /** True when every channel is pushing back: the sender should wait (settled()). */
  get backlogged(): boolean {
    for (let i = 0; i < this.#writers.length; i++) if (!this.#busy(i)) return false;
    return true;
  }

  /** Channel `i` pushes back: its socket, or (compressing) packets still in its stream. */
  #busy(i: number): boolean {
    const c = this.#compressing[i];
    return this.#writers[i]!.backlogged || (c !== undefined && c.pending >= MAX_COMPRESSING);
  }

  /** Resolves once some channel can take more; rejects with a channel's error. */
  settled(): Promise<void> {
    return Promise.race(this.#writers.map((w, i) => {
      const c = this.#compressing[i];
      if (c === undefined || c.pending < MAX_COMPRESSING) return w.settled();
      return new Promise<void>((resolve) => (c.wake = resolve)).then(() => {
        if (this.error) throw this.error;
      });
    }));
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
    for (const [i, w] of this.#writers.entries()) {
      const num = this.#packetNum++;
      this.packets++;
      this.#counted += MULTIFD_PACKET_BYTES;
      const c = this.#compressing[i];
      const send = (): void => {
        writeMultifdPacketHeader(w, MULTIFD_FLAG_SYNC, num, EMPTY_NAME, this.#offsets, 0);
        c?.marks.written(this.#initialBytes + w.bytesWritten, MULTIFD_PACKET_BYTES);
        w.flush().catch(() => {});
      };
      if (c === undefined) send();
      else c.tail = c.tail.then(send);
    }
  }

  #sendPacket(): void {
    const writers = this.#writers;
    let i = this.#next;
    for (let tried = 0; tried < writers.length && this.#busy(i); tried++) i = (i + 1) % writers.length;
    const w = writers[i]!;
    this.#next = (i + 1) % writers.length;
    const count = this.#count;
    this.#counted += MULTIFD_PACKET_BYTES + count * PAGE_BYTES;
    const c = this.#compressing[i];
    if (c !== undefined) {
      this.#compressPacket(w, c, count);
      return;
    }
    writeMultifdPacketHeader(w, 0, this.#packetNum++, this.#name, this.#offsets, count);
    const ram = this.#ram!;
    const address = this.#address;
    for (let p = 0; p < count; p++) w.byReference(ram, this.#offsets[p]!, PAGE_BYTES, address);
    this.#count = 0;
    this.packets++;
    this.pages += count;
  }

  /**
   * The packet being filled, through channel `c`'s compression: its pages copied now (QEMU
   * copies each page before deflate too: the guest may change it meanwhile, and a page
   * written after it was queued goes again anyway), then compressed, and the packet —
   * header with the compressed size, then the data — written once that is done and every
   * packet given to this channel before it is written.
   */
  #compressPacket(w: StreamWriter, c: Compressing, count: number): void {
    const ram = this.#ram!;
    const buffer = c.free.pop() ?? new Uint8Array(MULTIFD_PACKET_PAGES * PAGE_BYTES);
    const pages = buffer.subarray(0, count * PAGE_BYTES);
    for (let p = 0; p < count; p++) {
      const offset = this.#offsets[p]!;
      pages.set(ram.subarray(offset, offset + PAGE_BYTES), p * PAGE_BYTES);
    }
    const offsets = this.#offsets.slice(0, count);
    const name = this.#name;
    const num = this.#packetNum++;
    this.#count = 0;
    this.packets++;
    this.pages += count;
    c.pending++;
    const compressed = c.compressor.compress(pages);
    const giveBack = (): void => {
      if (c.free.length <= MAX_COMPRESSING) c.free.push(buffer);
    };
    compressed.then(giveBack, giveBack);
    // Handled below once the packets before it are written. A channel's packets settle in
    // order, so that handler is there in time; caught here as well, so that a failure (a
    // cancel closing the stream) can never count as unhandled, whatever the order.
    compressed.catch(() => {});
    c.tail = c.tail
      .then(() => compressed)
      .then(
        (data) => {
          this.compressedFrom += pages.byteLength;
          this.compressedTo += data.byteLength;
          writeMultifdPacketHeader(w, this.#flag, num, name, offsets, count, data.byteLength);
          w.bytes(data);
          c.marks.written(this.#initialBytes + w.bytesWritten, MULTIFD_PACKET_BYTES + count * PAGE_BYTES);
        },
        (err: unknown) => w.setError(err instanceof Error ? err : new MigrationError(String(err))),
      )
      .finally(() => {
        c.pending--;
        const wake = c.wake;
        c.wake = undefined;
        wake?.();
      });
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
    try {
      await this.#all((w) => w.close());
    } finally {
      for (const c of this.#compressing) c.compressor.close();
    }
  }

  /**
   * `step` on every channel once what it was given is through its compression, all of
   * them settled before the first error is thrown.
   */
  async #all(step: (w: StreamWriter) => Promise<void>): Promise<void> {
    await Promise.allSettled(this.#writers.map(async (w, i) => {
      await this.#compressing[i]?.tail;
      await step(w);
    }));
    const error = this.error;
    if (error) throw error;
  }

  destroy(error?: Error): void {
    for (const c of this.#compressing) c.compressor.close();
    for (const c of this.#channels) c.destroy(error);
  }
}

/**
 * Connect `count` multifd channels through `connect`, all at once as QEMU does, each one
 * sending its initial packet (channel i says it is number i, for `uuid`) the moment it
 * connects, as QEMU's channel threads do: a QEMU destination reads a channel's initial
 * packet as soon as the channel is there, blocking its main loop meanwhile — over TLS,
 * where that loop also carries the other channels' handshakes, waiting for all of them
 * before sending any would leave both ends waiting. Each one is pushed to `opened` as it
 * connects, so that a cancel or a failure can tear it down; one that connects after
 * `cancelled()` is closed at once. If any fails, the migration fails with its error (the
 * caller closes the others with the rest). The sender is then made with
 * `initialPacketsSent`.
 */
export async function connectMultifdChannels(count: number, connect: () => Promise<Channel>, uuid: Uint8Array, opened: Channel[], cancelled: () => boolean, cancelSignal: Promise<never>): Promise<Channel[]> {
  const attempts = Array.from({ length: count }, (_, id) =>
    connect().then((c) => {
      opened.push(c);
      if (cancelled()) c.destroy(new MigrationCancelledError());
      else c.write(encodeMultifdInit(uuid, id)).catch(() => {});
      return c;
    }),
  );
  const settled = await Promise.race([Promise.allSettled(attempts), cancelSignal]);
  if (cancelled()) throw new MigrationCancelledError();
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw new MigrationError(`Cannot open multifd channel: ${errorMessage(failed.reason)}`, { cause: failed.reason });
  return settled.map((r) => (r as PromiseFulfilledResult<Channel>).value);
}
