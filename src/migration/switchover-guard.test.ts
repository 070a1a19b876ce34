import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ASK_EVERY_MS, EARLY_EVIDENCE_MS, FAR_OFF_FACTOR, GIVE_UP_MIN_BYTES, STOP_RATE_MS, saveDevicesAhead, stopDeadlines, stopGiveUp, stopIsHopeless } from './switchover-guard.js';
import type { SaveVmEntry } from './savevm.js';

const MB = 1_000_000;

test('stopDeadlines: RAM by 90 % of the limit, or by 97 % less what the device state needs to follow', () => {
  // 300 ms limit, 1 MB of device state at 1 MB/ms: 1 ms comes off the extended deadline.
  assert.deepEqual(stopDeadlines(1000, 300, MB, MB), { soft: 1270, deadline: 1290 });
  // The device state's share is at most the 10 % the guard kept back before it measured:
  // an estimate of 0 B/ms must not put the deadline before the stop.
  const starved = stopDeadlines(1000, 300, MB, 0);
  assert.equal(starved.deadline, 1000 + 291 - 30);
  assert.equal(starved.soft, starved.deadline, 'soft never after the deadline');
});

test('stopIsHopeless: a lazy destination\'s deep queue that cannot drain by the deadline gives the stop up early', () => {
  const d = stopDeadlines(0, 300, 4096, 2_000);
  // 50 ms in, 44 MB queued, the destination took 23 MB since the stop (0.46 MB/ms): ~96 ms more.
  assert.equal(stopIsHopeless({ now: 50, pausedAt: 0, unsent: 44 * MB, remainingPages: 0, deliveredSinceStop: 23 * MB }, d), false, 'fits by 290');
  assert.equal(stopIsHopeless({ now: 200, pausedAt: 0, unsent: 44 * MB, remainingPages: 0, deliveredSinceStop: 92 * MB }, d), true);
});

test('stopIsHopeless: never in the first 20 ms, nor for less than 1 MiB left (an idle guest\'s few queued bytes)', () => {
  const d = stopDeadlines(0, 300, 4096, 2_000);
  assert.equal(stopIsHopeless({ now: STOP_RATE_MS - 1, pausedAt: 0, unsent: 500 * MB, remainingPages: 0, deliveredSinceStop: 0 }, d), false);
  assert.equal(stopIsHopeless({ now: 100, pausedAt: 0, unsent: GIVE_UP_MIN_BYTES - 1, remainingPages: 0, deliveredSinceStop: 10 }, d), false);
  assert.equal(stopIsHopeless({ now: 100, pausedAt: 0, unsent: GIVE_UP_MIN_BYTES, remainingPages: 0, deliveredSinceStop: 10 }, d), true);
});

test('stopIsHopeless: from the soft deadline on, the pages still to send count too', () => {
  const d = stopDeadlines(0, 300, 4096, 2_000);
  // 2.7 MB/ms since the stop; 10 MB queued fits, 40 MB of pages more do not (~19 ms by 290).
  const base = { pausedAt: 0, unsent: 10 * MB, remainingPages: Math.ceil((40 * MB) / 4104), deliveredSinceStop: 729 * MB };
  assert.equal(stopIsHopeless({ ...base, now: 260 }, d), false, 'before soft: only the queue');
  assert.equal(stopIsHopeless({ ...base, now: 272 }, d), true);
  assert.equal(stopIsHopeless({ ...base, now: 272, remainingPages: 1000 }, d), false, 'a few pages left fit');
});

test('stopIsHopeless: from 50 ms on, a stop whose pages too would take it far past its budget is given up', () => {
  const d = stopDeadlines(0, 300, 4096, 2_000);
  // A lazy destination: 0.48 MB/ms since the stop, 30 MB queued, 170 MB of pages to send —
  // ~466 ms in all against a budget of ~289 (the queue alone would drain in time).
  const lazy = { pausedAt: 0, unsent: 30 * MB, remainingPages: Math.ceil((170 * MB) / 4104), deliveredSinceStop: 24 * MB, now: 50 };
  assert.equal(stopIsHopeless(lazy, d), true);
  assert.equal(stopIsHopeless({ ...lazy, now: EARLY_EVIDENCE_MS - 1, deliveredSinceStop: 23.5 * MB }, d), false, 'not before 50 ms: the queue alone fits');
  // A fast destination that began slowly (a 20 ms collection): 2.1 MB/ms so far, 700 MB
  // left — ~383 ms at that rate, past the deadline but not far past it: it goes on.
  const slowStart = { pausedAt: 0, unsent: 30 * MB, remainingPages: Math.ceil((670 * MB) / 4104), deliveredSinceStop: 105 * MB, now: 50 };
  assert.equal(stopIsHopeless(slowStart, d), false);
  // The margin is the factor: just past it, given up.
  const budget = d.deadline;
  const justPast = { ...slowStart, deliveredSinceStop: (700 * MB) / ((FAR_OFF_FACTOR * budget - 50) / 50) * 0.99 };
  assert.equal(stopIsHopeless(justPast, d), true);
});

