// Reading guest RAM page by page, for both sides of the RAM handler: the zero-page test
// a 32-bit view of a block that follows memory being replaced under it, and counting
// pages in a dirty bitmap.

import { MigrationError } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { GuestMemoryBlock } from '../hypervisor/types.js';

export const WORDS_PER_PAGE = PAGE_SIZE / 4;

/** Set bits in a 32-bit word: pages in one word of a dirty bitmap. */
export function popcount32(v: number): number {
  v -= (v >>> 1) & 0x55555555;
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Whether the page starting at `word` is all zeros; stops at the first non-zero word group. */
export function isZeroPage(words: Uint32Array, word: number): boolean {
  const end = word + WORDS_PER_PAGE;
  // A detached view (grown WebAssembly memory) reads as undefined, which would pass for zeros.
  if (end > words.length) throw new MigrationError(`Cannot check page at word ${word}: the RAM view holds ${words.length} words (detached?)`);
  for (let i = word; i < end; i += 8) {
    if ((words[i]! | words[i + 1]! | words[i + 2]! | words[i + 3]! | words[i + 4]! | words[i + 5]! | words[i + 6]! | words[i + 7]!) !== 0) {
      return false;
    }
  }
  return true;
}

/**
 * The block's memory as 32-bit words. `block.bytes` is fetched anew by every caller and
 * the view rebuilt when its buffer changed: an accelerator's memory may be replaced under
 * us (v86's WebAssembly memory detaches its old buffer when it grows).
 */
export function wordsOf(block: GuestMemoryBlock, cached?: Uint32Array): Uint32Array {
  const { bytes } = block;
  if (cached !== undefined && cached.buffer === bytes.buffer && cached.byteOffset === bytes.byteOffset) return cached;
  if (bytes.byteOffset % 4 !== 0 || bytes.byteLength % PAGE_SIZE !== 0) {
    throw new MigrationError(`Cannot migrate RAM block "${block.idstr}": its memory is not page-sized and 4-byte aligned`);
  }
  return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}
