// The RAM savevm handler ("ram", instance 0, version 4), both sides: the source walks a
// to-send bitmap (every page on the first pass, then what the dirty log reports),
// sending all-zero pages as ZERO chunks, under the rate limiter; the destination
// (ram-load.ts) writes chunks straight into guest RAM. Counters feed query-migrate's `ram`.

import { PAGE_SIZE } from '../hypervisor/types.js';
import type { GuestMemoryBlock } from '../hypervisor/types.js';
import { MigrationError } from '../errors.js';
import { RamChunkWriter } from '../stream/ram-codec.js';
import { MAX_DISCARDS_PER_COMMAND, MIG_CMD_POSTCOPY_RAM_DISCARD, discardData, writeCommand, type BlockRange } from '../stream/return-path.js';
import type { StreamReader } from '../stream/reader.js';
import type { StreamWriter } from '../stream/writer.js';
import type { VmdescDevice } from '../stream/format.js';
import type { RateLimiter } from './rate-limiter.js';
import { XBZRLE_SEND_PAGE, XBZRLE_UNCHANGED, XbzrleCache } from './xbzrle-cache.js';
import type { SaveVmHandler } from './savevm.js';
import type { MigrationVm } from './vm.js';
import type { PostcopyRamSink } from './postcopy-incoming.js';
import type { DirtyPeriod } from './auto-converge.js';
import { RAM_VERSION, RamLoader } from './ram-load.js';
import { WORDS_PER_PAGE, isZeroPage, popcount32, wordsOf } from './ram-pages.js';
import { settledBy } from './deadline.js';
import { keepShape } from '../hot-shapes.js';
import type { MultifdSender } from './multifd-send.js';
import type { MultifdPageSink, MultifdReceiver } from './multifd-recv.js';

export { isZeroPage } from './ram-pages.js';
export { RAM_VERSION } from './ram-load.js';

export const RAM_IDSTR = 'ram';
/** How often (in pages) the sender looks at the clock and the rate limiter. */
const CHECK_EVERY_PAGES = 64;

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

export interface RamHandlerOptions {
  readonly now: () => number;
  readonly limiter: RateLimiter;
  /** How long one iterate() may run before it returns so the event loop can breathe. */
  readonly sliceMs?: number;
  /** Told of every dirty-log sync with the new dirty-sync-count (MIGRATION_PASS). */
  readonly onSync?: (pass: number) => void;
  /** The `xbzrle` capability: pages sent again go as deltas against a cache of this many bytes. */
  readonly xbzrleCacheSize?: number;
  /**
   * Told at the first sync a second or more after the last period ended, of the bytes sent
   * and the pages newly found dirty since (auto-converge: QEMU's migration_trigger_throttle).
   */
  readonly onDirtyPeriod?: (period: DirtyPeriod) => void;
  /**
   * The `background-snapshot` capability: RAM as it was at one moment (snapshotPoint()),
   * each page once — no dirty log; pages go copied into the stream, never by reference (a
   * page is let go for the guest to write as soon as it is in the stream's buffer), and
   * the pages sent are logged for that (takeSent()). The driver feeds pages the guest
   * wants to write first (queueWrite()) and sends with sendPostcopy().
   */
  readonly snapshot?: boolean;
  /**
   * The `release-ram` capability: after the switch to post-copy, the pages already sent,
   * then each page as it goes, are given back to the host (releaseSent(); QEMU's
   * ram_postcopy_migrated_memory_release and ram_release_page). The source can then no
   * longer run the guest.
   */
  readonly releaseRam?: boolean;
}

export class RamHandler implements SaveVmHandler {
  readonly idstr = RAM_IDSTR;
  readonly instanceId = 0;
  readonly version = RAM_VERSION;
  readonly minimumVersion = RAM_VERSION;
  readonly stats = new RamStats();
  /** Present when the `xbzrle` capability is on (source side). */
  readonly xbzrle: XbzrleCache | undefined;

