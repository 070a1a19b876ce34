// The destination of a post-copy migration (QEMU's postcopy-ram.c, destination side).
// The source sends its device state in a package once the guest has stopped there, with
// the pages it has not sent yet or that were dirtied since listed in DISCARD commands;
// this side throws those pages away, registers guest RAM with userfaultfd (LISTEN) and
// runs the guest (RUN) while the rest of the RAM arrives. A guest thread that touches a
// page still to come sleeps in the kernel; its fault asks the source for the page over the
// return path, and the page is placed atomically when it arrives, in the stream with the
// others. Every page is placed, never written: the main thread must not touch a page
// that is not there yet (it would sleep on a fault only it can serve).

import { MigrationError, StreamFormatError, errorMessage } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { GuestMemoryBlock } from '../hypervisor/types.js';
import type { RamChunkSink } from '../stream/ram-codec.js';
import type { StreamReader } from '../stream/reader.js';
import type { BlockRange } from '../stream/return-path.js';
import { MADV_DONTNEED, addressOf, madviseRange } from '../sys/libc.js';
import { Userfaultfd } from '../sys/userfaultfd.js';
import type { Fault } from '../sys/userfaultfd.js';
import type { BlocktimeFigures, PostcopyBlocktime } from './postcopy-blocktime.js';
import type { PostcopyLoadHooks } from './incoming.js';
import type { MigrationVm } from './vm.js';
import { keepShape } from '../hot-shapes.js';

/** How long one wait for faults lasts before the loop looks whether it should stop. */
const FAULT_WAIT_MS = 100;

/** What the destination needs from its end of the return path. */
export interface PageRequester {
  readonly open: boolean;
  requestPages(idstr: string, start: number, length: number): void;
  /** Post-copy recovery's answers. */
  sendRecvBitmap(idstr: string, bitmap: Uint8Array): void;
  sendResumeAck(): void;
  readonly writeError: Error | undefined;
}

export interface PostcopyIncomingOptions {
  readonly vm: MigrationVm;
  readonly returnPath: PageRequester;
  /** Resolves once nothing backs guest RAM in the background (a populate after a discard would undo it). */
  readonly backgroundSettled: () => Promise<void>;
  /** LISTEN: the RAM handler places pages through `sink` from now on. */
  readonly placeWith: (sink: PostcopyRamSink) => void;
  /** RUN: the device state is installed; start the guest (or leave it paused, as the source was). */
  readonly run: () => void;
  /**
   * Recovery (optional): the connection broke after RUN; resolves with the connection the
   * source resumes on (its reader and return path), rejects to give up.
   */
  readonly awaitRecovery?: (cause: Error) => Promise<{ reader: StreamReader; returnPath: PageRequester }>;
  /** POSTCOPY_RESUME was answered: post-copy is active again. */
  readonly resumed?: () => void;
  /** postcopy-blocktime: how long the vCPUs wait on faults, measured here when given. */
  readonly blocktime?: PostcopyBlocktime;
  readonly trace?: (message: string) => void;
}

/** What post-copy did on this side, for the trace and the tests. */
export interface PostcopyIncomingFigures {
  /** Pages the DISCARD commands threw away (to come in post-copy). */
  readonly discardedPages: number;
  /** Faults that asked the source for a page. */
  readonly requests: number;
  /** Faults on pages the source never sends (never written there): placed as zeros here. */
  readonly localZeroPages: number;
  /** Pages placed from the stream after LISTEN. */
  readonly placedPages: number;
  /** From a fault's request to its page being placed, in ms: the mean and the longest. */
  readonly requestWaitMeanMs: number;
  readonly requestWaitMaxMs: number;
}

export class PostcopyIncoming implements PostcopyLoadHooks {
  readonly #o: PostcopyIncomingOptions;
  #blocks: readonly GuestMemoryBlock[] = [];
  #uffd: Userfaultfd | undefined;
  /** Per block, one bit per page: discarded, not placed yet (the source will send it). */
  #awaited: Uint32Array[] = [];
  /** Per block, one bit per page: asked of the source, not placed yet. */
  #requested: Uint32Array[] = [];
  #awaitedCount = 0;
  #listening = false;
  #running = false;
  #stopFaults = false;
  #faultLoop: Promise<void> = Promise.resolve();
  #faultError: Error | undefined;
  #discardedPages = 0;
  #requests = 0;
  #localZeroPages = 0;
  #placedPages = 0;
  readonly sink: PostcopyRamSink;
  /** The return path in use: a resumed connection brings another. */
  #rp: PageRequester;
  /** The connection broke after RUN: faults are noted, asked for once the source is back. */
  #paused = false;
  /** postcopy-blocktime's account, while the kernel names the threads that fault. */
  #blocktime: PostcopyBlocktime | undefined;

