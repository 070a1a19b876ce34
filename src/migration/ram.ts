// The RAM savevm handler ("ram", instance 0, version 4), both sides: the source walks a
// to-send bitmap (every page on the first pass, then what the dirty log reports),
// sending all-zero pages as ZERO chunks, under the rate limiter; the destination
// (ram-load.ts) writes chunks straight into guest RAM. The bitmaps are in ram-bitmap.ts,
// pages asked for ahead of the rest (post-copy, background snapshot) in
// ram-page-requests.ts, the counters query-migrate reports under `ram` in ram-stats.ts.

import { PAGE_SIZE } from '../hypervisor/types.js';
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
import { WORDS_PER_PAGE, isZeroPage, wordsOf } from './ram-pages.js';
import { RamBitmaps } from './ram-bitmap.js';
import { RamPageRequests } from './ram-page-requests.js';
import { RamPassLog, RamStats, type RamPass } from './ram-stats.js';
import { settledBy } from './deadline.js';
import { keepShape } from '../hot-shapes.js';
import type { MultifdSender } from './multifd-send.js';
import type { MultifdPageSink, MultifdReceiver } from './multifd-recv.js';

export { isZeroPage } from './ram-pages.js';
export { RAM_VERSION } from './ram-load.js';
export { RamStats, type RamPass } from './ram-stats.js';

export const RAM_IDSTR = 'ram';
/** How often (in pages) the sender looks at the clock and the rate limiter. */
const CHECK_EVERY_PAGES = 64;

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
  /**
   * The `x-ignore-shared` capability: blocks another process maps too (memory-backend-file,
   * share=on) stay out of the stream — the destination maps the same memory — and MEM_SIZE
   * gives each block's guest-physical address, for the destination to check (QEMU's
   * ramblock_is_ignored). Both sides.
   */
  readonly ignoreShared?: boolean;
}

export class RamHandler implements SaveVmHandler {
  readonly idstr = RAM_IDSTR;
  readonly instanceId = 0;
  readonly version = RAM_VERSION;
  readonly minimumVersion = RAM_VERSION;
  readonly stats = new RamStats();
  /** Present when the `xbzrle` capability is on (source side). */
  readonly xbzrle: XbzrleCache | undefined;

  /** Pages asked for ahead of the rest: post-copy's and a background snapshot's (source side). */
  readonly requests: RamPageRequests;

  readonly #vm: MigrationVm;
  readonly #opts: RamHandlerOptions;
  readonly #sliceMs: number;
  /** Which pages are still to send, and the walk over them (source side). */
  readonly #bm = new RamBitmaps();
  readonly #passes = new RamPassLog(this.stats);
  #stopped = false;
  #rateWindowStart = 0;
  #rateWindowPages = 0;
  /** This period's pages newly set in the to-send bitmap, and the bytes sent when it began. */
  #periodNewPages = 0;
  #periodTransferredMark = 0;
  #loggingStarted = false;
  /** QEMU enables XBZRLE only once the first round (every page) is done. */
  #xbzrleActive = false;
  /** Destination: loads the stream's RAM chunks into guest RAM (ram-load.ts). */
  readonly #loader: RamLoader;
  /** Source, `multifd`: pages of data go on these channels, zero pages still on the main stream. */
  #multifd: MultifdSender | undefined;

