// Pages asked for ahead of the rest (QEMU's src_page_requests): a post-copy destination's
// faults (MIG_RP_MSG_REQ_PAGES) and the pages a background snapshot's guest waits to
// write; they go first, then the background walk over what is still to send. The pages
// sent are logged where they may be let go: a snapshot's to be written again, release-ram's
// to be given back to the host.

import { PAGE_SIZE } from '../hypervisor/types.js';
import { MigrationError } from '../errors.js';
import { RamChunkWriter } from '../stream/ram-codec.js';
import type { StreamWriter } from '../stream/writer.js';
import type { RamBitmaps } from './ram-bitmap.js';
import type { RamStats } from './ram-stats.js';
import { WORDS_PER_PAGE, isZeroPage, wordsOf } from './ram-pages.js';

export interface RamPageRequestsOptions {
  /** background-snapshot: a page is copied into the stream, never sent by reference, and logged as sent. */
  readonly snapshot: boolean;
  /** release-ram: pages sent are logged, to be given back by release(). */
  readonly releaseRam: boolean;
  /** Counts the bytes sent (RamHandler's accounting). */
  readonly account: (bytes: number) => void;
}

export class RamPageRequests {
  readonly #bitmaps: RamBitmaps;
  readonly #stats: RamStats;
  readonly #opts: RamPageRequestsOptions;
  /** Pages asked for: block index and page number, in pairs. */
  readonly #pages: number[] = [];
  #lastRequestedBlock: string | undefined;
  /** Pages sent and not yet taken (block index and page, in pairs). */
  #sentLog: number[] = [];
  #releasedBeforeSwitch = false;

  constructor(bitmaps: RamBitmaps, stats: RamStats, options: RamPageRequestsOptions) {
    this.#bitmaps = bitmaps;
    this.#stats = stats;
    this.#opts = options;
  }

  /** Pages asked for that have not gone yet. */
  get queued(): boolean {
    return this.#pages.length > 0;
  }

  /**
   * A post-copy destination asks for pages (MIG_RP_MSG_REQ_PAGES[_ID]): queued to go ahead
   * of the rest. `idstr` undefined: the block of the last request. Throws on a request
   * QEMU's source refuses too (ram_save_queue_pages): no block yet, an unknown block, a
   * range not whole pages or past the block's end.
   */
  queuePages(idstr: string | undefined, start: number, length: number): void {
    const name = idstr ?? this.#lastRequestedBlock;
    if (name === undefined) throw new MigrationError('The destination asked for pages without naming a RAM block first');
    const b = this.#bitmaps.blockIndex(name);
    const block = this.#bitmaps.memory[b];
    if (block === undefined) throw new MigrationError(`The destination asked for pages of an unknown RAM block "${name}"`);
    if (start % PAGE_SIZE !== 0 || length % PAGE_SIZE !== 0 || length === 0) {
      throw new MigrationError(`The destination asked for a misaligned range of "${name}": start 0x${start.toString(16)}, length 0x${length.toString(16)}`);
    }
    if (start + length > block.size) {
      throw new MigrationError(`The destination asked for 0x${start.toString(16)}+0x${length.toString(16)}, past the end of "${name}" (0x${block.size.toString(16)} bytes)`);
    }
    this.#lastRequestedBlock = name;
    this.#stats.postcopyRequests++;
    for (let page = start / PAGE_SIZE; page < (start + length) / PAGE_SIZE; page++) this.#pages.push(b, page);
  }

  /** background-snapshot: the guest waits to write page `page` of block `b`: it goes ahead of the rest. */
  queueWrite(b: number, page: number): void {
    this.#pages.push(b, page);
  }

  /** Post-copy recovery: the requests from before the break are dropped (the destination asks again). */
  clear(): void {
    this.#pages.length = 0;
  }

  /** The pages sent since the last call (block index and page, in pairs); they may be written again. */
  takeSent(): number[] {
    const sent = this.#sentLog;
    this.#sentLog = [];
    return sent;
  }