  constructor(options: PostcopyIncomingOptions) {
    keepShape(this);
    this.#o = options;
    this.#rp = options.returnPath;
    this.#blocktime = options.blocktime;
    this.sink = new PostcopyRamSink(this);
  }

  /** postcopy-blocktime's figures so far (undefined when not measured). */
  blocktime(now: number): BlocktimeFigures | undefined {
    return this.#blocktime?.figures(now);
  }

  get figures(): PostcopyIncomingFigures {
    return {
      discardedPages: this.#discardedPages, requests: this.#requests, localZeroPages: this.#localZeroPages, placedPages: this.#placedPages,
      requestWaitMeanMs: this.#answered === 0 ? 0 : this.#waitedMs / this.#answered, requestWaitMaxMs: this.#waitedMaxMs,
    };
  }

  /** When each outstanding request went out (key: block × 2^32 + page). */
  readonly #requestedAt = new Map<number, number>();
  #answered = 0;
  #waitedMs = 0;
  #waitedMaxMs = 0;

  /** The guest runs here while RAM still arrives. */
  get running(): boolean {
    return this.#running;
  }

  /**
   * From the first DISCARD until every page is in: this process must not read guest RAM —
   * a page still to come read now would map the zero page (the guest would later see zeros
   * there) or, once registered, stop the reading thread for good.
   */
  get ramArriving(): boolean {
    return this.#discarding && !this.#finished;
  }

  #discarding = false;
  #finished = false;

  /** Pages still to come. */
  get awaitedPages(): number {
    return this.#awaitedCount;
  }

  advise(pageSizeSummary: number, targetPageSize: number, offset: number): void {
    // QEMU's checks and words (loadvm_postcopy_handle_advise): Ferry's RAM is in 4 KiB pages.
    if (pageSizeSummary !== PAGE_SIZE) {
      throw new StreamFormatError(`Postcopy needs matching RAM page sizes (s=${pageSizeSummary.toString(16)} d=${PAGE_SIZE.toString(16)})`, offset, 'command');
    }
    if (targetPageSize !== PAGE_SIZE) {
      throw new StreamFormatError(`Postcopy needs matching target page sizes (s=${targetPageSize} d=${PAGE_SIZE})`, offset, 'command');
    }
    if (!this.#rp.open) {
      throw new StreamFormatError(`CMD_POSTCOPY_ADVISE at offset ${offset}: post-copy needs the return path (the source asks for pages over it), and this stream did not open one`, offset, 'command');
    }
    const blocks = this.#o.vm.memory;
    const unmapped = blocks.find((b) => b.hostAddress === undefined);
    if (unmapped) throw new MigrationError(`Cannot do post-copy: RAM block "${unmapped.idstr}" is not memory this process maps itself (the v86 accelerator's guest RAM is not)`);
    try {
      this.#uffd = Userfaultfd.open({ threadIds: this.#blocktime !== undefined });
    } catch (err) {
      throw new MigrationError(`Cannot do post-copy on this host: ${errorMessage(err)}`, { cause: err });
    }
    if (this.#blocktime && !this.#uffd.threadIds) {
      this.#blocktime = undefined;
      this.#o.trace?.('migration: postcopy-blocktime: this kernel does not say which thread faulted (UFFD_FEATURE_THREAD_ID); not measured');
    }
    this.#blocks = blocks;
    this.#awaited = blocks.map((b) => new Uint32Array(Math.ceil(b.size / PAGE_SIZE / 32)));
    this.#requested = blocks.map((b) => new Uint32Array(Math.ceil(b.size / PAGE_SIZE / 32)));
    this.#o.trace?.(`migration: post-copy advised: userfaultfd ${this.#uffd.fd}, ${blocks.length} RAM block(s)`);
  }

