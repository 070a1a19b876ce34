import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RateLimiter } from './rate-limiter.js';

function clock(): { now: () => number; advance(ms: number): void } {
  let t = 1000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

test('a window carries a tenth of max-bandwidth, then the sender must wait for the next', () => {
  const c = clock();
  const limiter = new RateLimiter(c.now, 1_000_000); // 1 MB/s → 100 KB per 100 ms
  assert.equal(limiter.windowBudget, 100_000);
  limiter.account(99_999);
  assert.equal(limiter.exceeded(), false);
  limiter.account(1);
  assert.equal(limiter.exceeded(), true);
  c.advance(40);
  assert.equal(limiter.waitMs(), 60);
  c.advance(60);
  assert.equal(limiter.exceeded(), false, 'a new window starts with a fresh budget');
});

test('max-bandwidth 0 means no limit, as in QEMU 7.2', () => {
  const c = clock();
  const limiter = new RateLimiter(c.now, 0);
  limiter.account(10 ** 12);
  assert.equal(limiter.exceeded(), false);
  assert.equal(limiter.windowBudget, Infinity);
});

test('a new limit applies at once', () => {
  const c = clock();
  const limiter = new RateLimiter(c.now, 0);
  limiter.account(50_000);
  limiter.setLimit(100_000); // 10 KB per window
  assert.equal(limiter.exceeded(), true);
  assert.equal(limiter.limit, 100_000);
});

test('unused budget does not carry over to later windows', () => {
  const c = clock();
  const limiter = new RateLimiter(c.now, 1_000_000);
  c.advance(1000);
  limiter.account(150_000);
  assert.equal(limiter.exceeded(), true);
});
