// The destination's multifd channels (QEMU 7.2's multifd_recv_*): every connection after
// the main one opens with an initial packet naming its channel, then carries packets of
// pages, each copied straight into guest RAM. A packet flagged SYNC holds its channel
// until the main stream reaches the EOS that follows it (syncMain()): every page the
// source sent before that EOS has then landed, whichever channel it took.

import { MigrationError, StreamFormatError, StreamTruncatedError } from '../errors.js';
import type { Channel } from '../transport/channel.js';
import { StreamReader } from '../stream/reader.js';
import { MULTIFD_FLAG_SYNC, MULTIFD_INIT_BYTES, MULTIFD_PACKET_BYTES, decodeMultifdInit, decodeMultifdPacket } from '../stream/multifd.js';

const PAGE_BYTES = 4096;
/**
 * How long the channels may take to connect after the main one: the source opens them
 * all at once right after it (QEMU's destination waits without end; a source with fewer
 * channels than this side expects would then hang both).
 */
export const MULTIFD_CONNECT_WAIT_MS = 10_000;

/** Where multifd pages land: the RAM loader (ram-load.ts). */
export interface MultifdPageSink {
  /** The blocks pages may name, in the loader's order. */
  blocks(): readonly { readonly idstr: string; readonly size: number }[];
  /** Page `offset` (checked) of block `b` is about to be written: the memory to copy it into. */
  multifdPage(b: number, offset: number): Uint8Array;
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

  /**
   * `channels`: multifd-channels here; `uuid`: this VM's (QEMU compares the source's with
   * it); `onError`: a channel failed — the caller breaks the main stream with the error,
   * so that the load stops wherever it is.
   */
  constructor(options: { channels: number; uuid: Uint8Array; sink: MultifdPageSink; onError: (error: Error) => void; connectWaitMs?: number }) {
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
    const s: ChannelState = { id, channel, where: `multifd channel ${id} (${channel.description})`, syncs: 0, released: 0, wake: undefined, ended: false, packets: 0, pages: 0 };
    this.#slots[id] = s;
    if (this.#slots.every((slot) => slot !== undefined) && this.#connectTimer !== undefined) {
      clearTimeout(this.#connectTimer);
      this.#connectTimer = undefined;
    }
    this.#notify();
    const blocks = this.#sink.blocks();
    for (;;) {
      if (!(await r.fill(MULTIFD_PACKET_BYTES))) {
        if (r.available() > 0) {
          throw new StreamTruncatedError(`${s.where}: ended at offset ${r.offset + r.available()} inside a packet (${MULTIFD_PACKET_BYTES} bytes from offset ${r.offset})`, r.offset + r.available(), 'multifd');
        }
        s.ended = true;
        this.#notify();
        return;
      }
      if (this.#error) return;
      const at = r.offset;
      const packet = decodeMultifdPacket(r.bytes(MULTIFD_PACKET_BYTES), at, s.where);
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
        for (let i = 0; i < packet.normalPages; i++) {
          if (r.available() < PAGE_BYTES) await r.ensure(PAGE_BYTES, 'multifd');
          if (this.#error) return;
          r.copyTo(this.#sink.multifdPage(b, offsets[i]!), offsets[i]!, PAGE_BYTES);
        }
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