  constructor(vm: MigrationVm, options: RamHandlerOptions) {
    keepShape(this);
    this.#vm = vm;
    this.#opts = options;
    this.#sliceMs = options.sliceMs ?? 20;
    this.xbzrle = options.xbzrleCacheSize !== undefined ? new XbzrleCache(options.xbzrleCacheSize) : undefined;
    this.#loader = new RamLoader(vm, options.ignoreShared === true);
    this.requests = new RamPageRequests(this.#bm, this.stats, {
      snapshot: options.snapshot === true,
      releaseRam: options.releaseRam === true,
      account: (bytes) => this.#account(bytes),
    });
  }

  /** Per-pass figures, oldest first (source). */
  get passes(): readonly RamPass[] {
    return this.#passes.passes;
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
    const ignoreShared = this.#opts.ignoreShared === true;
    const ignored = memory.map((b) => ignoreShared && b.file?.shared === true);
    // QEMU's ram_bytes_total: the blocks that are migrated.
    this.stats.totalBytes = memory.reduce((sum, b, i) => sum + (ignored[i] ? 0 : b.size), 0);
    this.stats.remainingPages = this.#bm.setup(memory, ignored);
    const before = w.bytesWritten;
    new RamChunkWriter(w).memSize(memory.map((b) => ({ idstr: b.idstr, size: b.size, ...(ignoreShared ? { address: b.guestAddress } : {}) })));
    this.#rateWindowStart = this.#opts.now();
    // A snapshot needs no dirty log (QEMU's ram_init_bitmaps neither starts nor syncs one
    // for background-snapshot); which pages were never backed is asked at its moment.
    if (!this.#opts.snapshot) {
      // Blocks left out of the stream need no log (QEMU's RAMBLOCK_FOREACH_NOT_IGNORED).
      this.#vm.dirtyLog.start(ignored.some((x) => x) ? ignored.map((x) => !x) : undefined);
      this.#loggingStarted = true;
      // After logging started: a page touched from here on is in the log, whatever this says.
      this.#bm.takeResidency();
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
    const { dirtied, added } = this.#bm.fold(this.#vm.dirtyLog.sync());
    this.stats.remainingPages += added;
    this.stats.dirtySyncCount++;
    // The first sync (setup) finds nothing logged yet: its pass is every page.
    const firstPass = this.#passes.passes.length === 0;
    this.#passes.open(this.stats.dirtySyncCount, this.#opts.now(), firstPass ? this.stats.remainingPages : dirtied);
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
    const bm = this.#bm;
    const memory = bm.memory;
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
      const b = bm.cursorBlock;
      const block = memory[b];
      const toSend = bm.toSend[b];
      let words = bm.words[b];
      if (!block || !toSend || !words) {
        bm.cursorBlock = 0;
        bm.cursorWord = 0;
        visitedBlocks++;
        continue;
      }
      // Cheap when nothing changed: compares the view's buffer with the block's current one.
      words = wordsOf(block, words);
      while (bm.cursorWord < toSend.length) {
        const wi = bm.cursorWord;
        // A signed word: as read from the Uint32Array, a word with bit 31 set is no small
        // integer in V8, and the optimised loop below boxed it on every page while it
        // stayed set — 16 bytes per page, 4 MB per GiB, and the collections that came of it
        // in the middle of the migration (V8's sampling heap profiler on the source).
        let bits = toSend[wi]! | 0;
        if (bits === 0) {
          bm.cursorWord++;
          continue;
        }
        // 32 pending pages the host never backed: 32 ZERO chunks at once, without reading
        // them (most of an idle guest's RAM).
        if (bits === -1 && xbz === undefined && bm.neverBacked32(b, wi)) {
          chunks.zeroRun(block.idstr, wi * 32 * PAGE_SIZE, 32);
          toSend[wi] = 0;
          stats.remainingPages -= 32;
          stats.duplicate += 32;
          bm.cursorWord++;
          sinceCheck += 32;
        } else {
          while (bits !== 0) {
            const bit = 31 - Math.clz32(bits & -bits);
            bits &= ~(1 << bit);
            toSend[wi] = bits;
            stats.remainingPages--;
            const page = wi * 32 + bit;
            const offset = page * PAGE_SIZE;
            const untouched = bm.untouched[b];
            let neverBacked = false;
            if (untouched !== undefined && page < untouched.length) {
              neverBacked = (untouched[page]! & 1) === 0;
              untouched[page] = 1;
            }
            if (neverBacked || isZeroPage(words, page * WORDS_PER_PAGE)) {
              chunks.zero(block.idstr, offset);
              stats.duplicate++;
              if (xbz) xbz.zeroSent(bm.blockBasePage[b]! + page);
            } else if (xbz && this.#xbzrleActive) {
              const len = xbz.encode(bm.blockBasePage[b]! + page, block.bytes, offset);
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
          if (bits === 0) bm.cursorWord++;
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
      bm.words[b] = words;
      bm.cursorBlock = (b + 1) % Math.max(1, memory.length);
      bm.cursorWord = 0;
      visitedBlocks++;
      // A wrap to the first block ends a round: from the second round on, XBZRLE applies.
      if (bm.cursorBlock === 0) this.#xbzrleActive = xbz !== undefined;
    }
    mf?.sync();
    chunks.eos();
    this.#account(written() - bytesMark);
    if (mf !== undefined) this.#noteMultifd(mf);
  }

  // ---- source, post-copy and background snapshot ----

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
    const memory = this.#bm.memory;
    for (let b = 0; b < memory.length; b++) {
      let ranges: BlockRange[] = [];
      for (const range of this.#bm.runs(b, true)) {
        ranges.push(range);
        pages += range.length / PAGE_SIZE;
        count++;
        if (ranges.length === MAX_DISCARDS_PER_COMMAND) {
          writeCommand(w, MIG_CMD_POSTCOPY_RAM_DISCARD, discardData(memory[b]!.idstr, ranges));
          ranges = [];
        }
      }
      if (ranges.length > 0) writeCommand(w, MIG_CMD_POSTCOPY_RAM_DISCARD, discardData(memory[b]!.idstr, ranges));
    }
    this.stats.downtimeBytes += w.bytesWritten - before;
    return { pages, ranges: count };
  }

  /**
   * Post-copy recovery: block `idstr`'s received bitmap from the destination: every page
   * not there is to send again (RamBitmaps.reload). The requests queued before the break
   * are dropped: the destination asks again for what it still needs.
   */
  resumeFrom(idstr: string, received: Uint8Array): void {
    const b = this.#bm.blockIndex(idstr);
    if (b < 0) throw new MigrationError(`Post-copy recovery: a received bitmap for an unknown RAM block "${idstr}"`);
    this.stats.remainingPages = this.#bm.reload(b, received);
    this.requests.clear();
  }

  /**
   * background-snapshot, the guest stopped: the moment RAM is saved as of. Pages the host
   * never backed by now are zero without being read (a write to one later is held by the
   * write-protection until it has gone).
   */
  snapshotPoint(): void {
    this.#bm.takeResidency();
  }

  /** release-ram, in post-copy: give back to the host what has gone (RamPageRequests.release); nothing before the switch. */
  releaseSent(): number {
    return this.#postcopy ? this.requests.release() : 0;
  }

  #postcopy = false;

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

  /** The per-pass figures with the open pass brought up to date. */
  passHistory(): readonly RamPass[] {
    this.#passes.update();
    return this.#passes.passes;
  }

  /** The migration ended: close the last pass. */
  finishPasses(): void {
    this.#passes.update(this.#opts.now());
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
