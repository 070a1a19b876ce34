// keepShape(): why it exists, shown with V8's own natives in a child process (a class whose
// instances all died loses its compiled code at the next full collection, one with an
// instance kept does not), and that a warm-up's scratch migration keeps an instance of
// every class on the page paths.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { keptShapeNames } from './hot-shapes.js';
import { warmUpMigration } from './vmm/warm-up.js';

const PROBE = `
import { keepShape } from ${JSON.stringify(new URL('./hot-shapes.js', import.meta.url).href)};
function setup(keep) {
  const Hot = class { constructor() { if (keep) keepShape(this); this.a = 1; this.b = 2; this.c = 3; } };
  const read = (o) => o.a + o.b + o.c;
  (function warm() {
    const objects = [new Hot(), new Hot()];
    %PrepareFunctionForOptimization(read);
    read(objects[0]);
    read(objects[1]);
    %OptimizeFunctionOnNextCall(read);
    read(objects[0]);
  })();
  return { read, Hot };
}
const OPTIMIZED = 16;
const result = {};
for (const keep of [true, false]) {
  const { read, Hot } = setup(keep);
  const before = (%GetOptimizationStatus(read) & OPTIMIZED) !== 0;
  // Full collections, with turns of the event loop between them (the code is thrown away
  // once the collector has cleared the maps it was compiled for).
  await new Promise((resolve) => setTimeout(resolve, 10));
  gc();
  gc();
  await new Promise((resolve) => setTimeout(resolve, 10));
  gc();
  read(new Hot());
  result[keep ? 'kept' : 'notKept'] = { before, after: (%GetOptimizationStatus(read) & OPTIMIZED) !== 0 };
}
console.log(JSON.stringify(result));
`;

test('keepShape: code optimised for a class survives a full collection with no other instance left', () => {
  const out = execFileSync(process.execPath, ['--allow-natives-syntax', '--expose-gc', '--input-type=module', '-e', PROBE], { encoding: 'utf8' });
  const result = JSON.parse(out.trim()) as Record<'kept' | 'notKept', { before: boolean; after: boolean }>;
  // Both were compiled; only the class without a kept instance lost its code ("weak objects").
  assert.deepEqual(result, { kept: { before: true, after: true }, notKept: { before: true, after: false } });
});

test('keepShape: a scratch migration leaves an instance of each class on the page paths kept', async () => {
  const outcome = await warmUpMigration('pc-i440fx-7.2', { rounds: 1 });
  assert.ok(!(outcome instanceof Error), outcome instanceof Error ? outcome.message : '');
  const kept = new Set(keptShapeNames());
  for (const name of ['Migration', 'OutgoingMigration', 'RamHandler', 'RamBitmaps', 'RamLoader', 'RamChunkWriter', 'StreamWriter', 'StreamReader', 'StreamChannel', 'DirectVectoredWriter', 'DirectWrites', 'ReadBufferPool', 'PooledReads', 'RateLimiter']) {
    assert.ok(kept.has(name), `no ${name} kept (kept: ${[...kept].join(', ')})`);
  }
});
