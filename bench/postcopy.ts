// `npm run bench:postcopy [-- --memory 256M,1G] [--reps N] [--max-bandwidth RATE]
//   [--transport unix|tcp] [--accel sim|kvm] [--give-up-s S]`:
// what post-copy is for — a guest that dirties RAM faster than the link carries it. For each
// size, the built-in sweep guest is migrated between two ferry processes under a
// max-bandwidth cap (QEMU's default 128 MiB/s unless given): once pre-copy only, given up
// (cancelled) after --give-up-s if it has not converged, and once with post-copy switched on
// after the first pass (ferry migrate --postcopy). Printed: whether it completed, the total
// time, the downtime (the source's), the guest's pause as its users saw it (the source's
// STOP to the destination's RESUME), what went after the switch, the pages the destination
// asked for and how long each waited (the destination's trace), and the destination's memory
// check once it is stopped.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryProcess } from '../src/cli/ferry-process.js';
import { runMigration, type QueryMigrateInfo } from '../src/cli/migrate-command.js';
import { forgetEvents, guestPause } from '../src/report/guest-pause.js';
import { parseSize } from '../src/size.js';
import { keepOutput } from './lib/results-log.js';
import { benchUsage, parseBenchArgs } from './lib/usage.js';
import { count, mb, ms, span } from './lib/table.js';

const USAGE = 'usage: npm run bench:postcopy [-- --memory 256M,1G] [--reps N] [--max-bandwidth RATE] [--transport unix|tcp] [--accel sim|kvm] [--give-up-s S]';

const usageError: (message: string) => never = benchUsage('bench:postcopy', USAGE);
const { values } = parseBenchArgs({
  memory: { type: 'string', default: '256M,1G' },
  reps: { type: 'string', default: '3' },
  'max-bandwidth': { type: 'string', default: '128M' },
  transport: { type: 'string', default: 'unix' },
  accel: { type: 'string', default: 'sim' },
  'give-up-s': { type: 'string', default: '15' },
}, usageError);
const memories = values.memory.split(',');
for (const m of memories) if (!/^\d+[MG]$/.test(m)) usageError(`--memory takes sizes like 256M or 1G (comma-separated), not "${m}"`);
const reps = Number(values.reps);
if (!Number.isInteger(reps) || reps < 1) usageError(`--reps must be a whole number of at least 1, not "${values.reps}"`);
let cap: number;
try {
  cap = parseSize(values['max-bandwidth'], '--max-bandwidth');
} catch (err) {
  usageError(err instanceof Error ? err.message : String(err));
}
if (!(cap > 0)) usageError('--max-bandwidth must be above 0: without a cap every sweep converges, and there is nothing to show');
const transport = values.transport;
if (transport !== 'unix' && transport !== 'tcp') usageError(`--transport takes unix or tcp, not "${transport}"`);
const accel = values.accel;
if (accel !== 'sim' && accel !== 'kvm') usageError(`--accel takes sim or kvm, not "${accel}"`);
const giveUpS = Number(values['give-up-s']);
if (!(giveUpS > 0)) usageError(`--give-up-s must be a number of seconds above 0, not "${values['give-up-s']}"`);

interface Run {
  status: string;
  totalMs: number;
  downtimeMs: number;
  pauseMs: number;
  passes: number;
  transferred: number;
  postcopyBytes: number;
  requests: number;
  waitMeanMs: number;
  waitMaxMs: number;
  ranBeforeLastPageMs: number;
  /** postcopy-vcpu-blocktime's one vCPU (the sim's workload thread, KVM's vCPU 0): ms it slept on missing pages. */
  vcpuBlockedMs: number;
  memoryOk: boolean | undefined;
}

