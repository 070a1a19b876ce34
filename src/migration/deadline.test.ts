import { test } from 'node:test';
import assert from 'node:assert/strict';
import { settledBy } from './deadline.js';

const now = (): number => performance.now();
const after = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

test('settledBy: true when the work finishes before the deadline', async () => {
  assert.equal(await settledBy(after(5), now() + 1000, now), true);
  const start = now();
  assert.equal(await settledBy(Promise.resolve(), start + 1000, now, () => false), true);
  assert.ok(now() - start < 500, 'work already done is not waited for');
});

test('settledBy: false at the deadline, without waiting for the work', async () => {
  const start = now();
  assert.equal(await settledBy(after(2000), start + 30, now), false);
  const waited = now() - start;
  assert.ok(waited >= 25 && waited < 1000, `waited ${waited.toFixed(0)} ms`);
});

test('settledBy: false as soon as giveUp says so, before the deadline', async () => {
  const start = now();
  let asked = 0;
  assert.equal(await settledBy(after(2000), start + 1500, now, () => ++asked === 3), false);
  assert.ok(now() - start < 500, `gave up after ${(now() - start).toFixed(0)} ms`);
  assert.equal(asked, 3);
});

test('settledBy: a failure before the deadline rejects; one after it is left to the work\'s owner', async () => {
  await assert.rejects(settledBy(Promise.reject(new Error('broken pipe')), now() + 1000, now), /broken pipe/);
  const late = after(50).then(() => {
    throw new Error('late failure');
  });
  assert.equal(await settledBy(late, now() + 5, now), false);
  await assert.rejects(late, /late failure/);
});