  async discard(idstr: string, ranges: readonly BlockRange[], offset: number): Promise<void> {
    await this.#o.backgroundSettled();
    this.#discarding = true;
    const b = this.#blocks.findIndex((block) => block.idstr === idstr);
    const block = this.#blocks[b];
    if (block === undefined) throw new StreamFormatError(`CMD_POSTCOPY_RAM_DISCARD at offset ${offset}: unknown RAM block "${idstr}"`, offset, 'command');
    const awaited = this.#awaited[b]!;
    for (const { start, length } of ranges) {
      // QEMU's ram_discard_range checks.
      if (start % PAGE_SIZE !== 0 || length % PAGE_SIZE !== 0 || length === 0) {
        throw new StreamFormatError(`CMD_POSTCOPY_RAM_DISCARD at offset ${offset}: range 0x${start.toString(16)}+0x${length.toString(16)} of "${idstr}" is not whole pages`, offset, 'command');
      }
      if (start + length > block.size) {
        throw new StreamFormatError(`CMD_POSTCOPY_RAM_DISCARD at offset ${offset}: range 0x${start.toString(16)}+0x${length.toString(16)} overruns block "${idstr}" (0x${block.size.toString(16)} bytes)`, offset, 'command');
      }
      const errno = madviseRange(BigInt(block.hostAddress!) + BigInt(start), length, MADV_DONTNEED);
      if (errno !== 0) throw new MigrationError(`Cannot discard 0x${start.toString(16)}+0x${length.toString(16)} of RAM block "${idstr}": madvise failed with errno ${errno}`);
      for (let page = start / PAGE_SIZE; page < (start + length) / PAGE_SIZE; page++) {
        const word = page >>> 5;
        const bit = 1 << (page & 31);
        if ((awaited[word]! & bit) === 0) {
          awaited[word] = awaited[word]! | bit;
          this.#awaitedCount++;
          this.#discardedPages++;
        }
      }
    }
  }

