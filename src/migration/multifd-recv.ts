// The destination's multifd channels (QEMU 7.2's multifd_recv_*): every connection after
// the main one opens with an initial packet naming its channel, then carries packets of
// pages, each copied straight into guest RAM. A packet flagged SYNC holds its channel
// until the main stream reaches the EOS that follows it (syncMain()): every page the
// source sent before that EOS has then landed, whichever channel it took. With
// `multifd-compression` each channel's pages come through its own decompression stream
// (multifd-compression.ts), then are copied into guest RAM.

import { MigrationError, StreamFormatError, StreamTruncatedError } from '../errors.js';
import type { Channel, Listener, ScatteredReader } from '../transport/channel.js';
import { readExactly } from '../stream/ram-scatter.js';
import { StreamReader } from '../stream/reader.js';
import { compressionFlag, packetDecompressor, type MultifdCompression, type PacketDecompressor } from '../stream/multifd-compression.js';
import {
  MULTIFD_FLAG_SYNC, MULTIFD_INIT_BYTES, MULTIFD_PACKET_BYTES, MULTIFD_PACKET_PAGES, decodeMultifdInit, decodeMultifdPacket, readMultifdPagesStraight,
} from '../stream/multifd.js';

const PAGE_BYTES = 4096;
/**
 * How long the channels may take to connect after the main one: the source opens them
 * all at once right after it (QEMU's destination waits without end; a source with fewer
 * channels than this side expects would then hang both).
 */
export const MULTIFD_CONNECT_WAIT_MS = 10_000;

/**
 * With multifd-compression, what a channel may hold received and not yet decompressed, in
 * bytes of the pages it stands for. The source decides the switchover on the bytes the
 * destination has taken, and over tcp it cannot see what waits in this side's receive
 * queue; compressed, a few MiB there can be a GiB of pages (a sweeping guest's compress
 * ~2000 : 1), which this side then decompresses with the guest stopped — a guest paused
 * 1.8 s with downtime 211 ms, by hand with zlib. So each channel's receive queue is held
 * to this many bytes of pages at the ratio its packets have had (Channel.holdReceived).
 */
export const MULTIFD_HIDDEN_PAGE_BYTES = 4 * 1024 * 1024;
/**
 * The least a compressed channel's receive queue is held to, and the most. Not below a
 * loopback segment (64 KiB): with 4 KiB, a zstd migration of a sweeping guest stalled in
 * its first pass, the sender waiting on a window too small for one segment.
 */
const MIN_HELD_BYTES = 128 * 1024;
const MAX_HELD_BYTES = 8 * 1024 * 1024;

/** Where multifd pages land: the RAM loader (ram-load.ts). */
export interface MultifdPageSink {
  /** The blocks pages may name, in the loader's order. */
  blocks(): readonly { readonly idstr: string; readonly size: number }[];
  /** Page `offset` (checked) of block `b` is about to be written: the memory to copy it into. */
  multifdPage(b: number, offset: number): Uint8Array;
  /**
   * Where block `b`'s memory is in this process, when it has a fixed address: pages are
   * then read straight into it (readv) where the channel can, instead of through the
   * reader's buffers and a copy.
   */
  blockAddress?(b: number): number | undefined;
}

interface ChannelState {
  readonly id: number;
  readonly channel: Channel;
  readonly where: string;
  /** SYNC packets read, and how many of them the main stream has let go. */
  syncs: number;
  released: number;
  wake: (() => void) | undefined;
  ended: boolean;
  packets: number;
  pages: number;
  /**
   * The channel's scattered reads, once this channel reads by itself alone: from then on
   * every byte comes through readv — packet headers into a scratch the reader holds, pages
   * straight into guest RAM — and the socket never reads into a buffer of its own again.
   */
  io: ScatteredReader | null;
  /** The channel's decompression stream, with `multifd-compression`. */
  readonly decompressor: PacketDecompressor | undefined;
  /** Compressed: bytes read into the stream and bytes of pages out of it, and the receive queue set last (0: not yet). */
  compressedIn: number;
  pagesOut: number;
  held: number;
}

export class MultifdReceiver {
  readonly #channels: number;
  readonly #uuid: Uint8Array;
  readonly #sink: MultifdPageSink;
  readonly #onError: (error: Error) => void;
  readonly #slots: (ChannelState | undefined)[];
  readonly #all: Channel[] = [];
  #error: Error | undefined;
  /** Wakes syncMain() when a channel connects, reaches a SYNC, ends or fails. */
  #changed: (() => void) | undefined;
  #connectTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #compression: MultifdCompression;