test('stopIsHopeless: the far-off test goes by the rate since the RAM began to go out, not through a slow sync before it', () => {
  const d = stopDeadlines(0, 300, 4096, 2_000);
  // 150 ms of sync sent nothing; since then 60 ms at 3 MB/ms, 300 MB left: ~310 ms in all.
  const afterSlowSync = { pausedAt: 0, now: 210, unsent: 20 * MB, remainingPages: Math.ceil((280 * MB) / 4104), deliveredSinceStop: 180 * MB, sendingSince: 150, deliveredSinceSending: 180 * MB };
  assert.equal(stopIsHopeless(afterSlowSync, d), false);
  // Taken over the whole stop instead (0.86 MB/ms), the same stop would read as far off.
  const { sendingSince: _s, deliveredSinceSending: _d, ...wholeStop } = afterSlowSync;
  assert.equal(stopIsHopeless(wholeStop, d), true);
  // And not before 50 ms of sending.
  assert.equal(stopIsHopeless({ ...afterSlowSync, now: 190, deliveredSinceSending: 1 * MB }, d), false);
});

test('stopGiveUp: the rate of its far-off test starts at its first call, when the RAM begins to go out', () => {
  let now = 150;
  let written = 100 * MB;
  let unsent = 0;
  let pages = Math.ceil((300 * MB) / 4104);
  const giveUp = stopGiveUp({
    now: () => now,
    pausedAt: 0,
    deadlines: stopDeadlines(0, 300, 4096, 2_000),
    deliveredAtStop: 100 * MB,
    written: () => written,
    unsent: () => unsent,
    remainingPages: () => pages,
  });
  // First asked 150 ms in (a slow sync before it): nothing sent yet, too early to tell.
  assert.equal(giveUp(), false);
  // 60 ms later, 3 MB/ms since then, 300 MB left: ~310 ms in all — it goes on.
  now = 210;
  written += 200 * MB;
  unsent = 20 * MB;
  pages = Math.ceil((280 * MB) / 4104);
  assert.equal(giveUp(), false);
  // Only 10 MB more in the next 60 ms: 1.6 MB/ms since the RAM began to go out, 300 MB
  // left, ~460 ms in all against 1.5 times the budget (~434): given up.
  now = 270;
  written += 10 * MB;
  assert.equal(giveUp(), true);
  assert.equal(giveUp(), true, 'and stays given up');
});

test('stopGiveUp: asked again within a millisecond, it answers as before without reading the channel', () => {
  let now = 100;
  let reads = 0;
  let unsent = 0;
  const giveUp = stopGiveUp({
    now: () => now,
    pausedAt: 0,
    deadlines: stopDeadlines(0, 300, 4096, 2_000),
    deliveredAtStop: 0,
    written: () => 50 * MB,
    unsent: () => {
      reads++;
      return unsent;
    },
    remainingPages: () => 0,
  });
  assert.equal(giveUp(), false);
  assert.equal(reads, 1);
  // 400 MB suddenly queued (hopeless by the deadline at 0.5 MB/ms), but within the millisecond: not looked at.
  unsent = 400 * MB;
  now = 100 + ASK_EVERY_MS / 2;
  assert.equal(giveUp(), false);
  assert.equal(reads, 1);
  now = 100 + ASK_EVERY_MS;
  assert.equal(giveUp(), true);
  assert.equal(reads, 2);
});

test('saveDevicesAhead: the FULL sections and vmdesc entries of every handler, in memory, nothing else', async () => {
  const handler = (idstr: string, payload: number[]): SaveVmEntry['handler'] => ({
    idstr, instanceId: 0, version: 1, minimumVersion: 1,
    async complete(w) {
      w.bytes(new Uint8Array(payload));
      return { name: idstr, instance_id: 0, vmsd_name: idstr, version: 1, fields: [] } as never;
    },
    async load() {},
  });
  const saved = await saveDevicesAhead([{ sectionId: 3, handler: handler('cpu', [1, 2, 3]) }, { sectionId: 4, handler: handler('serial', [9]) }], () => performance.now());
  const bytes = Buffer.concat(saved.chunks.map((c) => Buffer.from(c)));
  assert.equal(bytes.length, saved.length);
  // QEMU_VM_SECTION_FULL (4), section id 3, "cpu", instance 0, version 1, the payload, footer (0x7e, id 3).
  assert.deepEqual([...bytes.subarray(0, 9)], [4, 0, 0, 0, 3, 3, 0x63, 0x70, 0x75]);
  assert.deepEqual([...bytes.subarray(17, 20)], [1, 2, 3]);
  assert.deepEqual([...bytes.subarray(20, 25)], [0x7e, 0, 0, 0, 3]);
  assert.equal(bytes[25], 4, 'the next FULL section follows');
  assert.deepEqual(saved.devices.map((d) => (d as { name: string }).name), ['cpu', 'serial']);
  assert.ok(saved.ms >= 0);
});
