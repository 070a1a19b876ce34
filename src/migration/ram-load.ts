// The RAM section's destination side: chunks go straight into guest RAM. A page known to
// hold zeros (never backed, or in a block still fresh for this migration) is not
// touched by a ZERO chunk; a page with data first backs its 2 MiB region in one call, and
// regions ahead are backed on libuv's thread pool while pages land densely.

import { StreamFormatError } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { GuestMemoryBlock } from '../hypervisor/types.js';
import { readRamChunks, xbzrleDecode } from '../stream/ram-codec.js';
import type { RamChunkSink, RamStreamState } from '../stream/ram-codec.js';
import type { ScatterTarget } from '../stream/ram-scatter.js';
import type { StreamReader } from '../stream/reader.js';
import { isZeroPage, wordsOf } from './ram-pages.js';
import type { MigrationVm } from './vm.js';
import type { PostcopyRamSink } from './postcopy-incoming.js';
import { keepShape } from '../hot-shapes.js';
import type { MultifdPageSink, MultifdReceiver } from './multifd-recv.js';

/** The RAM section version both sides speak (QEMU ram.c). */
export const RAM_VERSION = 4;
/** The destination backs guest RAM in regions of this size ahead of the pages landing in it. */
const POPULATE_CHUNK = 2 * 1024 * 1024;
/**
 * Once this many pages of one 2 MiB region have arrived, the pages are coming densely (a
 * first pass), and the next regions are backed in the background.
 */
const DENSE_REGION_PAGES = 64;
/** How many regions past the one being written are backed ahead, and at most at once. */
const POPULATE_AHEAD_REGIONS = 4;
const POPULATE_AHEAD_IN_FLIGHT = 2;

export class RamLoader implements RamChunkSink, MultifdPageSink {
  readonly #vm: MigrationVm;
  /**
   * The VM's blocks, taken once per stream: the page path reads this array rather than the
   * VM, so its compiled code does not depend on which kind of VM it was compiled for (a
   * warm-up's scratch one, then the Machine).
   */
  #memory: readonly GuestMemoryBlock[] = [];
  #memSizeSeen = false;
  /** The section being loaded, for errors, and per block a 32-bit view of its memory. */
  #reader: StreamReader | undefined;
  #section = '';
  #words: Uint32Array[] = [];
  /** The block the last page named, and its index (most pages name the one before). */
  #last: GuestMemoryBlock | undefined;
  #lastIndex = -1;
  /** Per block, pages known to hold zeros (never backed, never written since). */
  #knownZero: (Uint8Array | undefined)[] = [];
  /** Per block, 2 MiB regions already backed in bulk before pages land in them. */
  #populated: (Uint8Array | undefined)[] = [];
  /** The region pages last landed in, how many landed there, and background populates running. */
  #lastRegion = { block: -1, region: -1, pages: 0 };
  #populatesInFlight = 0;
  /** The last block named, kept across sections as QEMU's loader does. */
  readonly #loadState: RamStreamState = { lastBlock: null };
  /** Post-copy, from LISTEN on: pages are placed through this, never written (postcopy-incoming.ts). */
  #placement: PostcopyRamSink | undefined;
  /** The `multifd` capability: pages of data come on these channels; every EOS waits for their SYNC. */
  #multifd: MultifdReceiver | undefined;

  /** x-ignore-shared: blocks another process maps too get no pages (their memory is the source's), and MEM_SIZE names addresses. */
  readonly #ignoreShared: boolean;
  /** Per block: left out of the stream (x-ignore-shared and shared). */
  #ignored: boolean[] = [];

  constructor(vm: MigrationVm, ignoreShared = false) {
    keepShape(this);
    this.#vm = vm;
    this.#ignoreShared = ignoreShared;
  }

  /** MEM_SIZE carries each block's guest-physical address (x-ignore-shared). */
  get memSizeWithAddresses(): boolean {
    return this.#ignoreShared;
  }

