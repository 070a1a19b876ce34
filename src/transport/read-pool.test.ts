// The receive-buffer pool: released buffers come back, and nothing can make two live
// chunks share memory (double release, foreign buffers).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PooledReads, ReadBufferPool } from './read-pool.js';

test('a released chunk\'s buffer is handed out again; a double release does not duplicate it', () => {
  const pool = new ReadBufferPool(4096);
  const first = pool.take();
  assert.equal(first.byteLength, 4096);
  pool.release(first.subarray(10, 20));
  pool.release(first.subarray(0, 5));
  const again = pool.take();
  assert.equal(again.buffer, first.buffer);
  assert.equal(again.byteLength, 4096);
  const other = pool.take();
  assert.notEqual(other.buffer, first.buffer, 'the second release of the same buffer was ignored');
});

test('buffers the pool did not lend are never taken in', () => {
  const pool = new ReadBufferPool(4096);
  const foreign = new Uint8Array(4096);
  pool.release(foreign);
  assert.notEqual(pool.take().buffer, foreign.buffer);
});

test('PooledReads holds chunks that arrive before a consumer attaches, in order', () => {
  const reads = new PooledReads(new ReadBufferPool(16));
  const a = reads.onread.buffer();
  a.set([1, 2, 3]);
  reads.onread.callback(3, a);
  const b = reads.onread.buffer();
  b.set([4]);
  reads.onread.callback(1, b);
  const seen: number[][] = [];
  reads.attach((chunk) => {
    seen.push([...chunk]);
    return true;
  });
  const c = reads.onread.buffer();
  c.set([5, 6]);
  reads.onread.callback(2, c);
  assert.deepEqual(seen, [[1, 2, 3], [4], [5, 6]]);
});
