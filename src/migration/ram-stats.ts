// What the RAM handler counts: QEMU's ram_counters as query-migrate reports them under
// `ram`, and Ferry's per-pass account (x-ferry-query-migrate-passes): what each pass, from
// one dirty-log sync to the next, found dirty and sent.

import { PAGE_SIZE } from '../hypervisor/types.js';

/** One pass over the to-send bitmap, from one dirty-log sync to the next (for reports). */
export interface RamPass {
  /** The dirty-sync-count that opened it (1 is the first pass: every page). */
  readonly pass: number;
  /** Milliseconds on the engine's clock. */
  readonly startMs: number;
  endMs: number | undefined;
  /** Pages the sync that opened the pass found written since the one before (all pages for pass 1). */
  readonly dirtyPages: number;
  pagesSent: number;
  zeroPages: number;
  bytesSent: number;
}

/** The figures query-migrate reports under `ram` (QEMU's ram_counters). */
export class RamStats {
  /** Bytes of RAM data put on the stream (pages and chunk headers). */
  transferred = 0;
  /** Zero pages sent as ZERO chunks (QEMU still calls them duplicate). */
  duplicate = 0;
  /** Pages sent whole. */
  normal = 0;
  dirtySyncCount = 0;
  /** Pages dirtied per second, measured over periods of at least a second. */
  dirtyPagesRate = 0;
  /** RAM bytes sent while the guest still ran, and after it stopped. */
  precopyBytes = 0;
  downtimeBytes = 0;
  /** RAM bytes sent once the destination ran the guest (post-copy), and the pages it asked for. */
  postcopyBytes = 0;
  postcopyRequests = 0;
  /** Pages still to send (the to-send bitmap's population). */
  remainingPages = 0;
  /** Bytes of multifd packets (headers and pages), part of `transferred` (QEMU's multifd_bytes). */
  multifdBytes = 0;
  /** multifd-compression: what the channels' compression took in and gave out so far (the sender's own counts). */
  multifdCompression: { readonly compressedFrom: number; readonly compressedTo: number } | undefined;
  /** release-ram: bytes of guest RAM given back to the host here in post-copy. */
  releasedBytes = 0;
  totalBytes = 0;

  get normalBytes(): number {
    return this.normal * PAGE_SIZE;
  }

  get remainingBytes(): number {
    return this.remainingPages * PAGE_SIZE;
  }

  /** Pages sent, zero or whole: what pages-per-second counts. */
  get pagesSent(): number {
    return this.duplicate + this.normal;
  }
}

/** The passes of one migration, oldest first; the open one is brought up to date from the stats. */
export class RamPassLog {
  readonly passes: RamPass[] = [];
  readonly #stats: RamStats;
  #mark = { pages: 0, zero: 0, bytes: 0 };

  constructor(stats: RamStats) {
    this.#stats = stats;
  }

  /** A sync opened pass `pass` at `startMs`, finding `dirtyPages` written: the open pass ends there. */
  open(pass: number, startMs: number, dirtyPages: number): void {
    this.update(startMs);
    const stats = this.#stats;
    this.passes.push({ pass, startMs, endMs: undefined, dirtyPages, pagesSent: 0, zeroPages: 0, bytesSent: 0 });
    this.#mark = { pages: stats.pagesSent, zero: stats.duplicate, bytes: stats.transferred };
  }

  /** Bring the open pass's figures up to date; with `endMs`, close it. */
  update(endMs?: number): void {
    const open = this.passes[this.passes.length - 1];
    if (!open || open.endMs !== undefined) return;
    const stats = this.#stats;
    open.pagesSent = stats.pagesSent - this.#mark.pages;
    open.zeroPages = stats.duplicate - this.#mark.zero;
    open.bytesSent = stats.transferred - this.#mark.bytes;
    if (endMs !== undefined) open.endMs = endMs;
  }
}
