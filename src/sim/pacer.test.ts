import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SIM_UNLIMITED_RATE, TokenBucket } from './pacer.js';

/** Drive the bucket with a fake clock in `stepMs` steps for `totalMs`, taking up to `max` each step. */
function drive(rate: number, stepMs: number, totalMs: number, max = 1024): number {
  const bucket = new TokenBucket(rate);
  bucket.reset(0);
  let pages = 0;
  for (let t = stepMs; t <= totalMs; t += stepMs) pages += bucket.take(t, max);
  return pages;
}

test('token bucket: the rate holds across four orders of magnitude', () => {
  for (const rate of [100, 10_000, 250_000, 4_000_000]) {
    const pages = drive(rate, 0.25, 1000, 4096);
    assert.ok(Math.abs(pages - rate) <= rate * 0.01 + 1, `rate ${rate}: ${pages} pages in 1 s`);
  }
});

test('token bucket: a rate below one page per step still advances', () => {
  const pages = drive(100, 1, 1000);
  // Credit is fractional, so the last page may fall just after the 1 s mark.
  assert.ok(pages === 99 || pages === 100, `${pages} pages`);
});

test('token bucket: a long stall does not turn into a long burst', () => {
  const bucket = new TokenBucket(1000);
  bucket.reset(0);
  const burst = bucket.take(10_000, 1_000_000);
  assert.ok(burst <= 50, `took ${burst} pages after a 10 s stall`);
});

test('token bucket: reset forgets the credit', () => {
  const bucket = new TokenBucket(1000);
  bucket.reset(0);
  bucket.reset(40);
  assert.equal(bucket.take(40, 100), 0);
  assert.ok(bucket.waitMs() > 0 && bucket.waitMs() <= 1);
});

test('token bucket: unlimited hands out the whole batch', () => {
  const bucket = new TokenBucket(SIM_UNLIMITED_RATE);
  bucket.reset(0);
  assert.equal(bucket.take(0, 777), 777);
  assert.equal(bucket.waitMs(), 0);
});
