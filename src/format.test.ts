import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatBytes, formatMs, formatRate } from './format.js';

test('figures read as people write them', () => {
  assert.equal(formatBytes(512), '512 B');
  assert.equal(formatBytes(2048), '2.0 KiB');
  assert.equal(formatBytes(3 * 1024 * 1024), '3.0 MiB');
  assert.equal(formatBytes(1.5 * 1024 ** 3), '1.50 GiB');
  assert.equal(formatRate(250e6), '250 MB/s');
  assert.equal(formatRate(25e6), '25.0 MB/s');
  assert.equal(formatRate(2.5e9), '2.50 GB/s');
  assert.equal(formatMs(12.4), '12 ms');
  assert.equal(formatMs(1500), '1.50 s');
  assert.equal(formatMs(12_345), '12.3 s');
});
