// The `ferry` command as a person meets it: bad input gets one clear line and a
// non-zero exit (no stack trace without --debug); `run` shows the guest's progress;
// `migrate` shows progress and a summary, and fails with the error.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FERRY_MAIN, FerryProcess } from '../src/cli/ferry-process.js';
import { runFerry } from './e2e-helpers.js';

function ferry(args: string[], timeoutMs = 15_000) {
  return spawnSync(process.execPath, [FERRY_MAIN, ...args], { encoding: 'utf8', timeout: timeoutMs });
}

const BAD_INPUT: Array<[string, string[], RegExp]> = [
  ['an unknown flag', ['run', '--frobnicate'], /unknown option '--frobnicate'/],
  ['a bad memory size', ['run', '-m', 'lots'], /Invalid memory size "lots"/],
  ['a memory size that is not whole pages', ['run', '-m', '1000B', '--accel', 'sim'], /multiple of 4 KiB/],
  ['an unknown accelerator', ['run', '--accel', 'hvf'], /--accel.*hvf.*kvm, sim, v86|Allowed choices/],
  ['a bad guest spec', ['run', '--accel', 'sim', '--guest', 'builtin:dance'], /Unknown built-in guest "dance"/],
  ['a bad guest option', ['run', '--accel', 'sim', '--guest', 'builtin:hot,mb=3'], /Unknown --guest option "mb"/],
  ['a bad serial spec', ['run', '--accel', 'sim', '--serial', 'telnet:1'], /--serial "telnet:1"/],
  ['a bad QMP address', ['run', '--accel', 'sim', '--qmp', 'udp:1'], /udp:1/],
  ['a bad UUID', ['run', '--accel', 'sim', '--uuid', '1234'], /Invalid --uuid "1234": expected 32 hex digits/],
  ['a bad incoming URI', ['run', '--accel', 'sim', '--incoming', 'rdma:1.2.3.4:5'], /rdma/],
  ['kvm where /dev/kvm cannot be opened', ['run', '--accel', 'kvm'], /dev\/kvm/],
  ['a kernel without v86', ['run', '--accel', 'sim', '--kernel', '/nonexistent'], /--accel v86/],
  ['a migrate without a reachable QMP socket', ['migrate', '--qmp', '/nonexistent/qmp.sock', 'tcp:127.0.0.1:1'], /nonexistent/],
  ['an unknown multifd compression', ['migrate', '--qmp', '/tmp/x.sock', 'tcp:127.0.0.1:1', '--multifd-compression', 'lz4'], /--multifd-compression takes none, zlib or zstd.*got "lz4"/],
  ['a machine memory backend no -object made', ['run', '--accel', 'sim', '--machine', 'memory-backend=mem0'], /Memory backend 'mem0' not found/],
  ['a machine property Ferry does not take', ['run', '--accel', 'sim', '--machine', 'type=q35'], /Invalid --machine "type=q35": Ferry's machine takes memory-backend=ID, not "type=q35"/],
  ['-m that differs from the memory backend\'s size', ['run', '--accel', 'sim', '-m', '32M', '--object', 'memory-backend-ram,id=mem0,size=64M', '--machine', 'memory-backend=mem0'], /Machine memory size does not match the size of the memory backend/],
  ['a memory backend file that cannot be made', ['run', '--accel', 'sim', '--object', 'memory-backend-file,id=mem0,size=64M,mem-path=/nonexistent/dir/ram', '--machine', 'memory-backend=mem0'], /can't open backing store \/nonexistent\/dir\/ram for guest RAM: No such file or directory/],
  ['a memory backend without a size', ['run', '--accel', 'sim', '--object', 'memory-backend-file,id=mem0,mem-path=/tmp/x'], /can't create backend with size 0/],
  ['a compression level out of range', ['migrate', '--qmp', '/tmp/x.sock', 'tcp:127.0.0.1:1', '--multifd-compression', 'zlib:10'], /--multifd-compression zlib takes a level from 0 to 9, got 10/],
];

for (const [what, args, message] of BAD_INPUT) {
  test(`bad input: ${what}`, (t) => {
    if (what.startsWith('kvm') && spawnSync('test', ['-r', '/dev/kvm']).status === 0) {
      t.skip('this machine has /dev/kvm, so --accel kvm is not bad input here');
      return;
    }
    const result = ferry(args);
    assert.notEqual(result.status, 0, `exit status for ${args.join(' ')}`);
    assert.match(result.stderr, message);
    assert.doesNotMatch(result.stderr, /\n\s+at .*:\d+:\d+/, 'a stack trace without --debug');
    assert.ok(result.stderr.trim().split('\n').length <= 3, `more than a short message:\n${result.stderr}`);
    assert.equal(result.stderr.match(/^(ferry|error): /gm)?.length, 1, `one error line:\n${result.stderr}`);
  });
}

test('--debug shows the stack trace', () => {
  const result = ferry(['run', '--accel', 'sim', '--guest', 'builtin:dance', '--debug']);
  assert.notEqual(result.status, 0);
  assert.match(result.stderr, /at .*:\d+:\d+/);
});

test('ferry run prints the guest\'s progress on the serial console (stdio)', async () => {
  const child = spawn(process.execPath, [FERRY_MAIN, 'run', '--accel', 'sim', '-m', '16M', '--guest', 'builtin:sweep,rate=50000'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (out += text));
  const deadline = Date.now() + 15_000;
  while (!/pass 2\n/.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
  assert.match(out, /pass 1\npass 2\n/);
});

test('ferry run warms the migration code up once started (x-ferry-query-warm-up), and not with --no-warm-up', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-cli-warm-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const args = ['--accel', 'sim', '-m', '16M', '--guest', 'builtin:idle'];
  const warm = await FerryProcess.start({ dir, name: 'warm', args, env: { NODE_DEBUG: 'ferry' } });
  const cold = await FerryProcess.start({ dir, name: 'cold', args: [...args, '--no-warm-up'], env: { NODE_DEBUG: 'ferry' } });
  try {
    type WarmUp = { status: string; rounds?: number; 'total-ms'?: number };
    const deadline = Date.now() + 20_000;
    let state = await warm.execute<WarmUp>('x-ferry-query-warm-up');
    assert.match(state.status, /^(scheduled|running|completed)$/);
    while (state.status !== 'completed' && Date.now() < deadline) {
      assert.match(state.status, /^(scheduled|running)$/);
      await new Promise((r) => setTimeout(r, 50));
      state = await warm.execute<WarmUp>('x-ferry-query-warm-up');
    }
    assert.equal(state.status, 'completed');
    assert.equal(state.rounds, 4); // tcp and unix, each with large and with small socket buffers
    assert.ok((state['total-ms'] ?? 0) > 0);
    assert.match(warm.stderr, /warm-up: 4 scratch migrations in \d+ ms/);
    // multifd's paths are warmed once the capability is turned on, not at every start.
    assert.doesNotMatch(warm.stderr, /with multifd/);
    await warm.execute('migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: true }] });
    const multifdDeadline = Date.now() + 20_000;
    while ((state = await warm.execute<WarmUp>('x-ferry-query-warm-up')).rounds !== 6 && Date.now() < multifdDeadline) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual([state.status, state.rounds], ['completed', 6]);
    assert.match(warm.stderr, /warm-up: 2 scratch migrations with multifd in \d+ ms/);
    // The VM's own migration state is untouched by it.
    assert.deepEqual(await warm.execute('query-migrate'), {});
    assert.deepEqual(await cold.execute('x-ferry-query-warm-up'), { status: 'off' });
    assert.doesNotMatch(cold.stderr, /warm-up/);
  } finally {
    await Promise.all([warm.execute('quit').catch(() => {}), cold.execute('quit').catch(() => {})]);
  }
});

test('ferry migrate shows a summary and exits 0; a failing migration exits 1 with the error', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const args = ['-m', '32M', '--accel', 'sim', '--guest', 'builtin:sweep,rate=20000'];
  const dest = await FerryProcess.start({ dir, name: 'dst', args: [...args, '--incoming', 'tcp:127.0.0.1:0'] });
  t.after(() => dest.quit());
  const source = await FerryProcess.start({ dir, name: 'src', args });
  t.after(() => source.quit());
  const uri = await dest.incomingAddress();
  const run = (argv: string[]) => new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [FERRY_MAIN, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
  // A destination QMP socket that is not there: refused before anything starts.
  const wrong = await run(['migrate', '--qmp', source.qmpPath, uri, '--dest-qmp', join(dir, 'nobody.qmp')]);
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /nobody\.qmp/);
  assert.equal((await source.execute<{ status?: string }>('query-migrate')).status, undefined, 'no migration was started');

  const ok = await run(['migrate', '--qmp', source.qmpPath, uri, '--max-bandwidth', '0', '--downtime-limit', '300', '--dest-qmp', dest.qmpPath]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /Migration completed/);
  assert.match(ok.stdout, /downtime\s+\d+/);
  assert.match(ok.stdout, /passes\s+\d+/);
  assert.match(ok.stderr, /pass \d+/, 'the progress bar names the pass');
  // With the destination's socket: the guest's pause as its users saw it, and where it ended.
  // (It may read a little under the downtime, which starts when the stop is asked for; STOP
  // is sent once the vCPUs have stopped.)
  const paused = /guest paused\s+([\d.]+) ms \(source STOP to destination RESUME\)/.exec(ok.stdout);
  assert.ok(paused, ok.stdout);
  assert.ok(Number(paused[1]) > 0 && Number(paused[1]) < 5000, `guest paused ${paused[1]} ms`);
  assert.match(ok.stdout, /destination\s+running/);

  const other = await FerryProcess.start({ dir, name: 'other', args });
  t.after(() => other.quit());
  const bad = await run(['migrate', '--qmp', other.qmpPath, `unix:${join(dir, 'nobody.sock')}`]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /Migration failed/);
  assert.match(bad.stderr, /error\s+.*nobody\.sock/);
});

test('Ctrl-C on ferry migrate cancels the migration: the source guest runs on, the command exits 130', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const source = await FerryProcess.start({ dir, name: 'src', args: ['-m', '64M', '--accel', 'sim', '--guest', 'builtin:sweep,rate=20000'] });
  t.after(() => source.quit());
  // 1 MiB/s into a file: it would take a minute.
  const child = spawn(process.execPath, [FERRY_MAIN, 'migrate', '--qmp', source.qmpPath, `exec:cat > ${join(dir, 'slow.snapshot')}`, '--max-bandwidth', '1M'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const deadline = Date.now() + 15_000;
  while ((await source.execute<{ status?: string }>('query-migrate')).status !== 'active' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  child.kill('SIGINT');
  assert.equal(await exited, 130, stderr);
  assert.match(stderr, /interrupted: cancelling the migration/);
  assert.match(stderr, /Migration cancelled/);
  assert.equal((await source.execute<{ status: string }>('query-migrate')).status, 'cancelled');
  assert.equal((await source.execute<{ status: string }>('query-status')).status, 'running');
});

test('ferry demo migrates the built-in guest and shows it kept running', async () => {
  const result = await runFerry(['demo', '--accel', 'sim', '-m', '32M']);
  assert.equal(result.code, 0, `${result.stdout}\n${result.stderr}`);
  assert.match(result.stdout, /Migration completed/);
  assert.match(result.stdout, /Source:\s+postmigrate/);
  assert.match(result.stdout, /guest paused\s+[\d.]+ ms \(source STOP to destination RESUME\)/, 'the demo shows the pause the guest saw');
  const moved = /pass counter went (\d+) → (\d+)/.exec(result.stdout);
  assert.ok(moved, result.stdout);
  assert.ok(Number(moved[2]) > Number(moved[1]), 'the guest did not go on at the destination');
});
