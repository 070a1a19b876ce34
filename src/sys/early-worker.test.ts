import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { prestartWorker, settlePrestartedWorkers, takePrestartedWorker, workerExecArgv } from './early-worker.js';

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
  // In a directory of its own: V8's logger writes isolate-*-v8.log files into the working
  // directory under this flag, which otherwise piled up in the checkout's root.
  const dir = mkdtempSync(join(tmpdir(), 'ferry-perf-prof-'));
  try {
    const run = spawnSync(process.execPath, ['--perf-basic-prof', '--input-type=module', '-e', script], { encoding: 'utf8', cwd: dir });
    rmSync(`/tmp/perf-${run.pid}.map`, { force: true });
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /worker exited 0/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a process run with V8\'s tracing flags (--trace-deopt, --trace-opt) starts its workers, which inherit them', () => {
  const module = new URL('./early-worker.js', import.meta.url).href;
  const dir = mkdtempSync(join(tmpdir(), 'ferry-worker-flags-'));
  try {
    const script = join(dir, 'main.mjs');
    writeFileSync(script, `
      import { Worker } from 'node:worker_threads';
      import { workerOptions } from ${JSON.stringify(module)};
      const worker = new Worker('console.log("worker flags", process.execArgv.join(" "))', { ...workerOptions(), eval: true });
      worker.on('exit', (code) => console.log('worker exited', code));
    `);
    const run = spawnSync(process.execPath, ['--trace-deopt', '--trace-opt', '--max-old-space-size=512', script], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /worker flags --trace-deopt --trace-opt --max-old-space-size=512/);
    assert.match(run.stdout, /worker exited 0/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('workerExecArgv: inherit unless --input-type is there; then Node\'s own worker flags only, each with its value', () => {
  assert.equal(workerExecArgv(['--trace-deopt', '--perf-basic-prof']), undefined);
  assert.deepEqual(
    workerExecArgv(['--input-type=module', '--trace-deopt', '--require', './x.js', '--perf-basic-prof', '--no-warnings', '--max-old-space-size', '100', '--conditions=dev', '--experimental-vm-modules', '--title=t']),
    ['--require', './x.js', '--no-warnings', '--conditions=dev', '--experimental-vm-modules'],
  );
  assert.deepEqual(workerExecArgv(['--input-type', 'module', '--enable-source-maps']), ['--enable-source-maps']);
});
