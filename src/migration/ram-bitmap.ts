// What the source knows of each RAM block's pages: which are still to send (one bit per
// page, the DirtyBitmap layout), which the host never backed at setup, and where the
// sender's walk over them stands. The page loops (ram.ts, ram-page-requests.ts) read these
// arrays directly; everything else about the bitmaps is here.

import { PAGE_SIZE } from '../hypervisor/types.js';
import type { GuestMemoryBlock } from '../hypervisor/types.js';
import type { BlockRange } from '../stream/return-path.js';
import { MigrationError } from '../errors.js';
import { keepShape } from '../hot-shapes.js';
import { popcount32, wordsOf } from './ram-pages.js';

export class RamBitmaps {
  /** The VM's blocks, taken at setup: the hot loops read these arrays, not the VM. */
  memory: readonly GuestMemoryBlock[] = [];
  /** Each block's RAM as 32-bit words (zero-page tests). */
  words: Uint32Array[] = [];
  /** Pages still to send, one bit per page. */
  toSend: Uint32Array[] = [];
  /** Pages per block. */
  blockPages: number[] = [];
  /** RAM-wide page number of each block's first page (XBZRLE cache keys). */
  blockBasePage: number[] = [];
  /**
   * Per block, the host's residency at setup (bit 0 per page); a page the host never
   * backed reads as zero, so its first send is a ZERO chunk without reading it — reading
   * would fault it in, which costs more than the whole rest of its trip. Each entry is used
   * once, and every fold() marks the pages the log reports as backed: a page written after
   * setup is read for real, even when its dirty bit is folded in before the first pass
   * reaches it.
   */
  untouched: (Uint8Array | undefined)[] = [];
  /** x-ignore-shared: blocks left out of the stream (never to send; their dirty log is not read). */
  ignored: boolean[] = [];
  /** Where the walk over the to-send bitmaps goes on from. */
  cursorBlock = 0;
  cursorWord = 0;

  constructor() {
    keepShape(this);
  }

  /** Every page of `memory` is to send, but those of the `ignored` blocks. Returns how many pages that is. */
  setup(memory: readonly GuestMemoryBlock[], ignored: readonly boolean[] = []): number {
    this.memory = memory;
    this.ignored = memory.map((_, b) => ignored[b] === true);
    this.words = memory.map((b) => wordsOf(b));
    this.blockPages = memory.map((b) => b.size / PAGE_SIZE);
    let pending = 0;
    this.toSend = this.blockPages.map((pages, b) => {
      const bitmap = new Uint32Array(Math.ceil(pages / 32));
      if (this.ignored[b]) return bitmap;
      bitmap.fill(0xffffffff);
      if (pages % 32 !== 0) bitmap[bitmap.length - 1] = (2 ** (pages % 32) - 1) >>> 0;
      pending += pages;
      return bitmap;
    });
    let base = 0;
    this.blockBasePage = this.blockPages.map((pages) => {
      const first = base;
      base += pages;
      return first;
    });
    return pending;
  }

  /** Take the host's residency now: pages it never backed by now will go as zero unread. */
  takeResidency(): void {
    this.untouched = this.memory.map((b) => b.residency?.());
  }