async function migrate(dir: string, memory: string, postcopy: boolean, rep: number): Promise<Run> {
  const args = ['--accel', accel, '-m', memory, '--guest', 'builtin:sweep'];
  const tag = `${postcopy ? 'post' : 'pre'}-${memory}-${rep}`;
  const dest = await FerryProcess.start({ dir, name: `dst-${tag}`, args: [...args, '--incoming', 'defer'], startTimeoutMs: 120_000, env: { NODE_DEBUG: 'ferry' } });
  const source = await FerryProcess.start({ dir, name: `src-${tag}`, args, startTimeoutMs: 120_000 });
  try {
    if (postcopy) {
      await dest.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }, { capability: 'postcopy-blocktime', state: true }] });
    }
    const uri = transport === 'unix' ? `unix:${join(dir, `${tag}.sock`)}` : 'tcp:127.0.0.1:0';
    await dest.execute('migrate-incoming', { uri });
    const listening = (await dest.execute<{ 'socket-address'?: Array<{ type: string; host?: string; port?: string; path?: string }> }>('query-migrate'))['socket-address']?.[0];
    if (!listening) throw new Error('the destination does not say where it listens');
    const address = listening.type === 'unix' ? `unix:${listening.path}` : `tcp:${listening.host}:${listening.port}`;
    // A guest that has swept all of its RAM once: every page holds data.
    const deadline = Date.now() + 120_000;
    while (((await source.execute<{ pass?: number }>('x-ferry-query-guest')).pass ?? 0) < 1) {
      if (Date.now() > deadline) throw new Error('the guest did not finish its first pass');
      await new Promise((r) => setTimeout(r, 50));
    }
    forgetEvents(source.qmp, dest.qmp);
    let cancelled = false;
    // What a migration given up had done by then (a cancelled one reports no figures).
    let lastActive: QueryMigrateInfo | undefined;
    const outcome = await runMigration(source.qmp, {
      qmp: source.qmpPath, uri: address, maxBandwidth: cap, progress: false, pollMs: 50, postcopy, hintAfterMs: Infinity,
      onSample: (info, atMs) => {
        if (info.status === 'active') lastActive = { ...info, 'total-time': Math.round(atMs) };
        if (!cancelled && atMs > giveUpS * 1000 && info.status === 'active') {
          cancelled = true;
          void source.execute('migrate_cancel');
        }
      },
    });
    const completed = outcome.status === 'completed';
    const info = !completed && lastActive ? lastActive : outcome.info;
    const pauseMs = completed ? await guestPause(source.qmp, dest.qmp, 5_000) : undefined;
    let memoryOk: boolean | undefined;
    let vcpuBlockedMs = NaN;
    if (completed) {
      const deadline2 = Date.now() + 30_000;
      while ((await dest.execute<{ status?: string }>('query-migrate')).status !== 'completed') {
        if (Date.now() > deadline2) throw new Error('the destination did not complete');
        await new Promise((r) => setTimeout(r, 50));
      }
      vcpuBlockedMs = (await dest.execute<{ 'postcopy-vcpu-blocktime'?: number[] }>('query-migrate'))['postcopy-vcpu-blocktime']?.[0] ?? NaN;
      await dest.execute('stop');
      memoryOk = (await dest.execute<{ ok: boolean }>('x-ferry-check-memory')).ok;
    }
    const waits = /each placed ([\d.]+) ms after it was asked for on average, ([\d.]+) ms at most/.exec(dest.stderr);
    const ran = /the guest ran ([\d.]+) ms before the last page arrived/.exec(dest.stderr);
    const ram = info.ram;
    return {
      status: cancelled && outcome.status === 'cancelled' ? `not converged in ${giveUpS} s` : outcome.status,
      totalMs: info['total-time'] ?? NaN,
      downtimeMs: info.downtime ?? NaN,
      pauseMs: pauseMs ?? NaN,
      passes: info.ram?.['dirty-sync-count'] ?? NaN,
      transferred: ram?.transferred ?? NaN,
      postcopyBytes: ram?.['postcopy-bytes'] ?? 0,
      requests: ram?.['postcopy-requests'] ?? 0,
      waitMeanMs: waits ? Number(waits[1]) : NaN,
      waitMaxMs: waits ? Number(waits[2]) : NaN,
      ranBeforeLastPageMs: ran ? Number(ran[1]) : NaN,
      vcpuBlockedMs,
      memoryOk,
    };
  } finally {
    await source.quit();
    await dest.quit();
  }
}

async function main(): Promise<void> {
  const finish = keepOutput(`postcopy-${accel}`);
  console.log(`Ferry post-copy benchmark — accel ${accel}, ${transport}, the built-in sweep guest (every page written once before), max-bandwidth ${mb(cap)}/s, ${reps} reps per cell; median [min–max]`);
  console.log(`Pre-copy alone is given up (migrate_cancel: the source guest runs on) after ${giveUpS} s; post-copy switches once the first pass is out (ferry migrate --postcopy), max-postcopy-bandwidth unlimited (QEMU's default).`);
  console.log('A migration given up shows what it had done by then: its time, passes and bytes.');
  console.log('Downtime: the source\'s (stop to the device state sent); guest paused: the source\'s STOP to the destination\'s RESUME. Request waits and "ran before the last page": the destination\'s trace. vCPU blocked: the destination\'s postcopy-vcpu-blocktime (capability postcopy-blocktime), how long the guest\'s vCPU slept on pages not there yet, out of the time it ran before the last page.');
  console.log('');
  console.log('| RAM | mode | outcome | total time | downtime | guest paused | passes | sent | after the switch | page requests | request wait mean / max | guest ran before the last page | vCPU blocked | memory check |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  const dir = mkdtempSync(join(tmpdir(), 'ferry-bench-postcopy-'));
  try {
    for (const memory of memories) {
      for (const postcopy of [false, true]) {
        const runs: Run[] = [];
        for (let rep = 0; rep < reps; rep++) runs.push(await migrate(dir, memory, postcopy, rep));
        const outcomes = [...new Set(runs.map((r) => r.status))].map((s) => `${runs.filter((r) => r.status === s).length}× ${s}`).join(', ');
        const checks = runs.filter((r) => r.memoryOk !== undefined);
        console.log(`| ${memory} | ${postcopy ? 'post-copy' : 'pre-copy'} | ${outcomes} | ${span(runs.map((r) => r.totalMs), ms)} | ${span(runs.map((r) => r.downtimeMs), ms)} | ${span(runs.map((r) => r.pauseMs), ms)} | ${span(runs.map((r) => r.passes), count)} | ${span(runs.map((r) => r.transferred), mb)} | ${postcopy ? span(runs.map((r) => r.postcopyBytes), mb) : '—'} | ${postcopy ? span(runs.map((r) => r.requests), count) : '—'} | ${postcopy ? `${span(runs.map((r) => r.waitMeanMs), ms)} / ${span(runs.map((r) => r.waitMaxMs), ms)}` : '—'} | ${postcopy ? span(runs.map((r) => r.ranBeforeLastPageMs), ms) : '—'} | ${postcopy ? span(runs.map((r) => r.vcpuBlockedMs), ms) : '—'} | ${checks.length === 0 ? '—' : `${checks.filter((r) => r.memoryOk).length}/${checks.length} ok`} |`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(`\nWritten to ${finish()}`);
}

await main();