  /**
   * `channels`: multifd-channels here; `uuid`: this VM's (QEMU compares the source's with
   * it); `compression`: multifd-compression here (the source's must be the same);
   * `onError`: a channel failed — the caller breaks the main stream with the error, so
   * that the load stops wherever it is.
   */
  constructor(options: { channels: number; uuid: Uint8Array; sink: MultifdPageSink; onError: (error: Error) => void; connectWaitMs?: number; compression?: MultifdCompression }) {
    this.#compression = options.compression ?? 'none';
    this.#channels = options.channels;
    this.#uuid = options.uuid;
    this.#sink = options.sink;
    this.#onError = options.onError;
    this.#slots = new Array<ChannelState | undefined>(options.channels).fill(undefined);
    const waitMs = options.connectWaitMs ?? MULTIFD_CONNECT_WAIT_MS;
    this.#connectTimer = setTimeout(() => {
      const connected = this.#slots.filter((s) => s !== undefined).length;
      this.#fail(new MigrationError(`multifd: ${connected} of ${this.#channels} channels connected within ${waitMs / 1000} s of the main one (is multifd-channels the same on both sides?)`));
    }, waitMs);
  }

  /** Pages received on every channel so far. */
  get pages(): number {
    return this.#slots.reduce((sum, s) => sum + (s?.pages ?? 0), 0);
  }

  get packets(): number {
    return this.#slots.reduce((sum, s) => sum + (s?.packets ?? 0), 0);
  }

  /** A connection after the main one: read its initial packet, then its packets in the background. */
  add(channel: Channel): void {
    this.#all.push(channel);
    if (this.#error) {
      channel.destroy(this.#error);
      return;
    }
    this.#serve(channel).catch((err: unknown) => this.#fail(err instanceof Error ? err : new MigrationError(String(err))));
  }

  /**
   * The main stream reached an EOS (multifd_recv_sync_main): wait until every channel has
   * read up to its next SYNC packet, then let them all go on. Rejects with the first
   * channel error.
   */
  async syncMain(): Promise<void> {
    for (;;) {
      if (this.#error) throw this.#error;
      const slots = this.#slots;
      let ready = true;
      for (const s of slots) {
        if (s === undefined || s.syncs <= s.released) {
          ready = false;
          if (s?.ended) throw this.#fail(new StreamTruncatedError(`${s.where}: ended before the SYNC the main stream waits for`, 0, 'multifd'));
        }
      }
      if (ready) break;
      await new Promise<void>((resolve) => (this.#changed = resolve));
    }
    for (const s of this.#slots) {
      s!.released++;
      const wake = s!.wake;
      s!.wake = undefined;
      wake?.();
    }
  }

  /** The stream is loaded (or failed): close every channel. */
  close(error?: Error): void {
    if (this.#connectTimer !== undefined) clearTimeout(this.#connectTimer);
    this.#connectTimer = undefined;
    this.#error ??= error ?? new MigrationError('multifd: the incoming migration is over');
    for (const c of this.#all) c.destroy(error);
    this.#notify();
  }

  async #serve(channel: Channel): Promise<void> {
    const r = new StreamReader(channel);
    const where = `multifd connection ${channel.description}`;
    await r.ensure(MULTIFD_INIT_BYTES, 'multifd');
    const { id } = decodeMultifdInit(r.bytes(MULTIFD_INIT_BYTES), this.#uuid, this.#channels, where);
    if (this.#slots[id] !== undefined) throw new StreamFormatError(`${where}: multifd: received id '${id}' already setup'`, 24, 'multifd');
    const decompressor = this.#compression === 'none' ? undefined : packetDecompressor(this.#compression);
    const s: ChannelState = { id, channel, where: `multifd channel ${id} (${channel.description})`, syncs: 0, released: 0, wake: undefined, ended: false, packets: 0, pages: 0, io: null, decompressor, compressedIn: 0, pagesOut: 0, held: 0 };
    this.#slots[id] = s;
    if (this.#slots.every((slot) => slot !== undefined) && this.#connectTimer !== undefined) {
      clearTimeout(this.#connectTimer);
      this.#connectTimer = undefined;
    }
    this.#notify();
    const blocks = this.#sink.blocks();
    const addresses = new Float64Array(MULTIFD_PACKET_PAGES);
    const scratch = new Uint8Array(MULTIFD_PACKET_BYTES);
    // Pages can go straight into guest RAM where the blocks have a fixed address (and come uncompressed).
    const straight = decompressor === undefined && blocks.length > 0 && blocks.every((_, b) => this.#sink.blockAddress?.(b) !== undefined);
    try {
      await this.#packets(r, s, blocks, addresses, scratch, straight);
    } finally {
      s.io?.resume();
      decompressor?.close();
    }
  }

  async #packets(r: StreamReader, s: ChannelState, blocks: ReturnType<MultifdPageSink['blocks']>, addresses: Float64Array, scratch: Uint8Array, straight: boolean): Promise<void> {
    for (;;) {
      // Once the reader holds nothing and the socket has nothing of its own queued, this
      // channel reads through readv only (the socket's own reads stop until the end).
      if (straight && s.io === null && r.available() === 0) s.io = r.scattered();
      const whole = s.io !== null && r.available() < MULTIFD_PACKET_BYTES
        ? await readExactly(r, s.io, MULTIFD_PACKET_BYTES - r.available(), MULTIFD_PACKET_BYTES)
        : await r.fill(MULTIFD_PACKET_BYTES);
      if (!whole) {
        if (r.available() > 0) {
          throw new StreamTruncatedError(`${s.where}: ended at offset ${r.offset + r.available()} inside a packet (${MULTIFD_PACKET_BYTES} bytes from offset ${r.offset})`, r.offset + r.available(), 'multifd');
        }
        s.ended = true;
        this.#notify();
        return;
      }
      if (this.#error) return;
      const at = r.offset;
      const packet = decodeMultifdPacket(r.bytes(MULTIFD_PACKET_BYTES), at, s.where, compressionFlag(this.#compression));
      s.packets++;
      if (packet.normalPages > 0) {
        const b = blocks.findIndex((block) => block.idstr === packet.ramblock);
        if (b < 0) throw new StreamFormatError(`${s.where}: multifd: unknown ram block ${packet.ramblock}`, at + 64, 'multifd');
        const size = blocks[b]!.size;
        const offsets = packet.offsets;
        for (let i = 0; i < packet.normalPages; i++) {
          const offset = offsets[i]!;
          if (offset > size - PAGE_BYTES || offset % PAGE_BYTES !== 0) {
            throw new StreamFormatError(`${s.where}: multifd: offset ${offset % PAGE_BYTES !== 0 && offset <= size - PAGE_BYTES ? 'not page-aligned' : 'too long'} ${offset} (max ${size})`, at + MULTIFD_PACKET_BYTES - 8 * (128 - i), 'multifd');
          }
        }
        if (s.decompressor !== undefined) await this.#readCompressed(r, s, b, offsets, packet.normalPages, packet.nextPacketSize, at);
        else await this.#readPages(r, s, b, offsets, packet.normalPages, addresses, scratch);
        if (this.#error) return;
        s.pages += packet.normalPages;
      }
      if ((packet.flags & MULTIFD_FLAG_SYNC) !== 0) {
        s.syncs++;
        this.#notify();
        // Held until the main stream's EOS lets it go (syncMain): pages after this SYNC
        // may be newer copies of pages another channel still carries from before it.
        while (s.released < s.syncs && !this.#error) await new Promise<void>((resolve) => (s.wake = resolve));
        if (this.#error) return;
      }
    }
  }

  /**
   * The `count` pages of a packet: copied from what the reader holds while it holds whole
   * pages, then — where the channel has scattered reads — the rest read straight into guest
   * RAM in one readv, as the main stream's first pass is (ram-scatter.ts); otherwise page
   * by page through the reader.
   */
  async #readPages(r: StreamReader, s: ChannelState, b: number, offsets: Float64Array, count: number, addresses: Float64Array, scratch: Uint8Array): Promise<void> {
    const sink = this.#sink;
    const base = sink.blockAddress?.(b);
    for (let i = 0; i < count; i++) {
      const offset = offsets[i]!;
      const ram = sink.multifdPage(b, offset);
      // A page begun in the reader (only before this channel reads through readv alone).
      if (s.io !== null && r.available() > 0 && r.available() < PAGE_BYTES && !(await readExactly(r, s.io, PAGE_BYTES - r.available(), PAGE_BYTES))) {
        throw new StreamTruncatedError(`${s.where}: ended at offset ${r.offset + r.available()} inside the pages of a packet`, r.offset + r.available(), 'multifd');
      }
      if (r.available() >= PAGE_BYTES) {
        r.copyTo(ram, offset, PAGE_BYTES);
        continue;
      }
      const io = s.io ?? (base !== undefined && r.available() === 0 ? r.scattered() : null);
      if (io !== null) {
        addresses[0] = base! + offset;
        for (let j = i + 1; j < count; j++) {
          sink.multifdPage(b, offsets[j]!);
          addresses[j - i] = base! + offsets[j]!;
        }
        let whole: boolean;
        try {
          whole = await readMultifdPagesStraight(r, io, addresses, count - i, scratch);
        } finally {
          if (io !== s.io) io.resume();
        }
        if (!whole) throw new StreamTruncatedError(`${s.where}: ended at offset ${r.offset} inside the pages of a packet`, r.offset, 'multifd');
        return;
      }
      await r.ensure(PAGE_BYTES, 'multifd');
      if (this.#error) return;
      r.copyTo(ram, offset, PAGE_BYTES);
    }
  }

  /**
   * A compressed packet's data (QEMU's zlib_recv_pages / zstd_recv_pages): `size` bytes
   * (checked against the cap by the header's decoder) through the channel's stream, which
   * must make exactly `count` pages, each then copied to its place.
   */
  async #readCompressed(r: StreamReader, s: ChannelState, b: number, offsets: Float64Array, count: number, size: number, at: number): Promise<void> {
    if (!(await r.fill(size))) {
      throw new StreamTruncatedError(`${s.where}: ended at offset ${r.offset + r.available()} inside the compressed pages of the packet at offset ${at} (${size} bytes from offset ${r.offset})`, r.offset + r.available(), 'multifd');
    }
    const data = r.bytes(size);
    let pages: Uint8Array;
    try {
      pages = await s.decompressor!.decompress(data, count * PAGE_BYTES);
    } catch (err) {
      throw new StreamFormatError(`${s.where}: multifd: the packet at offset ${at}: ${(err as Error).message}`, at + MULTIFD_PACKET_BYTES, 'multifd');
    }
    if (this.#error) return;
    for (let i = 0; i < count; i++) {
      const offset = offsets[i]!;
      this.#sink.multifdPage(b, offset).set(pages.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES), offset);
    }
    s.compressedIn += size;
    s.pagesOut += count * PAGE_BYTES;
    holdReceived(s);
  }

  #notify(): void {
    const changed = this.#changed;
    this.#changed = undefined;
    changed?.();
  }

  #fail(error: Error): Error {
    if (this.#error) return this.#error;
    this.#error = error;
    if (this.#connectTimer !== undefined) clearTimeout(this.#connectTimer);
    this.#connectTimer = undefined;
    for (const c of this.#all) c.destroy(error);
    for (const s of this.#slots) {
      const wake = s?.wake;
      if (s) s.wake = undefined;
      wake?.();
    }
    this.#notify();
    this.#onError(error);
    return error;
  }
}

/**
 * The connections after the main one (QEMU's migration_ioc_process_incoming): with the
 * `multifd` capability, every one is a channel of pages for a new MultifdReceiver, which
 * `ram` then waits for at every EOS — every one, not just as many as expected: one too
 * many is refused by its number rather than left unread (its pages would never land, and
 * its sender would wait for ever). Without the capability, one is a source that uses
 * multifd against a destination that does not: its pages would never arrive, so
 * `breakMain` fails the migration (QEMU asserts).
 */
export function acceptAfterMain(
  listener: Listener,
  o: {
    multifd: boolean; channels: number; uuid: Uint8Array; connectWaitMs?: number; compression?: MultifdCompression;
    ram: { readonly multifdSink: MultifdPageSink; receiveMultifd(receiver: MultifdReceiver): void };
    breakMain: (cause: Error) => void;
  },
): MultifdReceiver | undefined {
  if (!o.multifd) {
    listener.accept().then(
      (extra) => {
        const error = new MigrationError(`A second connection arrived on ${listener.address}: the source uses multifd, but the multifd capability is off here (turn it on before the source connects)`);
        extra.destroy(error);
        o.breakMain(error);
      },
      () => {},
    );
    return undefined;
  }
  const receiver = new MultifdReceiver({
    channels: o.channels, uuid: o.uuid, sink: o.ram.multifdSink, onError: o.breakMain,
    ...(o.connectWaitMs !== undefined ? { connectWaitMs: o.connectWaitMs } : {}),
    ...(o.compression !== undefined ? { compression: o.compression } : {}),
  });
  o.ram.receiveMultifd(receiver);
  const acceptNext = (): void => {
    listener.accept().then((c) => {
      receiver.add(c);
      acceptNext();
    }, () => {});
  };
  acceptNext();
  return receiver;
}

/**
 * A compressed channel's receive queue held to MULTIFD_HIDDEN_PAGE_BYTES of pages at the
 * ratio so far (MIN_HELD_BYTES to MAX_HELD_BYTES), set again only when that moved by a
 * quarter or more.
 */
function holdReceived(s: ChannelState): void {
  if (s.channel.holdReceived === undefined || s.pagesOut === 0) return;
  const wanted = Math.round(Math.min(MAX_HELD_BYTES, Math.max(MIN_HELD_BYTES, (MULTIFD_HIDDEN_PAGE_BYTES * s.compressedIn) / s.pagesOut)));
  if (s.held !== 0 && wanted > s.held * 0.75 && wanted < s.held * 1.25) return;
  s.held = wanted;
  s.channel.holdReceived(wanted);
}
