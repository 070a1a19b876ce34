import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AutoConverge, nextThrottlePercentage } from './auto-converge.js';
import { throttleSleepMs } from '../hypervisor/cpu-throttle.js';
import { DEFAULT_MIGRATION_PARAMETERS } from './parameters.js';

const params = DEFAULT_MIGRATION_PARAMETERS;
const MB = 1_000_000;

test('throttling starts on the second period whose dirtying outran the threshold, at cpu-throttle-initial', () => {
  const ac = new AutoConverge();
  // threshold 50 %: 100 MB sent, 60 MB dirtied is over it
  assert.equal(ac.period({ transferredBytes: 100 * MB, dirtiedBytes: 60 * MB }, params), undefined);
  assert.equal(ac.percentage, 0);
  assert.equal(ac.period({ transferredBytes: 100 * MB, dirtiedBytes: 60 * MB }, params), 20);
  assert.equal(ac.percentage, 20);
});

test('a period at or under the threshold counts for nothing, and does not reset the count (as QEMU)', () => {
  const ac = new AutoConverge();
  assert.equal(ac.period({ transferredBytes: 100 * MB, dirtiedBytes: 60 * MB }, params), undefined);
  assert.equal(ac.period({ transferredBytes: 100 * MB, dirtiedBytes: 50 * MB }, params), undefined); // equal: not over
  assert.equal(ac.period({ transferredBytes: 100 * MB, dirtiedBytes: 90 * MB }, params), 20);
});

test('each further second high period adds cpu-throttle-increment, up to max-cpu-throttle', () => {
  const ac = new AutoConverge();
  const high = { transferredBytes: 10 * MB, dirtiedBytes: 100 * MB };
  const custom = { ...params, 'cpu-throttle-initial': 80, 'cpu-throttle-increment': 15, 'max-cpu-throttle': 90 };
  const steps: (number | undefined)[] = [];
  for (let i = 0; i < 8; i++) steps.push(ac.period(high, custom));
  assert.deepEqual(steps, [undefined, 80, undefined, 90, undefined, undefined, undefined, undefined]);
  assert.equal(ac.percentage, 90);
  ac.stop();
  assert.equal(ac.percentage, 0);
  assert.equal(ac.period(high, custom), undefined, 'the count starts over after stop()');
});

test('tailslow adds only what the last period says is needed (integer arithmetic as QEMU)', () => {
  const tail = { ...params, 'cpu-throttle-tailslow': true, 'cpu-throttle-increment': 30 };
  // 100 MB sent → threshold 50 MB; 55 MB dirtied. At 20 %: cpu_now 80, ideal floor(80 × 50/55) = 72, +8.
  assert.equal(nextThrottlePercentage(20, { transferredBytes: 100 * MB, dirtiedBytes: 55 * MB }, tail), 28);
  // Far over the threshold: capped by the increment.
  assert.equal(nextThrottlePercentage(20, { transferredBytes: 100 * MB, dirtiedBytes: 500 * MB }, tail), 50);
  // Without tailslow the increment applies whole.
  assert.equal(nextThrottlePercentage(20, { transferredBytes: 100 * MB, dirtiedBytes: 55 * MB }, { ...tail, 'cpu-throttle-tailslow': false }), 50);
});

test('the percentage stays within 1..99 whatever the parameters say', () => {
  assert.equal(nextThrottlePercentage(95, { transferredBytes: 1, dirtiedBytes: 100 }, { ...params, 'cpu-throttle-increment': 50 }), 99);
});

test('a throttled vCPU sleeps pct / (100 − pct) of each 10 ms timeslice', () => {
  assert.equal(throttleSleepMs(0), 0);
  assert.equal(throttleSleepMs(50), 10);
  assert.ok(Math.abs(throttleSleepMs(20) - 2.5) < 1e-9);
  assert.ok(Math.abs(throttleSleepMs(99) - 990) < 1e-6);
});
