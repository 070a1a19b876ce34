import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BUFFER_DELAY_MS, FIRST_WINDOW_MIN_BYTES, FIRST_WINDOW_MIN_MS, canComplete, decideIteration, expectedDowntimeMs, measureBandwidth, thresholdBytes, windowClosed } from './convergence.js';

test('threshold is measured bandwidth (bytes/ms) times downtime-limit (ms)', () => {
  const cases: Array<[number, number, number]> = [
    // bytes/ms, downtime ms, threshold bytes
    [1000, 300, 300_000],
    [134217.728, 300, 40_265_318.4], // 128 MiB/s
    [0, 300, 0], // nothing measured yet: iterate
    [NaN, 300, 0],
    [Infinity, 300, 0],
    [5000, 0, 0], // a zero budget never completes while anything is pending
  ];
  for (const [bw, limit, expected] of cases) {
    assert.equal(thresholdBytes(bw, limit), expected, `bw=${bw} limit=${limit}`);
  }
});

test('iterate while the estimate is at least the threshold, otherwise sync and check', () => {
  const cases: Array<[number, number, string]> = [
    // pending estimate, threshold, decision
    [10_000_000, 1_000_000, 'iterate'],
    [1_000_000, 1_000_000, 'iterate'], // equal: QEMU iterates (pending >= threshold)
    [999_999, 1_000_000, 'sync-and-check'],
    [4096, 0, 'iterate'], // before any measurement
    [0, 0, 'sync-and-check'], // all sent: check for completion
    [0, 1_000_000, 'sync-and-check'],
  ];
  for (const [pending, threshold, expected] of cases) {
    assert.equal(decideIteration(pending, threshold), expected, `pending=${pending} threshold=${threshold}`);
  }
});

test('complete when the exact figure is below the threshold or nothing is left', () => {
  const cases: Array<[number, number, boolean]> = [
    [0, 0, true],
    [0, 500, true],
    [499, 500, true],
    [500, 500, false],
    [4096, 0, false],
  ];
  for (const [exact, threshold, expected] of cases) {
    assert.equal(canComplete(exact, threshold), expected, `exact=${exact} threshold=${threshold}`);
  }
});

test('bandwidth figures from one window, as query-migrate reports them', () => {
  const f = measureBandwidth({ bytes: 12_500_000, pages: 3000, elapsedMs: 100 });
  assert.equal(f.bytesPerMs, 125_000);
  assert.equal(f.mbps, 1000); // 12.5 MB in 0.1 s = 1000 Mbit/s
  assert.equal(f.pagesPerSecond, 30_000);
  assert.deepEqual(measureBandwidth({ bytes: 100, pages: 1, elapsedMs: 0 }), { bytesPerMs: 0, mbps: 0, pagesPerSecond: 0 });
});

test('expected downtime is what remains over the bandwidth', () => {
  assert.equal(expectedDowntimeMs(1_000_000, 10_000), 100);
  assert.equal(expectedDowntimeMs(1_000_000, 0), 0);
});

test('the final sync\'s own cost comes out of the downtime budget', () => {
  // 1000 B/ms × 300 ms = 300 000 B; a 100 ms sync leaves room for 200 000 B.
  const threshold = thresholdBytes(1000, 300);
  assert.equal(canComplete(250_000, threshold), true);
  assert.equal(canComplete(250_000, threshold, 100, 1000), false);
  assert.equal(canComplete(150_000, threshold, 100, 1000), true);
  // A sync slower than the whole limit only lets a clean (nothing pending) stop through.
  assert.equal(canComplete(1, threshold, 400, 1000), false);
  assert.equal(canComplete(0, threshold, 400, 1000), true);
});

test('windowClosed: every 100 ms; the first window as soon as it has carried 128 MiB over at least 20 ms', () => {
  const MiB = 1024 * 1024;
  assert.equal(windowClosed(BUFFER_DELAY_MS, 0, true), true);
  assert.equal(windowClosed(BUFFER_DELAY_MS - 1, 10_000 * MiB, true), false, 'later windows keep 100 ms, however much they carried');
  assert.equal(windowClosed(BUFFER_DELAY_MS, 0, false), true, 'a first window that never got there closes at 100 ms');
  assert.equal(windowClosed(FIRST_WINDOW_MIN_MS, FIRST_WINDOW_MIN_BYTES, false), true);
  assert.equal(windowClosed(FIRST_WINDOW_MIN_MS, FIRST_WINDOW_MIN_BYTES - 1, false), false, 'too little to measure by');
  assert.equal(windowClosed(FIRST_WINDOW_MIN_MS - 1, 1000 * MiB, false), false, 'too short: a burst into the buffers');
  // 10 GbE (~1.2 GB/s): 128 MiB takes ~110 ms, so the first window is QEMU's too.
  assert.equal(windowClosed(99, 99 * 1.2e6, false), false);
});
