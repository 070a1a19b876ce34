// What the warm-up is for, checked through V8's own trace: the page paths it compiled stay
// valid for the real migration that follows. If a hot path starts to depend on something
// the warm-up's scratch migration does not share with a real one (the VM object, a
// closure made per migration), V8 throws that code away at the real migration's first
// pages — the migration still works, only slower — and this test names the function.
// On the destination, a branch the scratch migration happened not to take (a chunk header
// split across two reads, say) may still be compiled late: V8 reports that as "Insufficient
// type feedback", which this test lets pass there; one recompiled function costs little.
// The source's page loop is held to more: every real migration ends in a stop that sends
// into a full socket against a deadline, and a warm-up that never did so left that branch
// without feedback — V8 dropped the loop in the middle of the downtime and ran it
// unoptimised while compiling it again (~70 ms). The migration here is such a stop (a
// warm-up that reached the branch only now and then failed this about one run in five). Code that meets objects
// other than those it was specialised on ("wrong map", "wrong call target") fails it.
// Code V8 drops when objects it was compiled for are collected ("weak objects") is reported
// as a diagnostic, not failed on: it depends on when the collector runs. Its usual cause —
// the hidden classes of the reader, writer, loader... freed between the warm-up and the
// real migration — is taken away by keepShape() (src/hot-shapes.ts, with its own test).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import type { FerryProcess } from '../src/cli/ferry-process.js';
import { scratch, started, waitFor } from './e2e-helpers.js';
import { MIGRATION_SOCKET_BUFFER } from '../src/transport/socket-buffers.js';

const FLAGS_MODULE = fileURLToPath(new URL('./v8-trace-flags.js', import.meta.url));
/** The page paths of each side: the source's (ram.ts, ram-codec.ts, writer.ts, direct-writes.ts), the destination's (ram-codec.ts, ram-load.ts, ram-scatter.ts). */
const SOURCE_HOT = ['#send', '#build', 'pageOf', 'byReference'];
const DESTINATION_HOT = ['readPageRun', 'pageFrom', 'readRamChunks', 'readScatteredPages'];

function warmedUp(vm: FerryProcess): Promise<void> {
  return waitFor(async () => (await vm.execute<{ status: string }>('x-ferry-query-warm-up')).status === 'completed', 'the warm-up to complete', 30_000);
}

/** Trace lines that optimise or throw away one of the `hot` functions. */
function hotLines(trace: string, what: RegExp, hot: readonly string[]): string[] {
  return trace.split('\n').filter((line) => what.test(line) && hot.some((name) => line.includes(`<JSFunction ${name} `) || line.includes(`<SharedFunctionInfo ${name}>`)));
}

test('after the warm-up, a migration keeps the page paths V8 compiled for it', async (t) => {
  const dir = scratch(t, 'ferry-warm-jit-');
  const options = { nodeArgs: ['--import', FLAGS_MODULE], captureStdout: true };
  const env = { FERRY_TEST_V8_FLAGS: '--trace-opt --trace-deopt' };
  // 512 MiB, no bandwidth limit: the first bandwidth window closes after 128 MiB, and the
  // stop then sends what is left into a socket that holds 32 MiB — waiting for room
  // against its deadline, the branch a warm-up reaches only now and then (checked below
  // with downtime-bytes).
  const args = ['--accel', 'sim', '-m', '512M', '--guest', 'builtin:sweep'];
  const dest = await started(t, dir, 'dst', [...args, '--incoming', `unix:${join(dir, 'mig.sock')}`], env, options);
  const source = await started(t, dir, 'src', args, env, options);
  await Promise.all([warmedUp(source), warmedUp(dest)]);
  await source.execute('stop');
  // A stop allowed to last two seconds comes at the first bandwidth figure, most of the RAM left.
  await source.execute('migrate-set-parameters', { 'max-bandwidth': 0, 'downtime-limit': 2000 });
  const mark = { source: source.stdout.length, dest: dest.stdout.length };

  // Compiled during the warm-up: the trace works, and there is something to keep.
  assert.notDeepEqual(hotLines(source.stdout.slice(0, mark.source), /completed optimizing/, SOURCE_HOT), [], 'the source compiled none of its page path during the warm-up');
  assert.notDeepEqual(hotLines(dest.stdout.slice(0, mark.dest), /completed optimizing/, DESTINATION_HOT), [], 'the destination compiled none of its page path during the warm-up');

  await source.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}` });
  await waitFor(async () => (await source.execute<{ status?: string }>('query-migrate')).status === 'completed', 'the migration to complete');
  const { ram } = await source.execute<{ ram: { 'downtime-bytes': number } }>('query-migrate');
  assert.ok(ram['downtime-bytes'] > MIGRATION_SOCKET_BUFFER, `the stop sent ${ram['downtime-bytes']} bytes: no more than the socket holds, so it never waited for room`);
  await waitFor(async () => (await dest.execute<{ status: string }>('query-status')).status === 'paused', 'the destination to load everything');

  // Each side's own page path; the other side's code (compiled by the warm-up's other end)
  // is not used here, and may go when the warm-up's objects do.
  const thrownAway = (trace: string, hot: readonly string[]): string[] => hotLines(trace, /bailout/, hot).filter((line) => !/Insufficient type feedback/.test(line));
  assert.deepEqual(hotLines(source.stdout.slice(mark.source), /bailout/, SOURCE_HOT), [], 'the source threw away compiled page-path code');
  assert.deepEqual(thrownAway(dest.stdout.slice(mark.dest), DESTINATION_HOT), [], 'the destination threw away compiled page-path code');
  for (const [side, trace, hot] of [['source', source.stdout.slice(mark.source), SOURCE_HOT], ['destination', dest.stdout.slice(mark.dest), DESTINATION_HOT]] as const) {
    for (const line of hotLines(trace, /marking dependent code .* reason: weak objects/, hot)) t.diagnostic(`${side}: ${line}`);
  }
});
