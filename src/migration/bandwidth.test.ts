import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BandwidthEstimate } from './bandwidth.js';
import { FIRST_WINDOW_MIN_BYTES } from './convergence.js';

const MB = 1_000_000;

/** An estimate whose passes began at 0, and a function that closes a 100 ms window at `bytesPerMs`, returning the rate counted on. */
function windowsOf(): { b: BandwidthEstimate; window: (bytesPerMs: number) => number; now: () => number } {
  const b = new BandwidthEstimate();
  b.startPasses(0, 0, 0);
  let taken = 0;
  let now = 0;
  const window = (bytesPerMs: number): number => {
    now += 100;
    taken += bytesPerMs * 100;
    return b.close(now, () => taken, 0)!.cautiousBytesPerMs;
  };
  return { b, window, now: () => now };
}

test('a window closes after 100 ms, the first one sooner once 128 MiB have gone over at least 20 ms; the queue is looked at only then', () => {
  const b = new BandwidthEstimate();
  b.startPasses(0, 0, 0);
  let looks = 0;
  const delivered = (bytes: number) => () => {
    looks++;
    return bytes;
  };
  assert.equal(b.close(19, delivered(FIRST_WINDOW_MIN_BYTES), 0), undefined);
  assert.equal(looks, 0, 'not looked at before 20 ms');
  assert.equal(b.close(25, delivered(FIRST_WINDOW_MIN_BYTES - 1), 0), undefined, 'not enough bytes for an early close');
  const first = b.close(25, delivered(FIRST_WINDOW_MIN_BYTES), 1000);
  assert.ok(first !== undefined);
  assert.equal(first.bytes, FIRST_WINDOW_MIN_BYTES);
  assert.equal(first.cautiousBytesPerMs, FIRST_WINDOW_MIN_BYTES / 25);
  assert.equal(first.pagesPerSecond, 1000 / 0.025);
  // Later windows: 100 ms each, whatever they carried.
  looks = 0;
  assert.equal(b.close(124, delivered(FIRST_WINDOW_MIN_BYTES * 3), 0), undefined);
  assert.equal(looks, 0);
  assert.ok(b.close(125, delivered(FIRST_WINDOW_MIN_BYTES + 100 * MB), 2000) !== undefined);
});

test('the bandwidth counted on is at most the window, the median of the last five, and the average since the passes began', () => {
  const { window } = windowsOf();
  assert.equal(window(1 * MB), 1 * MB);
  // A window that reads high counts for no more than the median so far — and the average.
  assert.equal(window(9 * MB), 5 * MB);
  assert.equal(window(2 * MB), 2 * MB, 'the window itself when it is the lowest');
  // Median of 1, 9, 2, 2: the upper middle (2); average since the start 14/4 = 3.5.
  assert.equal(window(2 * MB), 2 * MB);
  // Five high windows push the low ones out; the average since the start still holds it down.
  for (let i = 0; i < 5; i++) window(8 * MB);
  assert.equal(window(8 * MB), (14 * MB + 6 * 8 * MB) / 10);
});

test('a cap after a called-off switchover holds until it ends; a second one while it holds keeps the lower rate', () => {
  const { b, window, now } = windowsOf();
  window(4 * MB);
  b.cap(1 * MB, now(), now() + 300);
  assert.equal(window(4 * MB), 1 * MB);
  b.cap(3 * MB, now(), now() + 300);
  assert.equal(window(4 * MB), 1 * MB, 'the lower cap stays while the first holds');
  assert.equal(window(4 * MB), 1 * MB, 'until the second one ends');
  assert.equal(window(4 * MB), 4 * MB, 'and is gone once it ends');
  // A cap that begins after the last one ended replaces it.
  b.cap(2 * MB, now(), now() + 150);
  assert.equal(window(4 * MB), 2 * MB);
  assert.equal(window(4 * MB), 4 * MB);
});