  /**
   * Fold a dirty log (one bitmap per block) into the to-send bitmaps (QEMU's
   * migration_bitmap_sync). Returns the pages the log reported and how many of them were
   * not already to send.
   */
  fold(logged: readonly (Uint32Array | undefined)[]): { dirtied: number; added: number } {
    let dirtied = 0;
    let added = 0;
    for (let b = 0; b < this.toSend.length; b++) {
      const toSend = this.toSend[b]!;
      const log = logged[b];
      if (!log || this.ignored[b]) continue;
      const n = Math.min(log.length, toSend.length);
      // A page written since setup no longer reads as zero, whatever the host said then:
      // its dirty bit may be folded into a to-send bit that is still pending, and the
      // first pass must then read it rather than send it as never backed.
      const untouched = this.untouched[b];
      const pages = this.blockPages[b]!;
      for (let i = 0; i < n; i++) {
        // Signed words throughout the bitmaps' loops: see RamHandler's #send.
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
    return { dirtied, added };
  }

  /** The index of block `idstr`, or -1. */
  blockIndex(idstr: string): number {
    return this.memory.findIndex((block) => block.idstr === idstr);
  }

  /** Clear page `page` of block `b` from the to-send bitmap: false if it was not to send. */
  take(b: number, page: number): boolean {
    const toSend = this.toSend[b]!;
    const word = page >>> 5;
    const bit = 1 << (page & 31);
    if ((toSend[word]! & bit) === 0) return false;
    toSend[word] = toSend[word]! & ~bit;
    return true;
  }

  /** Whether page `page` of block `b` was never backed (and not written since); it counts as used from now on. */
  firstUse(b: number, page: number): boolean {
    const untouched = this.untouched[b];
    if (untouched === undefined || page >= untouched.length) return false;
    const neverBacked = (untouched[page]! & 1) === 0;
    untouched[page] = 1;
    return neverBacked;
  }

  /**
   * Whether the 32 pages of bitmap word `word` of block `b` were all never backed at setup
   * (and not written since); if so they are marked used, as sending them does.
   */
  neverBacked32(b: number, word: number): boolean {
    const untouched = this.untouched[b];
    const first = word * 32;
    if (untouched === undefined || first + 32 > untouched.length) return false;
    for (let page = first; page < first + 32; page++) if ((untouched[page]! & 1) !== 0) return false;
    untouched.fill(1, first, first + 32);
    return true;
  }

  /** Block `b`'s runs of pages still to send (`toSend` true) or not, as byte ranges. */
  *runs(b: number, toSend: boolean): Generator<BlockRange> {
    const bitmap = this.toSend[b]!;
    const total = this.blockPages[b]!;
    // A whole word of the other kind is skipped at once.
    const other = toSend ? 0 : -1;
    let page = 0;
    while (page < total) {
      if (bitSet(bitmap, page) !== toSend) {
        page = (page & 31) === 0 && (bitmap[page >>> 5]! | 0) === other ? page + 32 : page + 1;
        continue;
      }
      const first = page;
      while (page < total && bitSet(bitmap, page) === toSend) page++;
      yield { start: first * PAGE_SIZE, length: (page - first) * PAGE_SIZE };
    }
  }

  /**
   * Post-copy recovery: block `b`'s received bitmap from the destination (bit i of byte
   * i / 8 set where page i is there, padded to 8 bytes, as QEMU's ramblock_recv_bitmap_send):
   * every page not there is to send again (QEMU's ram_dirty_bitmap_reload); the walk starts
   * over. Returns the pages now to send in all blocks. Throws on a bitmap of the wrong size.
   */
  reload(b: number, received: Uint8Array): number {
    const block = this.memory[b]!;
    const pages = this.blockPages[b]!;
    const expected = Math.ceil(Math.ceil(pages / 8) / 8) * 8;
    if (received.byteLength !== expected) {
      throw new MigrationError(`Post-copy recovery: ramblock '${block.idstr}' bitmap size mismatch (0x${received.byteLength.toString(16)} != 0x${expected.toString(16)})`);
    }
    const toSend = this.toSend[b]!;
    const view = new DataView(received.buffer, received.byteOffset, received.byteLength);
    for (let w = 0; w < toSend.length; w++) toSend[w] = ~view.getUint32(w * 4, true) >>> 0;
    if (pages % 32 !== 0) toSend[toSend.length - 1] = toSend[toSend.length - 1]! & ((2 ** (pages % 32)) - 1);
    let pending = 0;
    for (const bitmap of this.toSend) for (let w = 0; w < bitmap.length; w++) pending += popcount32(bitmap[w]! | 0);
    this.cursorBlock = 0;
    this.cursorWord = 0;
    return pending;
  }
}

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