  async load(r: StreamReader, versionId: number, section: string): Promise<void> {
    if (versionId !== RAM_VERSION) {
      throw new StreamFormatError(`Cannot load section "${section}": RAM version ${versionId} is not ${RAM_VERSION}`, r.offset, section);
    }
    const placement = this.#placement;
    if (placement !== undefined) {
      placement.at = () => r.offset;
      await readRamChunks(r, placement, section, this.#loadState);
      placement.flush();
      return;
    }
    const memory = this.#vm.memory;
    this.#memory = memory;
    this.#prepare();
    this.#reader = r;
    this.#section = section;
    this.#words = memory.map((b) => wordsOf(b));
    this.#last = undefined;
    this.#lastIndex = -1;
    await readRamChunks(r, this, section, this.#loadState);
    // QEMU's ram_load_precopy at RAM_SAVE_FLAG_EOS: multifd_recv_sync_main.
    if (this.#multifd !== undefined) await this.#multifd.syncMain();
  }

  /** The `multifd` capability: pages also come through `receiver`'s channels (multifd-recv.ts). */
  useMultifd(receiver: MultifdReceiver): void {
    this.#multifd = receiver;
  }

  /** Take the VM's blocks and what is known of them once, before the first page lands (on any channel). */
  #prepare(): void {
    if (this.#memory.length === 0) this.#memory = this.#vm.memory;
    if (this.#knownZero.length === 0) {
      const memory = this.#memory;
      this.#knownZero = memory.map((b) => {
        // Nothing has been loaded into this memory yet, backed or not: every page is zero.
        if (b.takeFreshZero?.() === true) return new Uint8Array(b.size / PAGE_SIZE).fill(1);
        const residency = b.residency?.();
        if (!residency) return undefined;
        // Fresh destination memory: every page the host never backed holds zeros.
        for (let i = 0; i < residency.length; i++) residency[i] = (residency[i]! & 1) ^ 1;
        return residency;
      });
      this.#populated = memory.map((b) => (b.populate ? new Uint8Array(Math.ceil(b.size / POPULATE_CHUNK)) : undefined));
      this.#ignored = memory.map((b) => this.#ignoreShared && b.file?.shared === true);
    }
  }

  // ---- MultifdPageSink ----

  blocks(): readonly GuestMemoryBlock[] {
    this.#prepare();
    return this.#memory;
  }

  blockAddress(b: number): number | undefined {
    this.#prepare();
    return this.#memory[b]?.hostAddress;
  }

  multifdPage(b: number, offset: number): Uint8Array {
    this.#prepare();
    this.#aboutToWrite(b, offset);
    return this.#memory[b]!.bytes;
  }

  // ---- the RamChunkSink readRamChunks() writes through: methods of this class rather than
  // closures made per section, so that code V8 compiles around their calls (inlined for
  // each page) stays valid from one migration to the next — a closure is a new function
  // object each time, and code that inlined one is thrown away once it is gone. ----

  /** The index of block `idstr`, with `offset` a whole page inside it; throws otherwise. */
  #find(idstr: string, offset: number): number {
    let last = this.#last;
    if (last === undefined || last.idstr !== idstr) {
      const index = this.#memory.findIndex((b) => b.idstr === idstr);
      if (this.#ignored[index] === true) throw new StreamFormatError(`block ${idstr} should not be migrated !`, this.#reader!.offset, this.#section);
      this.#lastIndex = index;
      last = this.#last = this.#memory[index];
      if (last === undefined) {
        throw new StreamFormatError(`Cannot load RAM page: unknown block "${idstr}"`, this.#reader!.offset, this.#section);
      }
    }
    if (!Number.isInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0 || offset + PAGE_SIZE > last.size) {
      throw new StreamFormatError(`Cannot load RAM page at offset ${offset} of block "${idstr}" (${last.size} bytes)`, this.#reader!.offset, this.#section);
    }
    return this.#lastIndex;
  }

  /** Make a page hold `fill` bytes; fresh destination memory is already zero: checking it is cheaper than writing. */
  #fillPage(b: number, offset: number, fill: number): void {
    const words = (this.#words[b] = wordsOf(this.#memory[b]!, this.#words[b]));
    if (fill === 0 && isZeroPage(words, offset / 4)) return;
    this.#memory[b]!.bytes.fill(fill, offset, offset + PAGE_SIZE);
  }

  memSize(total: number, blocks: readonly { idstr: string; size: number; address?: number }[]): void {
    const memory = this.#memory;
    const r = this.#reader!;
    const section = this.#section;
    for (const sent of blocks) {
      const b = memory.findIndex((m) => m.idstr === sent.idstr);
      const local = memory[b];
      if (!local) throw new StreamFormatError(`Cannot load RAM: unknown block "${sent.idstr}" (${sent.size} bytes)`, r.offset, section);
      // QEMU's words: the same memory at another guest address is not the same guest.
      if (this.#ignored[b] === true && sent.address !== local.guestAddress) {
        throw new StreamFormatError(`Mismatched GPAs for block ${sent.idstr} ${sent.address ?? '?'}!= ${local.guestAddress}`, r.offset, section);
      }
      if (local.size !== sent.size) {
        // QEMU: "Length mismatch: %s: 0x..." — the destination must be started with the same -m.
        throw new StreamFormatError(`Cannot load RAM block "${sent.idstr}": length ${sent.size} differs from the local ${local.size}`, r.offset, section);
      }
    }
    const localTotal = memory.reduce((sum, b) => sum + b.size, 0);
    if (total !== localTotal) {
      throw new StreamFormatError(`Cannot load RAM: total ${total} bytes differs from the local ${localTotal}`, r.offset, section);
    }
    this.#memSizeSeen = true;
  }

  pageTarget(idstr: string, offset: number): { ram: Uint8Array; offset: number } {
    const b = this.#find(idstr, offset);
    this.#aboutToWrite(b, offset);
    return { ram: this.#memory[b]!.bytes, offset };
  }

  pageFrom(idstr: string, offset: number, buffer: ArrayBufferLike, byteOffset: number): void {
    const b = this.#find(idstr, offset);
    this.#aboutToWrite(b, offset);
    this.#memory[b]!.bytes.set(new Uint8Array(buffer, byteOffset, PAGE_SIZE), offset);
  }

  scatterTarget(idstr: string, offset: number, maxPages: number): ScatterTarget | null {
    const b = this.#blockIndex(idstr);
    const block = this.#memory[b];
    const knownZero = this.#knownZero[b];
    if (block === undefined || knownZero === undefined || block.hostAddress === undefined) return null;
    if (!Number.isInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0 || offset >= block.size) return null;
    const first = offset / PAGE_SIZE;
    const limit = Math.min(maxPages, block.size / PAGE_SIZE - first);
    // Only pages still holding the zeros they started with: a wrong guess is undone by zeroing.
    const written = knownZero.subarray(first, first + limit).indexOf(0);
    const pages = written < 0 ? limit : written;
    if (pages === 0) return null;
    const populated = this.#populated[b];
    if (populated !== undefined) {
      const lastRegion = Math.floor((offset + pages * PAGE_SIZE - 1) / POPULATE_CHUNK);
      for (let region = Math.floor(offset / POPULATE_CHUNK); region <= lastRegion; region++) {
        if (populated[region] === 1) continue;
        populated[region] = 1;
        block.populate?.(region * POPULATE_CHUNK, POPULATE_CHUNK);
      }
      // Pages this dense are a first pass: back what comes next meanwhile, as #aboutToWrite does.
      this.#populateAhead(b, lastRegion);
    }
    return { ram: block.bytes, offset, address: block.hostAddress + offset, pages };
  }

  scatterStored(idstr: string, offset: number, pages: number): void {
    const b = this.#blockIndex(idstr);
    const first = offset / PAGE_SIZE;
    this.#knownZero[b]?.fill(0, first, first + pages);
  }

  /** The index of block `idstr`, or -1. */
  #blockIndex(idstr: string): number {
    const last = this.#last;
    if (last !== undefined && last.idstr === idstr) return this.#lastIndex;
    const index = this.#memory.findIndex((b) => b.idstr === idstr);
    // A block left out of the stream takes no page: the slow path (#find) says so.
    return this.#ignored[index] === true ? -1 : index;
  }

  xbzrle(idstr: string, offset: number, encoded: Uint8Array): void {
    const b = this.#find(idstr, offset);
    this.#aboutToWrite(b, offset);
    try {
      // The page holds what the source's cache held: the delta applies in place.
      xbzrleDecode(encoded, this.#memory[b]!.bytes.subarray(offset, offset + PAGE_SIZE));
    } catch (err) {
      throw new StreamFormatError(`Cannot load XBZRLE page at offset ${offset} of block "${idstr}": ${err instanceof Error ? err.message : String(err)}`, this.#reader!.offset, this.#section, { cause: err });
    }
  }

  zero(idstr: string, offset: number, fill: number): void {
    const b = this.#find(idstr, offset);
    const knownZero = this.#knownZero[b];
    if (knownZero !== undefined && knownZero[offset / PAGE_SIZE] === 1) {
      if (fill === 0) return;
      knownZero[offset / PAGE_SIZE] = 0;
    }
    this.#fillPage(b, offset, fill);
  }

  zeroRun(idstr: string, offset: number, count: number): boolean {
    const b = this.#blockIndex(idstr);
    const block = this.#memory[b];
    if (block === undefined || offset % PAGE_SIZE !== 0 || offset + count * PAGE_SIZE > block.size) return false;
    const knownZero = this.#knownZero[b];
    const first = offset / PAGE_SIZE;
    if (knownZero === undefined) {
      for (let page = first; page < first + count; page++) this.#fillPage(b, page * PAGE_SIZE, 0);
      return true;
    }
    // Mostly every page is known to hold zeros already (a fresh destination's first pass).
    // The search stays inside the run: one from `first` to the end of the block costs the
    // rest of the block whenever it holds no written page, and a first pass of runs between
    // pages of data (a real guest's RAM) made that quadratic — 2.6 s for 1 GiB, not 0.1.
    const run = knownZero.subarray(first, first + count);
    for (let i = run.indexOf(0); i >= 0; i = run.indexOf(0, i + 1)) {
      this.#fillPage(b, (first + i) * PAGE_SIZE, 0);
    }
    return true;
  }

  /**
   * A page is about to be written on the destination: it no longer holds zeros, and its
   * 2 MiB region is backed in one call first — faulting pages in one by one from here
   * costs tens of µs each on these machines; the kernel does a region in well under one.
   */
  #aboutToWrite(block: number, offset: number): void {
    const knownZero = this.#knownZero[block];
    if (knownZero !== undefined) knownZero[offset / PAGE_SIZE] = 0;
    const populated = this.#populated[block];
    if (populated === undefined) return;
    const region = Math.floor(offset / POPULATE_CHUNK);
    const last = this.#lastRegion;
    if (last.block === block && last.region === region) {
      if (++last.pages === DENSE_REGION_PAGES) this.#populateAhead(block, region);
    } else {
      last.block = block;
      last.region = region;
      last.pages = 1;
    }
    if (populated[region] === 1) return;
    populated[region] = 1;
    this.#memory[block]!.populate?.(region * POPULATE_CHUNK, POPULATE_CHUNK);
  }

  /**
   * Pages are landing densely in `region` (a first pass sends them in order): back the
   * next regions on another thread meanwhile, so that this one copies pages instead of
   * waiting for the kernel to find memory for them. A region is backed once, by whichever
   * comes first; the two may overlap safely (populating leaves present pages alone).
   */
  #populateAhead(block: number, region: number): void {
    const mem = this.#memory[block]!;
    const populated = this.#populated[block]!;
    if (mem.populateInBackground === undefined) return;
    const end = Math.min(populated.length, region + 1 + POPULATE_AHEAD_REGIONS);
    for (let r = region + 1; r < end && this.#populatesInFlight < POPULATE_AHEAD_IN_FLIGHT; r++) {
      if (populated[r] === 1) continue;
      populated[r] = 1;
      this.#populatesInFlight++;
      const populating = mem.populateInBackground(r * POPULATE_CHUNK, POPULATE_CHUNK).finally(() => {
        this.#populatesInFlight--;
        this.#populating.delete(populating);
      });
      this.#populating.add(populating);
    }
  }

  /** Background populates still running (post-copy's DISCARD must not race one). */
  readonly #populating = new Set<Promise<void>>();

  /** Resolves once no region is being backed in the background. */
  async backgroundSettled(): Promise<void> {
    while (this.#populating.size > 0) await Promise.allSettled([...this.#populating]);
  }

  /** Post-copy's LISTEN: from now on pages are placed through `sink`. */
  placeWith(sink: PostcopyRamSink): void {
    this.#placement = sink;
  }

  /** Whether a MEM_SIZE record arrived (a stream without one never set up RAM). */
  get memSizeSeen(): boolean {
    return this.#memSizeSeen;
  }
}