  readonly #vm: MigrationVm;
  readonly #opts: RamHandlerOptions;
  readonly #sliceMs: number;
  #words: Uint32Array[] = [];
  /** Pages still to send, one bit per page (the DirtyBitmap layout). */
  #toSend: Uint32Array[] = [];
  #cursorBlock = 0;
  #cursorWord = 0;
  #stopped = false;
  #rateWindowStart = 0;
  #rateWindowPages = 0;
  /** This period's pages newly set in the to-send bitmap, and the bytes sent when it began. */
  #periodNewPages = 0;
  #periodTransferredMark = 0;
  #loggingStarted = false;
  /** QEMU enables XBZRLE only once the first round (every page) is done. */
  #xbzrleActive = false;
  /** RAM-wide page number of each block's first page (XBZRLE cache keys). */
  #blockBasePage: number[] = [];
  /** Pages per block, taken at setup: the hot loops read these arrays, not the VM. */
  #blockPages: number[] = [];
  /** The VM's blocks, taken at setup (see #blockPages). */
  #memory: readonly GuestMemoryBlock[] = [];
  /**
   * Source: per block, the host's residency at setup (bit 0 per page); a page the host
   * never backed reads as zero, so its first send is a ZERO chunk without reading it —
   * reading would fault it in, which costs more than the whole rest of its trip. Each
   * entry is used once, and every sync marks the pages the log reports as backed: a page
   * written after setup is read for real, even when its dirty bit is folded in before the
   * first pass reaches it.
   */
  #untouched: (Uint8Array | undefined)[] = [];
  /** Destination: loads the stream's RAM chunks into guest RAM (ram-load.ts). */
  readonly #loader: RamLoader;
  /** Source, `multifd`: pages of data go on these channels, zero pages still on the main stream. */
  #multifd: MultifdSender | undefined;
  /** Per-pass figures, oldest first (source). */
  readonly passes: RamPass[] = [];

  constructor(vm: MigrationVm, options: RamHandlerOptions) {
    keepShape(this);
    this.#vm = vm;
    this.#opts = options;
    this.#sliceMs = options.sliceMs ?? 20;
    this.xbzrle = options.xbzrleCacheSize !== undefined ? new XbzrleCache(options.xbzrleCacheSize) : undefined;
    this.#loader = new RamLoader(vm);
  }

  /**
   * The `multifd` capability (source): pages of data go in packets on `sender`'s channels
   * from now on, and every EOS is preceded by a SYNC on each (QEMU's ram_save_multifd_page
   * and multifd_send_sync_main). Before setup().
   */
  useMultifd(sender: MultifdSender): void {
    if (this.xbzrle !== undefined || this.#opts.snapshot) throw new MigrationError('multifd carries whole pages only: not with xbzrle or a background snapshot');
    this.#multifd = sender;
    this.#multifdMark = sender.bytesCounted;
    if (sender.compressing) this.stats.multifdCompression = sender;
  }

  /** The multifd channels' bytes already counted in stats.multifdBytes. */
  #multifdMark = 0;

  #noteMultifd(mf: MultifdSender): void {
    const now = mf.bytesCounted;
    this.stats.multifdBytes += now - this.#multifdMark;
    this.#multifdMark = now;
  }

  /** Pages sent from now on count as downtime bytes (the guest is stopped). */
  markStopped(): void {
    this.#stopped = true;
  }

  /** A switchover was called off and the guest runs again: pages sent from now on are pre-copy again. */
  markRunning(): void {
    this.#stopped = false;
    this.#syncedWhileStopped = false;
  }

  /** Set once the dirty log was synced with the guest stopped: nothing can be dirtied after that. */
  #syncedWhileStopped = false;

  // ---- source ----

