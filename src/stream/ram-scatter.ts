// Pages read straight into guest RAM. In QEMU's format every page comes right after its
// own 8-byte header, so a reader that buffers the stream must copy each page once more,
// from its buffer into guest RAM: a tenth of a second per GiB here, half of what a
// destination spends beside the kernel. A first pass sends pages in address order,
// though, so the next chunks can be guessed: page after page of the same block, each a
// PAGE|CONTINUE chunk at the next address. One readv(2) then puts each header into a
// scratch array and each page where that header will say it goes, and the headers are
// checked once they are in. A guess is made only into pages that still hold the zeros
// they started with (never written in this stream), so a wrong one is undone by zeroing
// them, after the bytes it misplaced are handed back to the reader to be read as usual.

import { RAM_PAGE_SIZE, chunkOffset, isPageContinue } from './ram-codec.js';
import type { StreamReader } from './reader.js';
import type { ScatteredReader } from '../transport/channel.js';
import { IOVEC_BYTES, consumeIovec, setIovec } from '../transport/iovec.js';

/** Pages one read guesses at most: 2 MiB of RAM, 1024 iovec entries (the kernel's UIO_MAXIOV). */
const MAX_PAGES = 512;

/** Where guessed pages may go: `pages` pages from `offset` of a block whose `ram` starts at host address `address - offset`. */
export interface ScatterTarget {
  readonly ram: Uint8Array;
  readonly offset: number;
  readonly address: number;
  readonly pages: number;
}

export interface ScatterSink {
  /**
   * Up to `maxPages` pages of block `idstr` from `offset` on that hold zeros and were not
   * written in this stream, ready to be written through their host address; null for
   * none (no such page there, an unknown block, memory without a fixed address).
   */
  scatterTarget(idstr: string, offset: number, maxPages: number): ScatterTarget | null;
  /** `pages` pages from `offset` of block `idstr` now hold what the stream sent for them. */
  scatterStored(idstr: string, offset: number, pages: number): void;
}

/**
 * Read, straight into guest RAM, the PAGE|CONTINUE chunks of block `block` that follow
 * the page at `last` in order, for as long as they do. The reader must hold nothing
 * (a chunk boundary) and `io` must be its channel's scattered reads, ready. Returns when
 * a chunk is not the one guessed (it and what came after it are then the reader's to
 * read), at the end of the stream, or where no page may be guessed into.
 */
export async function readScatteredPages(r: StreamReader, io: ScatteredReader, sink: ScatterSink, block: string, last: number): Promise<void> {
  // (Not a module constant: ram-codec.js imports this module, and this one its constants.)
  const CHUNK_BYTES = 8 + RAM_PAGE_SIZE;
  const maxPages = Math.min(MAX_PAGES, io.maxEntries >> 1);
  const iov = new Uint8Array(maxPages * 2 * IOVEC_BYTES);
  const entries = new DataView(iov.buffer);
  const headers = new Uint8Array(maxPages * 8);
  const headerView = new DataView(headers.buffer);
  const headerAddress = io.addressOf(headers);
  for (;;) {
    const next = last + RAM_PAGE_SIZE;
    const target = sink.scatterTarget(block, next, maxPages);
    if (target === null) return;
    const pages = target.pages;
    for (let i = 0; i < pages; i++) {
      setIovec(entries, 2 * i, headerAddress + 8 * i, 8);
      setIovec(entries, 2 * i + 1, target.address + i * RAM_PAGE_SIZE, RAM_PAGE_SIZE);
    }
    const total = pages * CHUNK_BYTES;
    let got = 0;
    let first = 0;
    // Chunks whose header was the one guessed and whose page is all in.
    let right = 0;
    let wrong = false;
    while (got < total && !wrong) {
      const n = await io.read(new Uint8Array(iov.buffer, first * IOVEC_BYTES, (2 * pages - first) * IOVEC_BYTES), 2 * pages - first);
      if (n === 0) break;
      got += n;
      first = consumeIovec(entries, first, 2 * pages, n);
      while (right < pages && got >= right * CHUNK_BYTES + 8) {
        const high = headerView.getUint32(right * 8);
        const low = headerView.getUint32(right * 8 + 4);
        if (!isPageContinue(low) || chunkOffset(high, low) !== next + right * RAM_PAGE_SIZE) {
          wrong = true;
          break;
        }
        if (got < (right + 1) * CHUNK_BYTES) break;
        right++;
      }
    }
    if (right > 0) {
      r.skipScattered(right * CHUNK_BYTES);
      sink.scatterStored(block, next, right);
      last = next + (right - 1) * RAM_PAGE_SIZE;
    }
    if (right === pages) continue;
    // A wrong guess, or the end of the stream: what came after the last right chunk goes
    // back to the reader, and the pages it landed in get their zeros back.
    r.takeBack(giveBack(headers, target, right, got - right * CHUNK_BYTES));
    return;
  }
}

/** The `bytes` read from chunk `from` on, gathered from the header scratch and the guessed pages, which are zeroed again. */
function giveBack(headers: Uint8Array, target: ScatterTarget, from: number, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  let at = 0;
  for (let chunk = from; at < bytes; chunk++) {
    const header = Math.min(8, bytes - at);
    out.set(headers.subarray(chunk * 8, chunk * 8 + header), at);
    at += header;
    if (at >= bytes) break;
    const page = Math.min(RAM_PAGE_SIZE, bytes - at);
    const start = target.offset + chunk * RAM_PAGE_SIZE;
    out.set(target.ram.subarray(start, start + page), at);
    target.ram.fill(0, start, start + page);
    at += page;
  }
  return out;
}

/**
 * Read `n` bytes through scattered reads into a scratch buffer the reader then holds;
 * false when the stream ended first. `room` (at least `n`, and 64 or more, so that the
 * scratch is never on V8's heap, where it may move) is the scratch's size.
 */
export async function readExactly(r: StreamReader, io: ScatteredReader, n: number, room: number): Promise<boolean> {
  const scratch = new Uint8Array(room);
  const iov = new Uint8Array(IOVEC_BYTES);
  const entry = new DataView(iov.buffer);
  let got = 0;
  while (got < n) {
    setIovec(entry, 0, io.addressOf(scratch) + got, n - got);
    const read = await io.read(iov, 1);
    if (read === 0) break;
    got += read;
  }
  // At the end of the stream, the general loop reports the chunk cut short.
  r.takeBack(scratch.subarray(0, got));
  return got === n;
}
