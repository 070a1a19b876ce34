import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GIVE_UP_MIN_BYTES, STOP_RATE_MS, saveDevicesAhead, stopDeadlines, stopIsHopeless } from './switchover-guard.js';
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
