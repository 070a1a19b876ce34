// calc-dirty-rate's meter against memory and a dirty log the test controls: QEMU 7.2's
// checks and words, the figure each mode computes, the status it goes through, and the
// dirty log held (and given back) only in bitmap mode.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { DirtyLog, GuestMemoryBlock } from '../hypervisor/types.js';
import { DirtyRateMeter, samplePageNumbers, type DirtyRateMeterOptions } from './dirty-rate.js';

const MiB = 2 ** 20;

function block(size: number): GuestMemoryBlock {
  return { idstr: 'pc.ram', guestAddress: 0, size, bytes: new Uint8Array(size) };
}

/** A dirty log whose sync() answers `bitmaps`; it records start/stop. */
function fakeLog(bitmaps: () => Uint32Array[]) {
  const calls: string[] = [];
  let active = false;
  const log: DirtyLog = {
    start: () => { calls.push('start'); active = true; },
    sync: () => { calls.push('sync'); return bitmaps(); },
    stop: () => { calls.push('stop'); active = false; },
    get active() { return active; },
  };
  return { log, calls };
}

/** A meter whose period passes when `during` has run (the "guest" writes there). */
function meter(memory: GuestMemoryBlock[], extra: Partial<DirtyRateMeterOptions> & { during?: () => void; periodMs?: number } = {}) {
  let clock = 0;
  const { log } = fakeLog(() => memory.map((b) => new Uint32Array(b.size / PAGE_SIZE / 32)));
  return new DirtyRateMeter({
    memory: () => memory,
    dirtyLog: log,
    dirtyLogBusy: () => undefined,
    now: () => clock,
    sleep: async (ms) => {
      extra.during?.();
      clock += extra.periodMs ?? ms;
    },
    clockSeconds: () => 4242,
    ...extra,
  });
}

test('dirty rate: QEMU 7.2\'s checks, in its order and words; nothing starts on a refused request', () => {
  const m = meter([block(64 * MiB)]);
  const refused: Array<[Parameters<DirtyRateMeter['start']>[0], RegExp]> = [
    [{ calcTime: 0 }, /^calc-time is out of range\[1, 60\]\.$/],
    [{ calcTime: 61 }, /^calc-time is out of range\[1, 60\]\.$/],
    [{ calcTime: 1.5 }, /^calc-time is out of range/],
    [{ calcTime: 1, samplePages: 127 }, /^sample-pages is out of range\[128, 16384\]\.$/],
    [{ calcTime: 1, samplePages: 16385 }, /^sample-pages is out of range\[128, 16384\]\.$/],
    [{ calcTime: 1, samplePages: 512, mode: 'dirty-bitmap' }, /^either sample-pages or dirty-ring can be specified\.$/],
    [{ calcTime: 1, mode: 'dirty-ring' }, /^mode dirty-ring is not enabled, use other method instead\.$/],
  ];
  for (const [request, message] of refused) assert.throws(() => m.start(request), { message }, JSON.stringify(request));
  assert.deepEqual(m.query(), { status: 'unstarted', 'start-time': 0, 'calc-time': 0, 'sample-pages': 0, mode: 'page-sampling' });
});

test('dirty rate: page sampling counts the sampled pages that changed, scaled to the whole RAM, per period', async () => {
  const ram = block(64 * MiB);
  // The "guest" rewrites the first quarter of RAM during the period.
  const m = meter([ram], { during: () => ram.bytes.fill(7, 0, 16 * MiB), random: mulberry(1) });
  const measuring = m.start({ calcTime: 2, samplePages: 16384 });
  assert.equal(m.query().status, 'measuring');
  assert.throws(() => m.start({ calcTime: 1 }), { message: /^the dirty rate is already being measured\.$/ });
  await measuring;
  const info = m.query();
  assert.equal(info.status, 'measured');
  assert.equal(info['start-time'], 4242);
  assert.equal(info['calc-time'], 2);
  assert.equal(info['sample-pages'], 16384);
  assert.equal(info.mode, 'page-sampling');
  // 16 MiB of 64 dirtied over 2 s: 8 MB/s, give or take the sample (1024 of 16384 pages).
  assert.ok(info['dirty-rate']! >= 6 && info['dirty-rate']! <= 10, `dirty-rate ${info['dirty-rate']}`);
});

test('dirty rate: page sampling of a guest that writes nothing is 0; of one that rewrites everything, all its RAM per period', async () => {
  const quiet = meter([block(8 * MiB)]);
  await quiet.start({ calcTime: 1 });
  assert.equal(quiet.query()['dirty-rate'], 0);
  const ram = block(8 * MiB);
  let round = 0;
  const busy = meter([ram], { during: () => ram.bytes.fill(++round) });
  await busy.start({ calcTime: 1, samplePages: 16384 });
  assert.equal(busy.query()['dirty-rate'], 8);
});

test('dirty rate: the bitmap counts distinct pages written, ignores bits past a block\'s end, and gives the log back', async () => {
  const memory = [block(4 * MiB + 5 * PAGE_SIZE)];
  const pages = memory[0]!.size / PAGE_SIZE; // 1029: the last bitmap word has 5 real bits
  const bitmap = new Uint32Array(Math.ceil(pages / 32));
  bitmap.fill(0xffffffff); // every page, and 27 bits past the end
  const { log, calls } = fakeLog(() => [bitmap]);
  let held = false;
  let clock = 0;
  const m: DirtyRateMeter = new DirtyRateMeter({
    memory: () => memory, dirtyLog: log, dirtyLogBusy: () => undefined, now: () => clock,
    sleep: async (ms) => { held = m.holdsDirtyLog; clock += ms; },
  });
  await m.start({ calcTime: 1, mode: 'dirty-bitmap' });
  assert.deepEqual(calls, ['start', 'sync', 'stop']);
  assert.equal(held, true, 'the log is held during the period');
  assert.equal(m.holdsDirtyLog, false);
  const info = m.query();
  assert.equal(info.mode, 'dirty-bitmap');
  assert.equal(info['sample-pages'], 0);
  assert.equal(info['dirty-rate'], Math.floor((pages * PAGE_SIZE) / MiB), '1029 pages in 1 s');
});

test('dirty rate: the bitmap is refused while a migration holds the dirty log, and the refusal changes nothing', () => {
  const { log, calls } = fakeLog(() => []);
  const m = new DirtyRateMeter({
    memory: () => [block(MiB)], dirtyLog: log, dirtyLogBusy: () => 'a migration is running', now: () => 0, sleep: async () => {},
  });
  assert.throws(() => m.start({ calcTime: 1, mode: 'dirty-bitmap' }), /dirty bitmap: a migration is running; use mode page-sampling/);
  assert.deepEqual(calls, []);
  assert.equal(m.query().status, 'unstarted');
});

test('dirty rate: a measurement that fails ends measured without a rate, and says why', async () => {
  const errors: unknown[] = [];
  const m = meter([block(MiB)], { during: () => { throw new Error('memory went away'); }, onError: (err) => errors.push(err) });
  await m.start({ calcTime: 1 });
  assert.equal(m.query().status, 'measured');
  assert.equal(m.query()['dirty-rate'], undefined);
  assert.match(String(errors[0]), /memory went away/);
});

test('dirty rate: samples are distinct pages, all of them when the block is smaller than the sample', () => {
  const few = samplePageNumbers(10, 32, Math.random);
  assert.deepEqual([...few], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  const some = samplePageNumbers(100_000, 500, mulberry(7));
  assert.equal(new Set(some).size, 500);
  assert.ok(some.every((p) => p < 100_000));
});

/** A small seeded generator, so a sample is the same on every run. */
function mulberry(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