  async setup(w: StreamWriter): Promise<void> {
    const memory = this.#vm.memory;
    this.#memory = memory;
    this.#words = memory.map((b) => wordsOf(b));
    this.#toSend = memory.map((b) => {
      const pages = b.size / PAGE_SIZE;
      const bitmap = new Uint32Array(Math.ceil(pages / 32)).fill(0xffffffff);
      if (pages % 32 !== 0) bitmap[bitmap.length - 1] = (2 ** (pages % 32) - 1) >>> 0;
      return bitmap;
    });
    this.stats.totalBytes = memory.reduce((sum, b) => sum + b.size, 0);
    let base = 0;
    this.#blockBasePage = memory.map((b) => {
      const first = base;
      base += b.size / PAGE_SIZE;
      return first;
    });
    this.#blockPages = memory.map((b) => b.size / PAGE_SIZE);
    this.stats.remainingPages = this.stats.totalBytes / PAGE_SIZE;
    const before = w.bytesWritten;
    new RamChunkWriter(w).memSize(memory.map((b) => ({ idstr: b.idstr, size: b.size })));
    this.#rateWindowStart = this.#opts.now();
    // A snapshot needs no dirty log (QEMU's ram_init_bitmaps neither starts nor syncs one
    // for background-snapshot); which pages were never backed is asked at its moment.
    if (!this.#opts.snapshot) {
      this.#vm.dirtyLog.start();
      this.#loggingStarted = true;
      // After logging started: a page touched from here on is in the log, whatever this says.
      this.#untouched = memory.map((b) => b.residency?.());
      // QEMU syncs once at setup (ram_init_bitmaps): the first pass, every page, is pass 1.
      this.#sync();
    }
    const mf = this.#multifd;
    const mfBefore = mf?.bytesCounted ?? 0;
    mf?.sync();
    new RamChunkWriter(w).eos();
    this.#account(w.bytesWritten - before + (mf === undefined ? 0 : mf.bytesCounted - mfBefore));
    if (mf !== undefined) this.#noteMultifd(mf);
  }

  pending(): number {
    return this.stats.remainingBytes;
  }

  pendingExact(): number {
    this.#sync();
    return this.stats.remainingBytes;
  }

  async iterate(w: StreamWriter): Promise<void> {
    await this.#send(w, true);
    await this.#settle(w);
  }

  async complete(w: StreamWriter): Promise<VmdescDevice | undefined> {
    if (this.#opts.snapshot) {
      // Every page went before (the snapshot's driver sends them all): the section ends.
      if (this.stats.remainingPages > 0) throw new MigrationError(`The snapshot ended with ${this.stats.remainingPages} pages of RAM not sent`);
      new RamChunkWriter(w).eos();
      return undefined;
    }
    if (!this.#syncedWhileStopped) this.#sync();
    await this.#send(w, false);
    await this.#settle(w);
    return undefined;
  }

  /**
   * The guest is stopped: sync the dirty log and send what is pending until everything is
   * out, the engine's clock reaches `until` (the downtime guard's deadline), or `giveUp`
   * says the deadline cannot be met — asked before waiting for the channel to take a
   * backlog, so that a hopeless stop ends before that wait rather than after it. True when
   * nothing is left; complete() then only ends the section.
   */
  async sendWhileStopped(w: StreamWriter, until: number, giveUp?: () => boolean): Promise<boolean> {
    if (!this.#syncedWhileStopped) {
      this.#sync();
      this.#syncedWhileStopped = true;
    }
    await this.#send(w, false, until, giveUp);
    await this.#settle(w, until, giveUp);
    return this.stats.remainingPages === 0;
  }

  cleanup(): void {
    if (this.#loggingStarted && this.#vm.dirtyLog.active) this.#vm.dirtyLog.stop();
    this.#loggingStarted = false;
  }

  /** Fold the dirty log into the to-send bitmap (QEMU's migration_bitmap_sync). */
  #sync(): void {
    const logged = this.#vm.dirtyLog.sync();
    let dirtied = 0;
    let added = 0;
    for (let b = 0; b < this.#toSend.length; b++) {
      const toSend = this.#toSend[b]!;
      const log = logged[b];
      if (!log) continue;
      const n = Math.min(log.length, toSend.length);
      // A page written since setup no longer reads as zero, whatever the host said then:
      // its dirty bit may be folded into a to-send bit that is still pending, and the
      // first pass must then read it rather than send it as never backed.
      const untouched = this.#untouched[b];
      const pages = this.#blockPages[b]!;
      for (let i = 0; i < n; i++) {
        // Signed words throughout the bitmaps' loops: see #send.
        let bits = log[i]! | 0;
        // Bits past the block's last page (a bitmap rounded up by its accelerator) mean nothing.
        if (i === (pages >>> 5) && (pages & 31) !== 0) bits &= 2 ** (pages & 31) - 1;
        if (bits === 0) continue;
        dirtied += popcount32(bits);
        added += popcount32(bits & ~toSend[i]!);
        if (untouched !== undefined) markWritten(untouched, i, bits);
        toSend[i] = toSend[i]! | bits;
      }
    }
    this.stats.remainingPages += added;
    this.stats.dirtySyncCount++;
    const now0 = this.#opts.now();
    this.#closePass(now0);
    // The first sync (setup) finds nothing logged yet: its pass is every page.
    const firstPass = this.passes.length === 0;
    this.passes.push({
      pass: this.stats.dirtySyncCount, startMs: now0, endMs: undefined,
      dirtyPages: firstPass ? this.stats.remainingPages : dirtied,
      pagesSent: 0, zeroPages: 0, bytesSent: 0,
    });
    this.#passMark = { pages: this.stats.pagesSent, zero: this.stats.duplicate, bytes: this.stats.transferred };
    if (this.xbzrle) this.xbzrle.generation = this.stats.dirtySyncCount;
    this.#rateWindowPages += dirtied;
    if (!firstPass) this.#periodNewPages += added;
    const now = this.#opts.now();
    const elapsed = now - this.#rateWindowStart;
    if (elapsed >= 1000) {
      this.stats.dirtyPagesRate = Math.round((this.#rateWindowPages * 1000) / elapsed);
      this.#opts.onDirtyPeriod?.({
        transferredBytes: this.stats.transferred - this.#periodTransferredMark,
        dirtiedBytes: this.#periodNewPages * PAGE_SIZE,
      });
      this.#rateWindowPages = 0;
      this.#periodNewPages = 0;
      this.#periodTransferredMark = this.stats.transferred;
      this.#rateWindowStart = now;
    }
    this.#opts.onSync?.(this.stats.dirtySyncCount);
  }

  /**
   * Send pages from the to-send bitmap, from where the last call stopped, then EOS.
   * `limited`: stop when the rate limiter's window is spent or the time slice is over
   * (an iteration); otherwise send everything (completion, guest stopped) — or, with
   * `until`, stop there on the engine's clock, or once `giveUp` says so — and wait for the
   * channel to take a backlog no longer than that either.
   */
  async #send(w: StreamWriter, limited: boolean, until?: number, giveUp?: () => boolean): Promise<void> {
    const chunks = new RamChunkWriter(w);
    const memory = this.#memory;
    const limiter = this.#opts.limiter;
    const now = this.#opts.now;
    const deadline = now() + this.#sliceMs;
    // Look at the limiter often enough that one window overshoots its budget by ~1/8 at most.
    const checkEvery = limited ? Math.max(1, Math.min(CHECK_EVERY_PAGES, Math.floor(limiter.windowBudget / (8 * PAGE_SIZE)))) : CHECK_EVERY_PAGES;
    const stats = this.stats;
    const xbz = this.xbzrle;
    const mf = this.#multifd;
    // Bytes on the main stream and, with multifd, on its channels (pages at their own size,
    // compressed or not, as QEMU counts them): what is accounted.
    const written = (): number => (mf === undefined ? w.bytesWritten : w.bytesWritten + mf.bytesCounted);
    let bytesMark = written();
    let sinceCheck = 0;
    let visitedBlocks = 0;
    // Every checkEvery pages: account the bytes written since, wait out backpressure, and
    // end an iteration whose rate-limit window or time slice is spent. (Synchronous helpers:
    // an async one, allocating a promise each time, slowed the sender in bench/ram-path.)
    const account = (): void => {
      sinceCheck = 0;
      const now = written();
      this.#account(now - bytesMark);
      bytesMark = now;
      if (mf !== undefined) this.#noteMultifd(mf);
    };
    const stopNow = (): boolean => until !== undefined && (now() >= until || (giveUp?.() ?? false));
    const sliceOver = (): boolean => (limited && (limiter.exceeded() || now() >= deadline)) || stopNow();
    // Waiting for the channel to take what it holds: true when it did, false when the stop's
    // deadline (or its give-up test) came first. One function for every phase, awaited from
    // one place in the loop: a branch of #send that the warm-up reaches only now and then
    // (a backlog in a stop) had no type feedback when V8 compiled the loop, and the first
    // real migration to take it threw the optimised loop away, at ~1.3 GB/s while it was
    // compiled again (one stopped 1 GiB migration in five, --trace-deopt: "Insufficient type
    // feedback for generic named access" at `w.settled` in the stop's wait).
    const taken = (work: Promise<void>): Promise<boolean> => (until === undefined ? work.then(yes) : settledBy(work, until, now, giveUp));
    outer: while (visitedBlocks <= memory.length && stats.remainingPages > 0) {
      const b = this.#cursorBlock;
      const block = memory[b];
      const toSend = this.#toSend[b];
      let words = this.#words[b];
      if (!block || !toSend || !words) {
        this.#cursorBlock = 0;
        this.#cursorWord = 0;
        visitedBlocks++;
        continue;
      }
      // Cheap when nothing changed: compares the view's buffer with the block's current one.
      words = wordsOf(block, words);
      while (this.#cursorWord < toSend.length) {
        const wi = this.#cursorWord;
        // A signed word: as read from the Uint32Array, a word with bit 31 set is no small
        // integer in V8, and the optimised loop below boxed it on every page while it
        // stayed set — 16 bytes per page, 4 MB per GiB, and the collections that came of it
        // in the middle of the migration (V8's sampling heap profiler on the source).
        let bits = toSend[wi]! | 0;
        if (bits === 0) {
          this.#cursorWord++;
          continue;
        }
        // 32 pending pages the host never backed: 32 ZERO chunks at once, without reading
        // them (most of an idle guest's RAM).
        if (bits === -1 && xbz === undefined && this.#neverBacked32(b, wi)) {
          chunks.zeroRun(block.idstr, wi * 32 * PAGE_SIZE, 32);
          toSend[wi] = 0;
          stats.remainingPages -= 32;
          stats.duplicate += 32;
          this.#cursorWord++;
          sinceCheck += 32;
        } else {
          while (bits !== 0) {
            const bit = 31 - Math.clz32(bits & -bits);
            bits &= ~(1 << bit);
            toSend[wi] = bits;
            stats.remainingPages--;
            const page = wi * 32 + bit;
            const offset = page * PAGE_SIZE;
            const untouched = this.#untouched[b];
            let neverBacked = false;
            if (untouched !== undefined && page < untouched.length) {
              neverBacked = (untouched[page]! & 1) === 0;
              untouched[page] = 1;
            }
            if (neverBacked || isZeroPage(words, page * WORDS_PER_PAGE)) {
              chunks.zero(block.idstr, offset);
              stats.duplicate++;
              if (xbz) xbz.zeroSent(this.#blockBasePage[b]! + page);
            } else if (xbz && this.#xbzrleActive) {
              const len = xbz.encode(this.#blockBasePage[b]! + page, block.bytes, offset);
              if (len === XBZRLE_SEND_PAGE) {
                chunks.page(block.idstr, offset, xbz.current);
                stats.normal++;
              } else if (len !== XBZRLE_UNCHANGED) {
                chunks.xbzrle(block.idstr, offset, xbz.encoded.subarray(0, len));
              }
            } else if (mf !== undefined) {
              mf.queue(block.idstr, block.bytes, offset, block.hostAddress);
              stats.normal++;
            } else {
              chunks.pageOf(block.idstr, block.bytes, offset, block.hostAddress);
              stats.normal++;
            }
            if (++sinceCheck >= checkEvery) break;
          }
          // Done with the word, unless the check below came first: the loop then comes back
          // to it (its bits left are in the to-send bitmap).
          if (bits === 0) this.#cursorWord++;
        }
        // Every checkEvery pages, for both paths: account the bytes written since, wait out
        // backpressure, and end an iteration whose rate-limit window or time slice is spent.
        if (sinceCheck >= checkEvery) {
          account();
          if ((w.backlogged || (mf !== undefined && mf.backlogged)) && !(await taken(mf === undefined || w.backlogged ? w.settled() : mf.settled()))) break outer;
          // Memory can only be replaced (a grown WebAssembly memory) while this awaited.
          words = wordsOf(block, words);
          if (sliceOver()) break outer;
        }
      }
      this.#words[b] = words;
      this.#cursorBlock = (b + 1) % Math.max(1, memory.length);
      this.#cursorWord = 0;
      visitedBlocks++;
      // A wrap to the first block ends a round: from the second round on, XBZRLE applies.
      if (this.#cursorBlock === 0) this.#xbzrleActive = xbz !== undefined;
    }
    mf?.sync();
    chunks.eos();
    this.#account(written() - bytesMark);
    if (mf !== undefined) this.#noteMultifd(mf);
  }

  // ---- source, post-copy ----

  /**
   * The guest is stopped and the destination is about to run it: sync the dirty log one
   * last time, and tell the destination which pages to throw away — every page still to
   * send (never sent, or dirtied since), in DISCARD commands of up to 12 ranges, as QEMU's
   * ram_postcopy_send_discard_bitmap. From now on pages go as the destination needs them.
   */
  startPostcopy(w: StreamWriter): { pages: number; ranges: number } {
    if (!this.#syncedWhileStopped) {
      this.#sync();
      this.#syncedWhileStopped = true;
    }
    this.#postcopy = true;
    let pages = 0;
    let count = 0;
    const before = w.bytesWritten;
    for (let b = 0; b < this.#memory.length; b++) {
      const block = this.#memory[b]!;
      const toSend = this.#toSend[b]!;
      const total = this.#blockPages[b]!;
      let ranges: BlockRange[] = [];
      let page = 0;
      while (page < total) {
        if (!bitSet(toSend, page)) {
          // Whole empty words at once.
          page = toSend[page >>> 5] === 0 ? (page | 31) + 1 : page + 1;
          continue;
        }
        const first = page;
        while (page < total && bitSet(toSend, page)) page++;
        ranges.push({ start: first * PAGE_SIZE, length: (page - first) * PAGE_SIZE });
        pages += page - first;
        count++;
        if (ranges.length === MAX_DISCARDS_PER_COMMAND) {
          writeCommand(w, MIG_CMD_POSTCOPY_RAM_DISCARD, discardData(block.idstr, ranges));
          ranges = [];
        }
      }
      if (ranges.length > 0) writeCommand(w, MIG_CMD_POSTCOPY_RAM_DISCARD, discardData(block.idstr, ranges));
    }
    this.stats.downtimeBytes += w.bytesWritten - before;
    return { pages, ranges: count };
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
    const b = this.#memory.findIndex((block) => block.idstr === name);
    const block = this.#memory[b];
    if (block === undefined) throw new MigrationError(`The destination asked for pages of an unknown RAM block "${name}"`);
    if (start % PAGE_SIZE !== 0 || length % PAGE_SIZE !== 0 || length === 0) {
      throw new MigrationError(`The destination asked for a misaligned range of "${name}": start 0x${start.toString(16)}, length 0x${length.toString(16)}`);
    }
    if (start + length > block.size) {
      throw new MigrationError(`The destination asked for 0x${start.toString(16)}+0x${length.toString(16)}, past the end of "${name}" (0x${block.size.toString(16)} bytes)`);
    }
    this.#lastRequestedBlock = name;
    this.stats.postcopyRequests++;
    for (let page = start / PAGE_SIZE; page < (start + length) / PAGE_SIZE; page++) this.#requests.push(b, page);
  }

  /**
   * Post-copy recovery: block `idstr`'s received bitmap from the destination (bit i of byte
   * i / 8 set where page i is there, padded to 8 bytes, as QEMU's ramblock_recv_bitmap_send):
   * every page not there is to send again (QEMU's ram_dirty_bitmap_reload). The requests
   * queued before the break are dropped: the destination asks again for what it still needs.
   */
  resumeFrom(idstr: string, received: Uint8Array): void {
    const b = this.#memory.findIndex((block) => block.idstr === idstr);
    if (b < 0) throw new MigrationError(`Post-copy recovery: a received bitmap for an unknown RAM block "${idstr}"`);
    const pages = this.#blockPages[b]!;
    const expected = Math.ceil(Math.ceil(pages / 8) / 8) * 8;
    if (received.byteLength !== expected) {
      throw new MigrationError(`Post-copy recovery: ramblock '${idstr}' bitmap size mismatch (0x${received.byteLength.toString(16)} != 0x${expected.toString(16)})`);
    }
    const toSend = this.#toSend[b]!;
    const view = new DataView(received.buffer, received.byteOffset, received.byteLength);
    for (let w = 0; w < toSend.length; w++) toSend[w] = ~view.getUint32(w * 4, true) >>> 0;
    if (pages % 32 !== 0) toSend[toSend.length - 1] = toSend[toSend.length - 1]! & ((2 ** (pages % 32)) - 1);
    let remaining = 0;
    for (const bitmap of this.#toSend) for (let w = 0; w < bitmap.length; w++) remaining += popcount32(bitmap[w]! | 0);
    this.stats.remainingPages = remaining;
    this.#requests.length = 0;
    this.#cursorBlock = 0;
    this.#cursorWord = 0;
  }

  /**
   * background-snapshot, the guest stopped: the moment RAM is saved as of. Pages the host
   * never backed by now are zero without being read (a write to one later is held by the
   * write-protection until it has gone).
   */
  snapshotPoint(): void {
    this.#untouched = this.#memory.map((b) => b.residency?.());
  }

  /** background-snapshot: the guest waits to write page `page` of block `b`: it goes ahead of the rest. */
  queueWrite(b: number, page: number): void {
    this.#requests.push(b, page);
  }

  /** background-snapshot: the pages sent since the last call (block index and page, in pairs); they may be written again. */
  takeSent(): number[] {
    const sent = this.#sentLog;
    this.#sentLog = [];
    return sent;
  }

  #sentLog: number[] = [];

  /** Pages the destination asked for and that have not gone yet. */
  get requestsQueued(): boolean {
    return this.#requests.length > 0;
  }

  /**
   * Post-copy: the pages asked for first (those still to send; one sent meanwhile is not
   * sent again), then up to `backgroundPages` more in order, then EOS.
   */
  sendPostcopy(w: StreamWriter, backgroundPages: number): void {
    const chunks = new RamChunkWriter(w);
    const before = w.bytesWritten;
    const requests = this.#requests;
    for (let i = 0; i < requests.length; i += 2) this.#sendOne(chunks, requests[i]!, requests[i + 1]!);
    requests.length = 0;
    let left = backgroundPages;
    const memory = this.#memory;
    while (left > 0 && this.stats.remainingPages > 0) {
      const b = this.#cursorBlock;
      const toSend = this.#toSend[b];
      if (toSend === undefined || b >= memory.length) {
        this.#cursorBlock = 0;
        this.#cursorWord = 0;
        continue;
      }
      while (left > 0 && this.#cursorWord < toSend.length) {
        const wi = this.#cursorWord;
        const bits = toSend[wi]! | 0;
        if (bits === 0) {
          this.#cursorWord++;
          continue;
        }
        const page = wi * 32 + (31 - Math.clz32(bits & -bits));
        this.#sendOne(chunks, b, page);
        left--;
      }
      if (this.#cursorWord >= toSend.length) {
        this.#cursorBlock = (b + 1) % memory.length;
        this.#cursorWord = 0;
      }
    }
    chunks.eos();
    this.#account(w.bytesWritten - before);
  }

  /** Send page `page` of block `b` if it is still to send (ZERO chunk if it reads as zero). */
  #sendOne(chunks: RamChunkWriter, b: number, page: number): void {
    const toSend = this.#toSend[b]!;
    const word = page >>> 5;
    const bit = 1 << (page & 31);
    if ((toSend[word]! & bit) === 0) return;
    toSend[word] = toSend[word]! & ~bit;
    this.stats.remainingPages--;
    const block = this.#memory[b]!;
    const offset = page * PAGE_SIZE;
    const untouched = this.#untouched[b];
    const neverBacked = untouched !== undefined && page < untouched.length && (untouched[page]! & 1) === 0;
    if (untouched !== undefined && page < untouched.length) untouched[page] = 1;
    const words = (this.#words[b] = wordsOf(block, this.#words[b]));
    const snapshot = this.#opts.snapshot === true;
    if (neverBacked || isZeroPage(words, page * WORDS_PER_PAGE)) {
      chunks.zero(block.idstr, offset);
      this.stats.duplicate++;
    } else {
      // A snapshot's page is copied now: it may be written the moment it is let go.
      chunks.pageOf(block.idstr, block.bytes, offset, snapshot ? undefined : block.hostAddress);
      this.stats.normal++;
    }
    if (snapshot || this.#opts.releaseRam === true) this.#sentLog.push(b, page);
  }

  /**
   * release-ram, in post-copy, once the channel has taken what was written (the pages are
   * the kernel's copies then, or held by a pipe): the first call gives back every page not
   * still to send — all that went before the switch — and each later one the pages sent
   * since. Returns the bytes given back. Nothing before the switch, nor without the capability.
   */
  releaseSent(): number {
    if (this.#opts.releaseRam !== true || !this.#postcopy) return 0;
    let bytes = 0;
    if (!this.#releasedBeforeSwitch) {
      this.#releasedBeforeSwitch = true;
      this.#sentLog = [];
      for (let b = 0; b < this.#memory.length; b++) {
        const toSend = this.#toSend[b]!;
        const total = this.#blockPages[b]!;
        for (let page = 0; page < total;) {
          if (bitSet(toSend, page)) {
            page++;
            continue;
          }
          const first = page;
          while (page < total && !bitSet(toSend, page)) page++;
          bytes += this.#discard(b, first, page - first);
        }
      }
      this.stats.releasedBytes += bytes;
      return bytes;
    }
    const sent = this.#sentLog;
    this.#sentLog = [];
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
    this.stats.releasedBytes += bytes;
    return bytes;
  }

  #releasedBeforeSwitch = false;

  #discard(b: number, page: number, count: number): number {
    const block = this.#memory[b]!;
    if (block.discard === undefined) return 0;
    block.discard(page * PAGE_SIZE, count * PAGE_SIZE);
    return count * PAGE_SIZE;
  }

  #postcopy = false;
  #lastRequestedBlock: string | undefined;
  /** Pages asked for: block index and page number, in pairs. */
  readonly #requests: number[] = [];

  /**
   * After #send: wait for the channel to take a backlog, no longer than `until` on the
   * engine's clock, or until `giveUp` says so. Outside #send, whose compiled loop a branch
   * the warm-up seldom takes would throw away (see `taken` there): this one is taken only
   * when a send ends with the channel still full.
   */
  async #settle(w: StreamWriter, until?: number, giveUp?: () => boolean): Promise<void> {
    if (!w.needsFlush) return;
    if (until === undefined) await w.flush();
    else await settledBy(w.flush(), until, this.#opts.now, giveUp);
  }

  #passMark = { pages: 0, zero: 0, bytes: 0 };

  /**
   * Whether the 32 pages of bitmap word `word` of block `b` were all never backed at setup
   * (and not written since); if so they are marked used, as sending them does.
   */
  #neverBacked32(b: number, word: number): boolean {
    const untouched = this.#untouched[b];
    const first = word * 32;
    if (untouched === undefined || first + 32 > untouched.length) return false;
    for (let page = first; page < first + 32; page++) if ((untouched[page]! & 1) !== 0) return false;
    untouched.fill(1, first, first + 32);
    return true;
  }

  /** Bring the open pass's figures up to date; with `endMs`, close it. */
  #closePass(endMs?: number): void {
    const open = this.passes[this.passes.length - 1];
    if (!open || open.endMs !== undefined) return;
    open.pagesSent = this.stats.pagesSent - this.#passMark.pages;
    open.zeroPages = this.stats.duplicate - this.#passMark.zero;
    open.bytesSent = this.stats.transferred - this.#passMark.bytes;
    if (endMs !== undefined) open.endMs = endMs;
  }

  /** The per-pass figures with the open pass brought up to date. */
  passHistory(): readonly RamPass[] {
    this.#closePass();
    return this.passes;
  }

  /** The migration ended: close the last pass. */
  finishPasses(): void {
    this.#closePass(this.#opts.now());
  }

  #account(bytes: number): void {
    this.stats.transferred += bytes;
    if (this.#postcopy) this.stats.postcopyBytes += bytes;
    else if (this.#stopped) this.stats.downtimeBytes += bytes;
    else this.stats.precopyBytes += bytes;
    this.#opts.limiter.account(bytes);
  }

  // ---- destination ----

  load(r: StreamReader, versionId: number, section: string): Promise<void> {
    return this.#loader.load(r, versionId, section);
  }

  /** Whether a MEM_SIZE record arrived (a stream without one never set up RAM). */
  get memSizeSeen(): boolean {
    return this.#loader.memSizeSeen;
  }

  /** Resolves once the destination backs no RAM in the background (before post-copy discards pages). */
  backgroundSettled(): Promise<void> {
    return this.#loader.backgroundSettled();
  }

  /** The `multifd` capability (destination): pages of data arrive through `receiver`'s channels too. */
  receiveMultifd(receiver: MultifdReceiver): void {
    this.#loader.useMultifd(receiver);
  }

  /** Where `multifd` channels put their pages (the loader, which keeps what it knows of every page). */
  get multifdSink(): MultifdPageSink {
    return this.#loader;
  }

  /** Post-copy's LISTEN: pages are placed through `sink` from now on. */
  placeWith(sink: PostcopyRamSink): void {
    this.#loader.placeWith(sink);
  }
}

const yes = (): boolean => true;

function bitSet(bitmap: Uint32Array, page: number): boolean {
  return (bitmap[page >>> 5]! & (1 << (page & 31))) !== 0;
}

/** Set bit 0 (backed) in `residency` for each page of word `word` whose bit is set in `bits`. */
function markWritten(residency: Uint8Array, word: number, bits: number): void {
  const base = word * 32;
  while (bits !== 0) {
    const bit = 31 - Math.clz32(bits & -bits);
    bits &= ~(1 << bit);
    if (base + bit < residency.length) residency[base + bit] = 1;
  }
}
