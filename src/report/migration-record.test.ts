// Per-pass figures from polled samples and from the engine's own answer, and the
// switchover estimate QEMU's figures allow.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { QmpClient } from '../qmp/client.js';
import { derivePasses, estimateSwitchoverMs, parseEnginePasses, settleFinalInfo } from './migration-record.js';
import { sampleSamples } from './testing/sample-records.js';

test('derivePasses: one pass per dirty-sync-count, figures are deltas across it', () => {
  const passes = derivePasses(sampleSamples());
  assert.deepEqual(
    passes.map((p) => [p.pass, p.startMs, p.endMs, p.pagesSent, p.zeroPages]),
    [
      [1, 0, 200, 60_000, 5_536],
      [2, 200, 300, 20_000, 0],
      [3, 300, 400, 4_100, 0],
    ],
  );
  // Dirtied during a pass = what the next sync found: remaining in the first sample after it.
  assert.deepEqual(passes.map((p) => p.dirtyPages), [20_000, 4_000, 0]);
  assert.equal(passes[0]!.bytesSent, 60_000 * 4104 + 5_536 * 9);
});

test('derivePasses: setup samples (dirty-sync-count 0) and samples without ram are left out', () => {
  const samples = sampleSamples();
  const setup = { atMs: 10, info: { status: 'setup' } };
  const zero = { atMs: 20, info: { ...samples[0]!.info, ram: { ...samples[0]!.info.ram!, 'dirty-sync-count': 0, normal: 0, duplicate: 0, transferred: 0 } } };
  const passes = derivePasses([setup, zero, ...samples]);
  assert.equal(passes.length, 3);
  assert.equal(passes[0]!.pass, 1);
  assert.equal(passes[0]!.startMs, 20, 'pass 1 starts at the last setup sample');
});

test('derivePasses: no samples, no passes', () => {
  assert.deepEqual(derivePasses([]), []);
});

test('parseEnginePasses reads x-ferry-query-migrate-passes and refuses other shapes', () => {
  const parsed = parseEnginePasses({
    passes: [{ pass: 1, 'start-ms': 1, 'end-ms': 90, 'pages-sent': 100, 'zero-pages': 7, 'bytes-sent': 410_463, 'dirty-pages': 12 }],
    'switchover-ms': 95,
    'downtime-limit': 300,
  });
  assert.deepEqual(parsed, {
    passes: [{ pass: 1, startMs: 1, endMs: 90, pagesSent: 100, zeroPages: 7, bytesSent: 410_463, dirtyPages: 12 }],
    switchoverMs: 95,
    downtimeLimitMs: 300,
  });
  assert.equal(parseEnginePasses({ passes: [{ pass: 1 }] })!.switchoverMs, undefined);
  assert.equal(parseEnginePasses(null), undefined);
  assert.equal(parseEnginePasses({ passes: 'many' }), undefined);
  assert.equal(parseEnginePasses({ passes: [7] }), undefined);
});

test('estimateSwitchoverMs: total-time minus downtime, only for a completed run', () => {
  assert.equal(estimateSwitchoverMs({ status: 'completed', 'total-time': 380, downtime: 30 }), 350);
  assert.equal(estimateSwitchoverMs({ status: 'cancelled', 'total-time': 380 }), undefined);
  assert.equal(estimateSwitchoverMs({ status: 'completed', 'total-time': 380 }), undefined);
});

test('settleFinalInfo asks again while QEMU says completed but has not filled in total-time yet', async () => {
  const answers = [
    { status: 'completed', 'total-time': 0, downtime: 0 },
    { status: 'completed', 'total-time': 812, downtime: 240 },
  ];
  let asked = 0;
  const client = { execute: async () => answers[Math.min(asked++, answers.length - 1)] } as unknown as QmpClient;
  const settled = await settleFinalInfo(client, { status: 'completed', 'total-time': 0 });
  assert.equal(settled['total-time'], 812);
  assert.equal(asked, 2);
  // A failed run, or one with its figures, is returned as it is.
  assert.deepEqual(await settleFinalInfo(client, { status: 'failed' }), { status: 'failed' });
  assert.equal(asked, 2);
});
