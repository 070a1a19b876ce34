import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import assert from 'node:assert/strict';
import { prestartWorker, settlePrestartedWorkers, takePrestartedWorker } from './early-worker.js';

/** Takes LOAD_MS to load (importing it here would run that load on this thread). */
const SLOW = new URL('./testing/slow-loading-worker.js', import.meta.url);
const LOAD_MS = 300;

test('settlePrestartedWorkers ends a waiting worker only once it has loaded, and forgets it', async () => {
  const started = Date.now();
  prestartWorker(SLOW, { name: 'slow' });
  await settlePrestartedWorkers();
  const took = Date.now() - started;
  // Ending it at once (what process.exit did) would return well before the load is done.
  assert.ok(took >= LOAD_MS - 20, `settled after ${took} ms, before the worker's ${LOAD_MS} ms load`);
  assert.equal(takePrestartedWorker(SLOW), undefined, 'no longer waiting to be taken');
});

test('settlePrestartedWorkers waits no longer than its timeout, and returns at once with none waiting', async () => {
  let started = Date.now();
  await settlePrestartedWorkers();
  assert.ok(Date.now() - started < 100);
  prestartWorker(SLOW, { name: 'slow' });
  started = Date.now();
  await settlePrestartedWorkers(50);
  assert.ok(Date.now() - started < LOAD_MS + 1_000, 'ended after the timeout, not held for good');
});

test('a process run with V8\'s --perf-basic-prof (for perf) still starts its workers', () => {
  const module = new URL('./early-worker.js', import.meta.url).href;
  const script = `
    import { Worker } from 'node:worker_threads';
    import { workerOptions } from ${JSON.stringify(module)};
    const worker = new Worker('process.exit(0)', { ...workerOptions(), eval: true });
    worker.on('exit', (code) => console.log('worker exited', code));
  `;
  const run = spawnSync(process.execPath, ['--perf-basic-prof', '--input-type=module', '-e', script], { encoding: 'utf8' });
  rmSync(`/tmp/perf-${run.pid}.map`, { force: true });
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /worker exited 0/);
});
