import { test } from 'node:test';
import assert from 'node:assert/strict';
import { qmpTimestamp } from './protocol.js';

test('timestamps split milliseconds into seconds and microseconds', () => {
  assert.deepEqual(qmpTimestamp(1_700_000_000_123.456), { seconds: 1_700_000_000, microseconds: 123_456 });
  assert.deepEqual(qmpTimestamp(0), { seconds: 0, microseconds: 0 });
});

test('the default timestamp is the wall clock', () => {
  const { seconds, microseconds } = qmpTimestamp();
  assert.ok(Math.abs(seconds * 1000 + microseconds / 1000 - Date.now()) < 50);
  assert.ok(microseconds >= 0 && microseconds < 1_000_000);
});
