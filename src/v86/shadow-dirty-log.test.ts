// The shadow-copy dirty log against a reference: random writes between collects, with the
// reference set of pages whose content really changed computed independently.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ShadowDirtyLog } from './shadow-dirty-log.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import { HostMemory } from '../sys/host-memory.js';

function bitmapPages(bitmap: Uint32Array): number[] {
  const pages: number[] = [];
  for (let w = 0; w < bitmap.length; w++) {
    for (let b = 0; b < 32; b++) if ((bitmap[w]! >>> b) & 1) pages.push(w * 32 + b);
  }
  return pages;
}

/** A small deterministic PRNG so failures reproduce. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('reports exactly the pages whose content changed across some collect since the previous sync', () => {
  const pages = 300; // not a multiple of the 16-page chunk or of 32
  const ram = new Uint8Array(pages * PAGE_SIZE);
  const log = new ShadowDirtyLog(() => ram);
  const rand = rng(7);
  for (let i = 0; i < ram.length; i += 97) ram[i] = Math.floor(rand() * 256);
  log.start();
  // The reference: compare full copies taken at every collect point, page by page.
  let point = ram.slice();
  const changedSincePoint = (): number[] => {
    const out: number[] = [];
    for (let p = 0; p < pages; p++) {
      for (let i = p * PAGE_SIZE; i < (p + 1) * PAGE_SIZE; i++) {
        if (point[i] !== ram[i]) { out.push(p); break; }
      }
    }
    point = ram.slice();
    return out;
  };
  let totalReported = 0;
  for (let round = 0; round < 20; round++) {
    const expected = new Set<number>();
    const writes = Math.floor(rand() * 200);
    for (let i = 0; i < writes; i++) {
      const at = Math.floor(rand() * ram.length);
      // A third of the writes store the byte already there: not a change.
      ram[at] = rand() < 0.33 ? ram[at]! : Math.floor(rand() * 256);
      if (rand() < 0.2) { // a burst of guest code ends here
        log.collect();
        for (const p of changedSincePoint()) expected.add(p);
      }
    }
    for (const p of changedSincePoint()) expected.add(p);
    const got = bitmapPages(log.sync()[0]!);
    assert.deepEqual(got, [...expected].sort((a, b) => a - b), `round ${round}`);
    totalReported += got.length;
  }
  assert.ok(totalReported > 100, `the test wrote too little to mean anything (${totalReported} pages)`);
  log.stop();
  assert.equal(log.active, false);
});

test('a page changed A → B → A across a collect is reported (the case a two-instant compare misses)', () => {
  const ram = new Uint8Array(64 * PAGE_SIZE);
  const log = new ShadowDirtyLog(() => ram);
  log.start();
  ram[5 * PAGE_SIZE + 10] = 1; // a lock taken ...
  log.collect(); // ... during a burst after which the RAM handler may copy the page
  ram[5 * PAGE_SIZE + 10] = 0; // and released again before the next sync
  assert.deepEqual(bitmapPages(log.sync()[0]!), [5]);
  assert.deepEqual(bitmapPages(log.sync()[0]!), [], 'a second sync with no change reports nothing');
});

test('no write, no report; a write of identical bytes, no report', () => {
  const ram = new Uint8Array(40 * PAGE_SIZE).fill(3);
  const log = new ShadowDirtyLog(() => ram);
  log.start();
  ram.fill(3, 0, 10 * PAGE_SIZE);
  assert.deepEqual(bitmapPages(log.sync()[0]!), []);
  ram[39 * PAGE_SIZE + PAGE_SIZE - 1] = 4; // last byte of the last page
  ram[0] = 9; // first byte of the first page
  assert.deepEqual(bitmapPages(log.sync()[0]!), [0, 39]);
});

test('start() forgets earlier marks; a stopped log refuses sync and collect is a no-op', () => {
  const ram = new Uint8Array(8 * PAGE_SIZE);
  const log = new ShadowDirtyLog(() => ram);
  assert.throws(() => log.sync(), /not started/);
  assert.equal(log.collect(), 0);
  log.start();
  ram[0] = 1;
  log.collect();
  log.start();
  assert.deepEqual(bitmapPages(log.sync()[0]!), []);
});

test('follows the RAM view when it is re-created over a new buffer (wasm memory growth)', () => {
  let backing = new Uint8Array(16 * PAGE_SIZE);
  const log = new ShadowDirtyLog(() => backing);
  log.start();
  const grown = new Uint8Array(32 * PAGE_SIZE);
  grown.set(backing);
  backing = grown.subarray(0, 16 * PAGE_SIZE);
  backing[3 * PAGE_SIZE] = 7;
  assert.deepEqual(bitmapPages(log.sync()[0]!), [3]);
});

test('refuses RAM that is not a whole number of pages', () => {
  assert.throws(() => new ShadowDirtyLog(() => new Uint8Array(PAGE_SIZE + 1)), /not a multiple/);
});

test('with the host\'s residency: never-backed pages are skipped (and stay unbacked), every real change is still reported', () => {
  const pages = 2048; // 8 MiB
  const host = HostMemory.allocate(pages * PAGE_SIZE);
  try {
    const ram = host.bytes;
    const backedCount = (): number => host.residency().reduce((n, b) => n + (b & 1), 0);
    // Touch pages spread over the first 2 MiB only (a THP region backs all of its 512).
    for (const p of [3, 40, 41, 300]) ram[p * PAGE_SIZE + 5] = 1;
    const before = backedCount();
    const log = new ShadowDirtyLog(() => ram, undefined, () => host.residency());
    log.start();
    assert.equal(log.collect(), 0);
    assert.equal(backedCount(), before, 'start and collect back no page of their own');
    // A change in a backed page, a write that makes a never-backed page backed, and a
    // write of the byte already there.
    ram[40 * PAGE_SIZE + 5] = 2;
    ram[1500 * PAGE_SIZE + 100] = 9;
    ram[3 * PAGE_SIZE + 5] = 1;
    log.collect();
    ram[41 * PAGE_SIZE] = 7;
    assert.deepEqual(bitmapPages(log.sync()[0]!), [40, 41, 1500]);
    // Back to the old value after a collect: reported again, as without residency.
    ram[1500 * PAGE_SIZE + 100] = 0;
    assert.deepEqual(bitmapPages(log.sync()[0]!), [1500]);
    assert.deepEqual(bitmapPages(log.sync()[0]!), []);
    log.stop();
  } finally {
    host.unmap();
  }
});
