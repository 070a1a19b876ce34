// `npm run bench:snapshot [-- --memory 256M,1G] [--reps N] [--accel sim|kvm]`:
// saving a running guest to a file, the two ways Ferry offers. "stopped": as a VM is saved
// without background-snapshot — `stop`, `migrate "exec:cat > FILE"`, `cont` (a running
// guest that dirties RAM faster than the file takes it would never converge, and its file
// would grow pass after pass). "background": `ferry migrate --background-snapshot` while it
// runs. Both save the built-in sweep guest (every page written before) with no bandwidth
// cap. Printed: the time to save, how long the guest was stopped (the source's STOP to its
// RESUME, QMP timestamps), the file's size, how often the guest's writes were held until
// their page had gone (background: the source's trace; each brings its 2 MiB region), and whether the file restores a guest whose memory
// checks out (ferry run -S --incoming "exec:cat FILE", x-ferry-check-memory).

import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryProcess } from '../src/cli/ferry-process.js';
import { runMigration } from '../src/cli/migrate-command.js';
import { forgetEvents, pausesWithoutSwitchover } from '../src/report/guest-pause.js';
import { keepOutput } from './lib/results-log.js';
import { benchUsage, parseBenchArgs } from './lib/usage.js';
import { count, mb, ms, span } from './lib/table.js';

const USAGE = 'usage: npm run bench:snapshot [-- --memory 256M,1G] [--reps N] [--accel sim|kvm]';

const usageError: (message: string) => never = benchUsage('bench:snapshot', USAGE);
const { values } = parseBenchArgs({
  memory: { type: 'string', default: '256M,1G' },
  reps: { type: 'string', default: '3' },
  accel: { type: 'string', default: 'sim' },
}, usageError);
const memories = values.memory.split(',');
for (const m of memories) if (!/^\d+[MG]$/.test(m)) usageError(`--memory takes sizes like 256M or 1G (comma-separated), not "${m}"`);
const reps = Number(values.reps);
if (!Number.isInteger(reps) || reps < 1) usageError(`--reps must be a whole number of at least 1, not "${values.reps}"`);
const accel = values.accel;
if (accel !== 'sim' && accel !== 'kvm') usageError(`--accel takes sim or kvm, not "${accel}"`);

type Mode = 'stopped' | 'background';

interface Run {
  status: string;
  totalMs: number;
  pauseMs: number;
  fileBytes: number;
  writesAhead: number;
  restoredOk: boolean | undefined;
}

async function save(dir: string, memory: string, mode: Mode, rep: number): Promise<Run> {
  const args = ['--accel', accel, '-m', memory, '--guest', 'builtin:sweep', '--serial', 'none'];
  const tag = `${mode}-${memory}-${rep}`;
  const file = join(dir, `${tag}.snapshot`);
  const source = await FerryProcess.start({ dir, name: `src-${tag}`, args, startTimeoutMs: 120_000, env: { NODE_DEBUG: 'ferry' } });
  let restored: FerryProcess | undefined;
  try {
    // A guest that has swept all of its RAM once: every page holds data.
    const deadline = Date.now() + 120_000;
    while (((await source.execute<{ pass?: number }>('x-ferry-query-guest')).pass ?? 0) < 1) {
      if (Date.now() > deadline) throw new Error('the guest did not finish its first pass');
      await new Promise((r) => setTimeout(r, 50));
    }
    forgetEvents(source.qmp);
    const started = performance.now();
    if (mode === 'stopped') await source.execute('stop');
    const outcome = await runMigration(source.qmp, {
      qmp: source.qmpPath, uri: `exec:cat > ${file}`, maxBandwidth: 0, progress: false, pollMs: 20,
      capabilities: mode === 'background' ? ['background-snapshot'] : [],
    });
    if (mode === 'stopped') await source.execute('cont');
    const totalMs = performance.now() - started;
    const pauses = pausesWithoutSwitchover(source.qmp);
    const ahead = /the guest's writes held (\d+) times/.exec(source.stderr);
    const completed = outcome.status === 'completed';
    let restoredOk: boolean | undefined;
    let fileBytes = NaN;
    if (completed) {
      fileBytes = statSync(file).size;
      restored = await FerryProcess.start({ dir, name: `restored-${tag}`, args: [...args, '-S', '--incoming', `exec:cat ${file}`], startTimeoutMs: 120_000 });
      const until = Date.now() + 120_000;
      while ((await restored.execute<{ status?: string }>('query-migrate')).status !== 'completed') {
        if (Date.now() > until) throw new Error('the restore did not complete');
        await new Promise((r) => setTimeout(r, 50));
      }
      restoredOk = (await restored.execute<{ ok: boolean }>('x-ferry-check-memory')).ok;
    }
    return {
      status: outcome.status,
      totalMs,
      pauseMs: pauses[0] ?? NaN,
      fileBytes,
      writesAhead: mode === 'background' && ahead ? Number(ahead[1]) : NaN,
      restoredOk,
    };
  } finally {
    await restored?.quit();
    await source.quit();
    rmSync(file, { force: true });
  }
}

async function main(): Promise<void> {
  const finish = keepOutput(`snapshot-${accel}`);
  console.log(`Ferry snapshot benchmark — accel ${accel}, the built-in sweep guest (every page written once before), saved to a file with exec:cat, no bandwidth cap, ${reps} reps per cell; median [min–max]`);
  console.log('stopped: stop, migrate "exec:cat > FILE", cont. background: migrate with the background-snapshot capability while the guest runs (ferry migrate --background-snapshot).');
  console.log('Save time: from the start (stop, or migrate) to the guest running again with the file complete. Guest stopped: the source\'s STOP to its RESUME (QMP timestamps). Writes held: how often the guest wrote a page before its turn and waited for it (and its 2 MiB region) to go first (the source\'s trace). Restored: the file loaded by a new VM (ferry run -S --incoming "exec:cat FILE") whose memory checks out against its CPU state (x-ferry-check-memory).');
  console.log('');
  console.log('| RAM | mode | outcome | save time | guest stopped | file | writes held | restored |');
  console.log('|---|---|---|---|---|---|---|---|');
  const dir = mkdtempSync(join(tmpdir(), 'ferry-bench-snapshot-'));
  try {
    for (const memory of memories) {
      for (const mode of ['stopped', 'background'] as const) {
        const runs: Run[] = [];
        for (let rep = 0; rep < reps; rep++) runs.push(await save(dir, memory, mode, rep));
        const outcomes = [...new Set(runs.map((r) => r.status))].map((s) => `${runs.filter((r) => r.status === s).length}× ${s}`).join(', ');
        const checks = runs.filter((r) => r.restoredOk !== undefined);
        console.log(`| ${memory} | ${mode} | ${outcomes} | ${span(runs.map((r) => r.totalMs), ms)} | ${span(runs.map((r) => r.pauseMs), ms)} | ${span(runs.map((r) => r.fileBytes), mb)} | ${mode === 'background' ? span(runs.map((r) => r.writesAhead), count) : '—'} | ${checks.length === 0 ? '—' : `${checks.filter((r) => r.restoredOk).length}/${checks.length} ok`} |`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  console.log('');
  console.log(`Written to ${finish()}`);
}

await main();
