// The source's XBZRLE page cache (QEMU's page_cache.c + save_xbzrle_page): copies of
// pages as last sent, direct-mapped by page number, so a page sent again can go as a
// delta. Entries younger than two dirty syncs are not evicted by another page.

import { PAGE_SIZE } from '../hypervisor/types.js';
import { xbzrleEncode } from '../stream/ram-codec.js';

/** QEMU's CACHED_PAGE_LIFETIME: a cached page survives this many generations against a colliding one. */
const CACHED_PAGE_LIFETIME = 2;
const EMPTY = -1;

/** What to send for a page (XbzrleCache.encode). */
export const XBZRLE_UNCHANGED = 0;
export const XBZRLE_SEND_PAGE = -1;

export class XbzrleCache {
  readonly cacheSize: number;
  readonly #slots: number;
  readonly #data: Uint8Array;
  readonly #keys: Float64Array;
  readonly #ages: Float64Array;
  /** The page being sent, copied once so the guest cannot change it between encode and send. */
  readonly current = new Uint8Array(PAGE_SIZE);
  /** The encoded delta after encode() returned a positive length. */
  readonly encoded = new Uint8Array(PAGE_SIZE);
  /** The dirty-sync count: entries are aged by it. */
  generation = 0;

  // query-migrate xbzrle-cache counters
  bytes = 0;
  pages = 0;
  cacheMiss = 0;
  overflow = 0;
  /** Pages looked up in the cache (the cache-miss-rate denominator). */
  lookups = 0;
  /** Bytes the XBZRLE pages would have taken whole (the encoding-rate numerator). */
  unencodedBytes = 0;

  constructor(cacheSize: number) {
    this.cacheSize = cacheSize;
    this.#slots = Math.max(1, Math.floor(cacheSize / PAGE_SIZE));
    this.#data = new Uint8Array(this.#slots * PAGE_SIZE);
    this.#keys = new Float64Array(this.#slots).fill(EMPTY);
    this.#ages = new Float64Array(this.#slots);
  }

  /**
   * Decide how page `key` (a RAM-wide page number) goes out, its bytes at `offset` of
   * `ram`. Returns XBZRLE_UNCHANGED (send nothing: the destination has it), a positive
   * length (send `encoded` as an XBZRLE chunk), or XBZRLE_SEND_PAGE (send `current` whole).
   */
  encode(key: number, ram: Uint8Array, offset: number): number {
    this.current.set(ram.subarray(offset, offset + PAGE_SIZE));
    this.lookups++;
    const slot = key % this.#slots;
    if (this.#keys[slot] !== key) {
      this.cacheMiss++;
      this.#insert(slot, key);
      return XBZRLE_SEND_PAGE;
    }
    const cached = this.#data.subarray(slot * PAGE_SIZE, (slot + 1) * PAGE_SIZE);
    const len = xbzrleEncode(cached, this.current, this.encoded);
    if (len === 0) return XBZRLE_UNCHANGED;
    // Whole or as a delta, the destination ends up with `current`: so must the cache.
    cached.set(this.current);
    this.#ages[slot] = this.generation;
    if (len < 0) {
      this.overflow++;
      return XBZRLE_SEND_PAGE;
    }
    this.pages++;
    // QEMU counts the chunk's encoding byte and length with the delta.
    this.bytes += len + 3;
    this.unencodedBytes += PAGE_SIZE;
    return len;
  }

  /** Page `key` went out as a ZERO chunk: a cached copy must become zeros too. */
  zeroSent(key: number): void {
    const slot = key % this.#slots;
    if (this.#keys[slot] === key) this.#data.fill(0, slot * PAGE_SIZE, (slot + 1) * PAGE_SIZE);
  }

  #insert(slot: number, key: number): void {
    const held = this.#keys[slot]!;
    if (held !== EMPTY && this.#ages[slot]! + CACHED_PAGE_LIFETIME > this.generation) return;
    this.#keys[slot] = key;
    this.#ages[slot] = this.generation;
    this.#data.set(this.current, slot * PAGE_SIZE);
  }

  /** cache-miss-rate: misses over lookups. */
  get cacheMissRate(): number {
    return this.lookups === 0 ? 0 : this.cacheMiss / this.lookups;
  }

  /** encoding-rate: page bytes represented over bytes sent for them. */
  get encodingRate(): number {
    return this.bytes === 0 ? 0 : this.unencodedBytes / this.bytes;
  }
}
