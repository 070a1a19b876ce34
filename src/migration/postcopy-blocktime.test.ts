import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PostcopyBlocktime } from './postcopy-blocktime.js';

// Three vCPUs on threads 101, 102, 103; pages are plain numbers here.
const threads = (): readonly number[] => [101, 102, 103];

test('each vCPU counts from its fault to its page; the total only while all of them wait at once', () => {
  const b = new PostcopyBlocktime(threads);
  assert.equal(b.vcpus, 3);
  assert.equal(b.waiting, false);
  // QEMU's picture (postcopy-ram.c): S1 S2 E1 S3 S1 E2 E3 E1.
  assert.equal(b.begin(101, 1, 0), true); // S1, page 1
  b.begin(102, 2, 10); // S2
  b.end(1, 20); // E1: vCPU 0 waited 20
  b.begin(103, 3, 30); // S3
  b.begin(101, 4, 40); // S1 again: all three wait from 40
  assert.deepEqual(b.figures(45), { total: 5, perVcpu: [25, 35, 15] }, 'waits still going on count up to now');
  b.end(2, 50); // E2: the overlap 40..50 is total blocktime
  b.end(3, 60); // E3
  b.end(4, 70); // E1
  assert.equal(b.waiting, false);
  assert.deepEqual(b.figures(100), { total: 10, perVcpu: [20 + 30, 40, 30] });
});

test('two vCPUs waiting on one page both wake when it is placed; a page nobody waits on changes nothing', () => {
  const b = new PostcopyBlocktime(() => [7, 8]);
  b.begin(7, 42, 0);
  b.begin(8, 42, 4);
  b.end(41, 6);
  assert.equal(b.waiting, true);
  b.end(42, 10);
  assert.equal(b.waiting, false);
  assert.deepEqual(b.figures(10), { total: 6, perVcpu: [10, 6] });
});

test('a thread that runs no vCPU is not counted; a vCPU thread that started later is found by asking again', () => {
  let tids = [0, 0];
  const b = new PostcopyBlocktime(() => tids);
  assert.equal(b.begin(55, 1, 0), false);
  assert.equal(b.begin(0, 1, 0), false, 'no thread id (the kernel did not say) is nobody');
  assert.equal(b.otherFaults, 2);
  tids = [55, 56];
  assert.equal(b.begin(55, 1, 0), true);
  b.end(1, 3);
  assert.deepEqual(b.figures(3), { total: 0, perVcpu: [3, 0] });
});

test('a vCPU that faults again before its first page came ends its first wait there (it ran on)', () => {
  const b = new PostcopyBlocktime(() => [1]);
  b.begin(1, 10, 0);
  b.begin(1, 11, 4);
  b.end(10, 5); // nobody waits on page 10 any more
  assert.equal(b.waiting, true);
  b.end(11, 9);
  // One vCPU: every wait is also the whole guest's.
  assert.deepEqual(b.figures(20), { total: 9, perVcpu: [9] });
});
