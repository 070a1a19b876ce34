// Which pages of an anonymous mapping the host has ever backed. A page it never backed
// reads as zero, so the migration sends it as a ZERO chunk without reading it (a read
// would fault it in). "Backed" must include pages the kernel swapped out: mincore(2)
// reports those as not resident, and a guest page full of data, swapped out under memory
// pressure, would then go as zeros — the guest's memory silently lost. /proc/self/pagemap
// says both things per page: present (bit 63) or swapped (bit 62); neither is a page
// never backed (or given back with MADV_DONTNEED), which reads as zero. Reading it costs
// ~2 ms per GiB here against ~1 ms for mincore, which is exact on a host without swap
// (an anonymous page is then in memory or was never backed): mincore there, pagemap
// wherever /proc/swaps lists swap.

import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { debuglog } from 'node:util';
import { mincore } from './libc.js';

const trace = debuglog('ferry');
const PAGE = 4096;
/** pagemap entries read at a time (512 KiB). */
const CHUNK_ENTRIES = 65536;

let pagemapFd: number | undefined | null;
let chunk: Uint32Array | undefined;

/**
 * One byte per page of the page-aligned [address, address + size): 1 where the host backs
 * the page or holds it in swap, 0 where it never backed it. Without swap, mincore's answer;
 * with swap, pagemap's, or where pagemap cannot be read every page as backed — which costs
 * reads, never data.
 */
export function residencyAt(address: bigint, size: number, swaps: string | null = readProcSwaps()): Uint8Array {
  const pages = Math.ceil(size / PAGE);
  const vec = new Uint8Array(pages);
  if (!swapConfigured(swaps)) {
    mincore(address, size, vec);
    for (let i = 0; i < pages; i++) vec[i] = vec[i]! & 1;
    return vec;
  }
  const fd = pagemap();
  if (fd === undefined) return vec.fill(1);
  const buffer = (chunk ??= new Uint32Array(CHUNK_ENTRIES * 2));
  const bytes = new Uint8Array(buffer.buffer);
  const first = Number(address / BigInt(PAGE));
  for (let done = 0; done < pages;) {
    const n = Math.min(CHUNK_ENTRIES, pages - done);
    let got: number;
    try {
      got = readSync(fd, bytes, 0, n * 8, (first + done) * 8);
    } catch (err) {
      trace('pagemap: read failed (%s); the rest of the range is taken as backed', (err as Error).message);
      got = 0;
    }
    const entries = Math.floor(got / 8);
    markBacked(buffer, entries, vec, done);
    if (entries < n) {
      vec.fill(1, done + entries, pages);
      break;
    }
    done += n;
  }
  return vec;
}

/**
 * From `count` pagemap entries (two little-endian u32 words each), set vec[at + i] to 1
 * where entry i is present (bit 63) or swapped (bit 62), else 0.
 */
export function markBacked(entries: Uint32Array, count: number, vec: Uint8Array, at: number): void {
  for (let i = 0; i < count; i++) vec[at + i] = entries[2 * i + 1]! >>> 30 === 0 ? 0 : 1;
}

/** Whether the host has swap configured (/proc/swaps lists a device or file; null: unreadable, taken as yes). */
export function swapConfigured(swaps: string | null = readProcSwaps()): boolean {
  if (swaps === null) return true;
  return swaps.split('\n').slice(1).some((line) => line.trim() !== '');
}

function pagemap(): number | undefined {
  if (pagemapFd === undefined) {
    try {
      pagemapFd = openSync('/proc/self/pagemap', 'r');
    } catch (err) {
      trace('pagemap: cannot open /proc/self/pagemap (%s); with swap on, every page is taken as backed', (err as Error).message);
      pagemapFd = null;
    }
  }
  return pagemapFd ?? undefined;
}

function readProcSwaps(): string | null {
  try {
    return readFileSync('/proc/swaps', 'utf8');
  } catch {
    return null;
  }
}

/** Close the pagemap descriptor (tests; a process keeps it open for its life). */
export function closePagemap(): void {
  if (typeof pagemapFd === 'number') closeSync(pagemapFd);
  pagemapFd = undefined;
}