  /**
   * The pages asked for first (those still to send; one sent meanwhile is not sent again),
   * then up to `backgroundPages` more in order, then EOS.
   */
  send(w: StreamWriter, backgroundPages: number): void {
    const chunks = new RamChunkWriter(w);
    const before = w.bytesWritten;
    const requests = this.#pages;
    for (let i = 0; i < requests.length; i += 2) this.#sendOne(chunks, requests[i]!, requests[i + 1]!);
    requests.length = 0;
    let left = backgroundPages;
    const bm = this.#bitmaps;
    const memory = bm.memory;
    while (left > 0 && this.#stats.remainingPages > 0) {
      const b = bm.cursorBlock;
      const toSend = bm.toSend[b];
      if (toSend === undefined || b >= memory.length) {
        bm.cursorBlock = 0;
        bm.cursorWord = 0;
        continue;
      }
      while (left > 0 && bm.cursorWord < toSend.length) {
        const bits = toSend[bm.cursorWord]! | 0;
        if (bits === 0) {
          bm.cursorWord++;
          continue;
        }
        this.#sendOne(chunks, b, bm.cursorWord * 32 + (31 - Math.clz32(bits & -bits)));
        left--;
      }
      if (bm.cursorWord >= toSend.length) {
        bm.cursorBlock = (b + 1) % memory.length;
        bm.cursorWord = 0;
      }
    }
    chunks.eos();
    this.#opts.account(w.bytesWritten - before);
  }

  /** Send page `page` of block `b` if it is still to send (ZERO chunk if it reads as zero). */
  #sendOne(chunks: RamChunkWriter, b: number, page: number): void {
    const bm = this.#bitmaps;
    if (!bm.take(b, page)) return;
    const stats = this.#stats;
    stats.remainingPages--;
    const block = bm.memory[b]!;
    const offset = page * PAGE_SIZE;
    const neverBacked = bm.firstUse(b, page);
    const words = (bm.words[b] = wordsOf(block, bm.words[b]));
    const snapshot = this.#opts.snapshot;
    if (neverBacked || isZeroPage(words, page * WORDS_PER_PAGE)) {
      chunks.zero(block.idstr, offset);
      stats.duplicate++;
    } else {
      // A snapshot's page is copied now: it may be written the moment it is let go.
      chunks.pageOf(block.idstr, block.bytes, offset, snapshot ? undefined : block.hostAddress);
      stats.normal++;
    }
    if (snapshot || this.#opts.releaseRam) this.#sentLog.push(b, page);
  }

  /**
   * release-ram, after the switch to post-copy, once the channel has taken what was written
   * (the pages are the kernel's copies then, or held by a pipe): the first call gives back
   * every page not still to send — all that went before the switch — and each later one the
   * pages sent since (QEMU's ram_postcopy_migrated_memory_release and ram_release_page).
   * Returns the bytes given back; nothing without the capability.
   */
  release(): number {
    if (!this.#opts.releaseRam) return 0;
    const bm = this.#bitmaps;
    let bytes = 0;
    if (!this.#releasedBeforeSwitch) {
      this.#releasedBeforeSwitch = true;
      this.#sentLog = [];
      for (let b = 0; b < bm.memory.length; b++) {
        for (const run of bm.runs(b, false)) bytes += this.#discard(b, run.start / PAGE_SIZE, run.length / PAGE_SIZE);
      }
    } else {
      const sent = this.takeSent();
      // Runs of consecutive pages of one block, one madvise each.
      for (let i = 0; i < sent.length;) {
        const b = sent[i]!;
        const first = sent[i + 1]!;
        let count = 1;
        i += 2;
        while (i < sent.length && sent[i] === b && sent[i + 1] === first + count) {
          count++;
          i += 2;
        }
        bytes += this.#discard(b, first, count);
      }
    }
    this.#stats.releasedBytes += bytes;
    return bytes;
  }

  #discard(b: number, page: number, count: number): number {
    const block = this.#bitmaps.memory[b]!;
    if (block.discard === undefined) return 0;
    block.discard(page * PAGE_SIZE, count * PAGE_SIZE);
    return count * PAGE_SIZE;
  }
}