  listen(offset: number): void {
    const uffd = this.#uffd;
    if (!uffd) throw new StreamFormatError(`CMD_POSTCOPY_LISTEN at offset ${offset} before POSTCOPY_ADVISE`, offset, 'command');
    for (const block of this.#blocks) uffd.register(BigInt(block.hostAddress!), block.size);
    this.#listening = true;
    this.#o.placeWith(this.sink);
    this.#faultLoop = this.#serveFaults();
    this.#o.trace?.(`migration: post-copy listening: ${this.#awaitedCount} pages to come, ${this.#blocks.length} block(s) registered`);
  }

  run(): void {
    this.#running = true;
    this.#o.run();
  }

  /** Throws unless every page still to come at the switch has arrived, or the fault handling failed. */
  checkAllArrived(): void {
    if (this.#awaitedCount > 0) {
      throw new MigrationError(`The post-copy stream ended with ${this.#awaitedCount} page(s) of guest RAM never sent`);
    }
    if (this.#faultError) throw this.#faultError;
  }

  /**
   * The stream has ended (EOF): every page must have arrived. Then guest RAM is ordinary
   * memory again. Throws when pages are missing — the guest would wait for them for ever.
   */
  async finish(): Promise<void> {
    this.checkAllArrived();
    await this.#stopServing();
    if (this.#faultError) throw this.#faultError;
    this.#finished = true;
    const uffd = this.#uffd;
    this.#uffd = undefined;
    if (!uffd) return;
    if (this.#listening) for (const block of this.#blocks) uffd.unregister(BigInt(block.hostAddress!), block.size);
    uffd.close();
    const f = this.figures;
    const blocked = this.#blocktime?.figures(performance.now());
    this.#o.trace?.(
      `migration: post-copy done here: ${f.placedPages} pages placed, ${f.requests} asked for by faults ` +
        `(each placed ${f.requestWaitMeanMs.toFixed(2)} ms after it was asked for on average, ${f.requestWaitMaxMs.toFixed(1)} ms at most), ` +
        `${f.localZeroPages} never-sent pages zeroed on a fault` +
        (blocked ? `; vCPUs blocked ${blocked.perVcpu.join(', ')} ms, all at once ${blocked.total} ms` : ''),
    );
  }

  /**
   * The load failed. Before RUN the guest never ran here: RAM goes back to ordinary memory.
   * After it, the guest's threads that wait on missing pages must go on waiting — letting
   * go of the registration would hand them zeros for pages they had — so it stays.
   */
  async abort(): Promise<void> {
    await this.#stopServing();
    if (this.#running) return;
    // The guest never ran here: its RAM holds nothing anyone waits for.
    this.#finished = true;
    const uffd = this.#uffd;
    if (!uffd) return;
    this.#uffd = undefined;
    if (this.#listening) for (const block of this.#blocks) uffd.unregister(BigInt(block.hostAddress!), block.size);
    uffd.close();
  }

  async #stopServing(): Promise<void> {
    this.#stopFaults = true;
    await this.#faultLoop;
  }

  /** Wait for faults on libuv's thread pool and answer each. */
  async #serveFaults(): Promise<void> {
    const uffd = this.#uffd!;
    try {
      while (!this.#stopFaults) {
        if (!(await uffd.waitForFault(FAULT_WAIT_MS))) continue;
        if (this.#stopFaults) return;
        for (const fault of uffd.readFaults()) this.#fault(fault);
        const writeError = this.#paused ? undefined : this.#rp.writeError;
        if (writeError) throw new MigrationError(`Cannot ask the source for pages: ${writeError.message}`, { cause: writeError });
      }
    } catch (err) {
      this.#faultError = err instanceof Error ? err : new Error(String(err));
      this.#o.trace?.(`migration: post-copy fault handling failed: ${errorMessage(err)}`);
    }
  }

  #fault(fault: Fault): void {
    const { address } = fault;
    const blocks = this.#blocks;
    for (let b = 0; b < blocks.length; b++) {
      const block = blocks[b]!;
      const base = BigInt(block.hostAddress!);
      if (address < base || address >= base + BigInt(block.size)) continue;
      const page = Number((address - base) / BigInt(PAGE_SIZE));
      const word = page >>> 5;
      const bit = 1 << (page & 31);
      if ((this.#awaited[b]![word]! & bit) === 0) {
        // Not discarded, not here: a page that reached this side as zeros without being
        // written (never backed). The source will not send it again.
        this.#uffd!.zeropage(base + BigInt(page * PAGE_SIZE), PAGE_SIZE);
        this.#localZeroPages++;
        return;
      }
      // A vCPU waits for the page from now (a second vCPU may wait on a page already asked for).
      this.#blocktime?.begin(fault.tid, b * 2 ** 32 + page, performance.now());
      const requested = this.#requested[b]!;
      if ((requested[word]! & bit) !== 0) return;
      requested[word] = requested[word]! | bit;
      this.#requests++;
      this.#requestedAt.set(b * 2 ** 32 + page, performance.now());
      // While paused the request waits (its bit says so) for the source to come back.
      if (!this.#paused) this.#rp.requestPages(block.idstr, page * PAGE_SIZE, PAGE_SIZE);
      return;
    }
    this.#o.trace?.(`migration: post-copy: a fault at 0x${address.toString(16)} outside guest RAM, ignored`);
  }

  #answer(key: number): void {
    const since = this.#requestedAt.get(key);
    if (since === undefined) return;
    this.#requestedAt.delete(key);
    const waited = performance.now() - since;
    this.#answered++;
    this.#waitedMs += waited;
    if (waited > this.#waitedMaxMs) this.#waitedMaxMs = waited;
  }

  // ---- recovery (QEMU's postcopy-paused / postcopy-recover) ----

  /**
   * The connection broke after RUN: the guest keeps running on what it has (a vCPU that
   * needs a missing page waits), faults are noted, and a run of pages half received is
   * dropped — those pages are still to come, and the source will send them again.
   */
  pause(): void {
    this.#paused = true;
    this.sink.abandon();
  }

  /** A new connection from the source (migrate-recover): its return path from now on. */
  recovered(returnPath: PageRequester): void {
    this.#rp = returnPath;
  }

  /** The load's hook: pause, wait for the source on a new connection, and read from there. */
  async paused(cause: Error): Promise<StreamReader> {
    const awaitRecovery = this.#o.awaitRecovery;
    if (!awaitRecovery) throw cause;
    this.pause();
    this.#o.trace?.(`migration: post-copy paused: ${errorMessage(cause)}; ${this.#awaitedCount} pages still to come`);
    const { reader, returnPath } = await awaitRecovery(cause);
    this.recovered(returnPath);
    return reader;
  }

  /** RECV_BITMAP: tell the source which pages of `idstr` are here (every page not still to come). */
  recvBitmap(idstr: string, offset: number): void {
    const b = this.#blocks.findIndex((block) => block.idstr === idstr);
    const block = this.#blocks[b];
    if (block === undefined) throw new StreamFormatError(`CMD_RECV_BITMAP at offset ${offset}: unknown RAM block "${idstr}"`, offset, 'command');
    const pages = block.size / PAGE_SIZE;
    const received = new Uint32Array(Math.ceil(pages / 64) * 2);
    const awaited = this.#awaited[b]!;
    for (let w = 0; w < awaited.length; w++) received[w] = ~awaited[w]! >>> 0;
    // Bits past the block's last page say nothing.
    if (pages % 32 !== 0) received[pages >>> 5] = received[pages >>> 5]! & ((2 ** (pages % 32)) - 1);
    for (let w = Math.ceil(pages / 32); w < received.length; w++) received[w] = 0;
    this.#rp.sendRecvBitmap(idstr, new Uint8Array(received.buffer));
  }

  /** POSTCOPY_RESUME: acknowledge, and ask again for every page a fault wanted meanwhile or before. */
  resume(): void {
    this.#paused = false;
    this.#rp.sendResumeAck();
    this.#o.resumed?.();
    for (let b = 0; b < this.#blocks.length; b++) {
      const requested = this.#requested[b]!;
      for (let w = 0; w < requested.length; w++) {
        let bits = requested[w]! | 0;
        while (bits !== 0) {
          const bit = 31 - Math.clz32(bits & -bits);
          bits &= ~(1 << bit);
          this.#rp.requestPages(this.#blocks[b]!.idstr, (w * 32 + bit) * PAGE_SIZE, PAGE_SIZE);
        }
      }
    }
    this.#o.trace?.(`migration: post-copy resumed: ${this.#awaitedCount} pages still to come`);
  }

  // ---- placing pages (PostcopyRamSink) ----

  /** The index of block `idstr`, with `offset` a whole page in it; throws otherwise. */
  blockIndex(idstr: string, offset: number, at: () => number): number {
    const b = this.#blocks.findIndex((block) => block.idstr === idstr);
    const block = this.#blocks[b];
    if (block === undefined) throw new StreamFormatError(`Cannot place RAM page: unknown block "${idstr}"`, at(), 'ram');
    if (!Number.isInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0 || offset + PAGE_SIZE > block.size) {
      throw new StreamFormatError(`Cannot place RAM page at offset ${offset} of block "${idstr}" (${block.size} bytes)`, at(), 'ram');
    }
    return b;
  }

  blockSize(b: number): number {
    return this.#blocks[b]!.size;
  }

  /** Place `pages` pages at `offset` of block `b`, from `src` (or zeros with src undefined). */
  place(b: number, offset: number, pages: number, src: bigint | undefined, at: () => number): void {
    const block = this.#blocks[b]!;
    const awaited = this.#awaited[b]!;
    const first = offset / PAGE_SIZE;
    for (let page = first; page < first + pages; page++) {
      if ((awaited[page >>> 5]! & (1 << (page & 31))) === 0) {
        // QEMU fails the same way (postcopy_place_page's EEXIST): the source sent a page it
        // had not listed as still to come, and it would go over what the guest has.
        throw new StreamFormatError(`RAM page at offset ${page * PAGE_SIZE} of block "${block.idstr}" arrived in post-copy but was not discarded (it is here already)`, at(), 'ram');
      }
    }
    const dst = BigInt(block.hostAddress!) + BigInt(offset);
    const uffd = this.#uffd!;
    const present = src === undefined ? uffd.zeropage(dst, pages * PAGE_SIZE) : uffd.copy(dst, src, pages * PAGE_SIZE);
    if (present !== 0) {
      throw new StreamFormatError(`RAM pages at offset ${offset} of block "${block.idstr}": ${present / PAGE_SIZE} of ${pages} were present already although still to come`, at(), 'ram');
    }
    const requested = this.#requested[b]!;
    const blocktime = this.#blocktime?.waiting ? this.#blocktime : undefined;
    const now = blocktime ? performance.now() : 0;
    for (let page = first; page < first + pages; page++) {
      const word = page >>> 5;
      const bit = 1 << (page & 31);
      awaited[word] = awaited[word]! & ~bit;
      if ((requested[word]! & bit) !== 0) {
        requested[word] = requested[word]! & ~bit;
        this.#answer(b * 2 ** 32 + page);
        blocktime?.end(b * 2 ** 32 + page, now);
      }
    }
    this.#awaitedCount -= pages;
    this.#placedPages += pages;
  }
}

/** Pages placed with one ioctl at most: one call per page cost ~3.5 µs here, one per 64 ~0.7 µs a page. */
const PLACE_BATCH_PAGES = 64;

/**
 * The RAM chunks of a post-copy stream, placed with userfaultfd: consecutive pages of a
 * block gather in a staging buffer (or, zero pages, as a count) and go in one call — at
 * the first page that does not follow, when the batch is full, and at the end of each
 * section (flush()), so a page asked for waits no longer than its section. No scattered
 * reads into RAM, and no XBZRLE (QEMU's source sends none in post-copy).
 */
export class PostcopyRamSink implements RamChunkSink {
  readonly #p: PostcopyIncoming;
  readonly #staging = new Uint8Array(PLACE_BATCH_PAGES * PAGE_SIZE);
  readonly #stagingAddress = addressOf(this.#staging);
  /** The run being gathered: its block, first offset, pages, and whether they are zero pages (nothing staged). */
  #block = -1;
  #first = 0;
  #count = 0;
  #zero = false;
  /** The stream offset for errors (the reader's, set by RamLoader for each section). */
  at: () => number = () => 0;

  constructor(postcopy: PostcopyIncoming) {
    keepShape(this);
    this.#p = postcopy;
  }

  memSize(): void {
    throw new StreamFormatError('A RAM size list (MEM_SIZE) arrived after POSTCOPY_LISTEN', this.at(), 'ram');
  }

  pageTarget(idstr: string, offset: number): { ram: Uint8Array; offset: number } {
    const slot = this.#slot(idstr, offset, false);
    return { ram: this.#staging, offset: slot * PAGE_SIZE };
  }

  pageFrom(idstr: string, offset: number, buffer: ArrayBufferLike, byteOffset: number): void {
    const slot = this.#slot(idstr, offset, false);
    this.#staging.set(new Uint8Array(buffer, byteOffset, PAGE_SIZE), slot * PAGE_SIZE);
  }

  zero(idstr: string, offset: number, fill: number): void {
    if (fill === 0) {
      this.#slot(idstr, offset, true);
      return;
    }
    const slot = this.#slot(idstr, offset, false);
    this.#staging.fill(fill, slot * PAGE_SIZE, (slot + 1) * PAGE_SIZE);
  }

  zeroRun(idstr: string, offset: number, count: number): boolean {
    const b = this.#p.blockIndex(idstr, offset, this.at);
    // A run past the block's end goes chunk by chunk: zero() names the chunk at fault.
    if (offset + count * PAGE_SIZE > this.#p.blockSize(b)) return false;
    if (!(this.#zero && this.#block === b && offset === this.#first + this.#count * PAGE_SIZE)) {
      this.flush();
      this.#block = b;
      this.#first = offset;
      this.#zero = true;
    }
    this.#count += count;
    return true;
  }

  xbzrle(): void {
    throw new StreamFormatError('An XBZRLE page arrived in post-copy (the source sends whole pages then)', this.at(), 'ram');
  }

  /** Forget the run gathered so far (a broken connection: its last page may be half there). */
  abandon(): void {
    this.#count = 0;
  }

  /** Place the run gathered so far, if any. */
  flush(): void {
    const count = this.#count;
    if (count === 0) return;
    this.#count = 0;
    this.#p.place(this.#block, this.#first, count, this.#zero ? undefined : this.#stagingAddress, this.at);
  }

  /**
   * Where page `offset` of block `idstr` goes in the run: it extends the run being
   * gathered when it follows it (same kind, same block, the next page, room left); the run
   * is placed and a new one begun otherwise. Returns its slot in the staging buffer.
   */
  #slot(idstr: string, offset: number, zero: boolean): number {
    const b = this.#p.blockIndex(idstr, offset, this.at);
    const follows = this.#count > 0 && this.#zero === zero && this.#block === b &&
      offset === this.#first + this.#count * PAGE_SIZE && (zero || this.#count < PLACE_BATCH_PAGES);
    if (!follows) {
      this.flush();
      this.#block = b;
      this.#first = offset;
      this.#zero = zero;
    }
    return this.#count++;
  }
}
