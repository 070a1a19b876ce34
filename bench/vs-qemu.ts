// `npm run bench:vs-qemu`: Ferry and QEMU 7.2 migrating the same kind of guest, in
// alternation, through the same QMP client code; medians with min–max and Ferry/QEMU
// ratios, written as JSON, a Markdown table and an HTML page under bench/results/.
// Usage: node dist/bench/vs-qemu.js [--quick] [--reps N] [--cap-s S] [--sizes 256M,1G]
//   [--transports tcp,unix,exec-file] [--limits 300,30] [--guests sweep,idle] [--no-idle]
//   [--ferry-rate N|match]
//   [--no-ceilings] [--all-reps] [--out DIR]

import { mkdirSync, writeFileSync } from 'node:fs';
import { RESULTS_DIR } from './lib/results-log.js';
import { cpus, loadavg, release, totalmem, tmpdir } from 'node:os';
import { join } from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { measureCeilings } from './ceiling.js';
import { chooseQemuAccel, qemuVersion, QemuProcess, QEMU_BINARY } from './lib/qemu-process.js';
import { runOnce, settleSweep } from './lib/vs-qemu-run.js';
import { openSync, closeSync, constants } from 'node:fs';
import { parseSize } from '../src/size.js';
import { renderBenchReport } from '../src/report/bench-report.js';
import {
  cellKey,
  formatStat,
  formatRatio,
  markdownTable,
  resultsForJson,
  summarize,
  type BenchCell,
  type BenchResults,
  type BenchRun,
  type BenchTransport,
  type CeilingFigures,
  type Side,
} from '../src/report/bench-summary.js';


interface BenchOptions {
  readonly quick: boolean;
  readonly reps: number;
  readonly capMs: number;
  readonly sizesMiB: readonly number[];
  readonly transports: readonly BenchTransport[];
  readonly limits: readonly number[];
  /** The sweep cases (sizes × transports × limits). */
  readonly sweep: boolean;
  /** One idle case per size. */
  readonly idle: boolean;
  /** undefined: match QEMU's measured guest rate per size. */
  readonly ferryRate: number | undefined;
  readonly ceilings: boolean;
  readonly allReps: boolean;
  readonly outDir: string;
  readonly pollMs: number;
}

function parseOptions(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      reps: { type: 'string' },
      'cap-s': { type: 'string' },
      sizes: { type: 'string' },
      transports: { type: 'string' },
      limits: { type: 'string' },
      guests: { type: 'string' },
      'no-idle': { type: 'boolean', default: false },
      'ferry-rate': { type: 'string' },
      'no-ceilings': { type: 'boolean', default: false },
      'all-reps': { type: 'boolean', default: false },
      out: { type: 'string' },
      'poll-ms': { type: 'string' },
    },
  });
  const quick = values.quick ?? false;
  const list = (text: string | undefined, fallback: string): string[] => (text ?? fallback).split(',').map((s) => s.trim()).filter(Boolean);
  const positive = (text: string | undefined, fallback: number, what: string): number => {
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`Invalid ${what} "${text}": expected a positive number`);
    return n;
  };
  const guests = list(values.guests, 'sweep,idle');
  for (const g of guests) if (!['sweep', 'idle'].includes(g)) throw new Error(`Invalid guest "${g}" in --guests: expected sweep or idle`);
  const transports = list(values.transports, quick ? 'tcp,unix,exec-file' : 'tcp,unix,exec-file');
  for (const t of transports) if (!['tcp', 'unix', 'exec-file'].includes(t)) throw new Error(`Invalid transport "${t}": expected tcp, unix or exec-file`);
  // 250 000 pages/s is the sim's default: what the sweep guest does under KVM on these machines.
  const rateText = values['ferry-rate'] ?? '250000';
  return {
    quick,
    reps: Math.round(positive(values.reps, quick ? 1 : 3, '--reps')),
    capMs: positive(values['cap-s'], 15, '--cap-s') * 1000,
    sizesMiB: list(values.sizes, quick ? '256M' : '256M,1G').map((s) => parseSize(s, '--sizes', 'M') / 1048576),
    transports: transports as BenchTransport[],
    limits: list(values.limits, quick ? '300' : '300,30').map((s) => positive(s, 300, '--limits')),
    sweep: guests.includes('sweep'),
    idle: guests.includes('idle') && !(values['no-idle'] ?? false),
    ferryRate: rateText === 'match' ? undefined : positive(rateText, 250_000, '--ferry-rate'),
    ceilings: !(values['no-ceilings'] ?? false),
    allReps: values['all-reps'] ?? false,
    outDir: values.out ?? RESULTS_DIR,
    pollMs: positive(values['poll-ms'], 50, '--poll-ms'),
  };
}

export function buildCells(options: Pick<BenchOptions, 'sizesMiB' | 'transports' | 'limits' | 'idle'> & { sweep?: boolean }): BenchCell[] {
  const cells: BenchCell[] = [];
  for (const memoryMiB of options.sweep === false ? [] : options.sizesMiB) {
    for (const transport of options.transports) {
      for (const downtimeLimitMs of options.limits) {
        const cell = { memoryMiB, transport, downtimeLimitMs, guest: 'sweep' as const };
        cells.push({ ...cell, key: cellKey(cell) });
      }
    }
  }
  if (options.idle) {
    for (const memoryMiB of options.sizesMiB) {
      const cell = { memoryMiB, transport: 'tcp' as const, downtimeLimitMs: options.limits[0] ?? 300, guest: 'idle' as const };
      cells.push({ ...cell, key: cellKey(cell) });
    }
  }
  return cells;
}

function ferryAccel(): 'kvm' | 'sim' {
  try {
    closeSync(openSync('/dev/kvm', constants.O_RDWR));
    return 'kvm';
  } catch {
    return 'sim';
  }
}

/** QEMU's guest dirty rate at a RAM size, so Ferry's sim can be set to the same work. */
async function calibrate(memoryMiB: number, accel: 'kvm' | 'tcg'): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-vs-qemu-cal-'));
  const vm = await QemuProcess.start({ dir, name: 'cal', memoryMiB, accel, guest: 'sweep', startTimeoutMs: 30_000 });
  try {
    return await settleSweep('qemu', vm, memoryMiB, 60_000, 2000);
  } finally {
    await vm.quit();
    rmSync(dir, { recursive: true, force: true });
  }
}

function sizeLabel(mib: number): string {
  return mib >= 1024 ? `${mib / 1024} GiB` : `${mib} MiB`;
}

function progressLine(run: BenchRun): string {
  const figures =
    run.status === 'completed'
      ? `total ${run.totalMs} ms, downtime ${run.downtimeMs} ms` +
        (run.pauseMs !== undefined ? ` (guest paused ${run.pauseMs.toFixed(1)} ms)` : '') +
        `, ${((run.throughput ?? 0) / 1e6).toFixed(0)} MB/s, ${run.passes} passes` +
        (run.destinationStatus && run.destinationStatus !== 'running' ? `, destination ${run.destinationStatus}` : '') +
        (run.downtimeBreakdown ? `\n    over the limit: ${run.downtimeBreakdown}` : '')
      : run.status === 'not-converged'
        ? `did not converge (cancelled), ${run.passes ?? '?'} passes`
        : `${run.status}: ${run.error ?? ''}`;
  const calledOff = run.switchoversCalledOff ? ` (the downtime guard called off ${run.switchoversCalledOff} switchover${run.switchoversCalledOff > 1 ? 's' : ''})` : '';
  return `  ${run.side === 'ferry' ? 'Ferry' : 'QEMU '} (${run.accelerator}) rep ${run.rep + 1}: ${figures}${calledOff}`;
}

async function main(argv: string[]): Promise<void> {
  const options = parseOptions(argv);
  const version = qemuVersion();
  if (version === undefined) {
    console.error(`${QEMU_BINARY} was not found. Install QEMU 7.2 first: apt-get install -y qemu-system-x86 (as the README and .ci/run do).`);
    process.exitCode = 1;
    return;
  }
  const qemuVersionText = /version (\S+)/.exec(version)?.[1] ?? version;
  const accelerators: Record<Side, string> = { ferry: ferryAccel(), qemu: chooseQemuAccel() };
  const startedAt = new Date().toISOString();
  console.log(`Ferry vs QEMU ${qemuVersionText}: Ferry runs the ${accelerators.ferry} accelerator, QEMU runs ${accelerators.qemu}.`);
  if (accelerators.ferry !== 'kvm') console.log('  (no usable /dev/kvm here: Ferry simulates the sweep guest\'s writes; QEMU emulates the guest with TCG)');

  let ceilings: CeilingFigures | undefined;
  if (options.ceilings) {
    console.log('Measuring ceilings (Node loopback sockets, memcpy)…');
    const c = await measureCeilings({ bytes: 512 * 1024 * 1024, runs: 3, channel: false });
    ceilings = { tcpBytesPerSec: c.tcpBytesPerSec, unixBytesPerSec: c.unixBytesPerSec, memcpyBytesPerSec: c.memcpyBytesPerSec };
    console.log(`  tcp ${(c.tcpBytesPerSec / 1e9).toFixed(2)} GB/s, unix ${(c.unixBytesPerSec / 1e9).toFixed(2)} GB/s, memcpy ${(c.memcpyBytesPerSec / 1e9).toFixed(1)} GB/s`);
  }

  const ferryRates: Record<string, number> = {};
  for (const size of options.sizesMiB) {
    // Only the sweep guest has a rate to match.
    if (accelerators.ferry !== 'sim' || !options.sweep) break;
    if (options.ferryRate !== undefined) {
      ferryRates[sizeLabel(size)] = options.ferryRate;
      continue;
    }
    const rate = await calibrate(size, accelerators.qemu as 'kvm' | 'tcg');
    // A rate of 0 would mean the QEMU guest did not advance in the window: fall back to the sim default.
    ferryRates[sizeLabel(size)] = rate > 0 ? rate : 250_000;
    console.log(`QEMU's sweep guest at ${sizeLabel(size)} dirties ${Math.round(rate).toLocaleString('en-US')} pages/s under ${accelerators.qemu}; Ferry's sim sweep is set to the same.`);
  }

  const cells = buildCells(options);
  const runs: BenchRun[] = [];
  for (const cell of cells) {
    console.log(`${cell.key}:`);
    const gaveUp: Record<Side, boolean> = { ferry: false, qemu: false };
    for (let rep = 0; rep < options.reps; rep++) {
      // Alternate which side goes first, so drift in the machine's load hits both alike.
      const order: Side[] = rep % 2 === 0 ? ['qemu', 'ferry'] : ['ferry', 'qemu'];
      for (const side of order) {
        if (gaveUp[side]) {
          runs.push({ side, cellKey: cell.key, rep, accelerator: accelerators[side], status: 'skipped' });
          continue;
        }
        const run = await runOnce({
          side,
          cell,
          rep,
          accel: accelerators[side],
          ferryRate: ferryRates[sizeLabel(cell.memoryMiB)] ?? 250_000,
          capMs: options.capMs,
          pollMs: options.pollMs,
        });
        runs.push(run);
        console.log(progressLine(run));
        // A case that ran into the cap once will again: the rest of its reps would only cost time.
        if (run.status === 'not-converged' && !options.allReps) gaveUp[side] = true;
      }
    }
  }

  const results: BenchResults = {
    startedAt,
    finishedAt: new Date().toISOString(),
    command: `npm run bench:vs-qemu${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
    host: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? 'unknown',
      memoryBytes: totalmem(),
      kernel: release(),
      node: process.version,
      loadAverageAtStart: loadavg(),
    },
    qemuVersion: `QEMU ${qemuVersionText}`,
    accelerators,
    ferryRates,
    reps: options.reps,
    capMs: options.capMs,
    ceilings,
    cells,
    runs,
  };
  const summaries = summarize(results);
  const md = markdownTable(summaries);
  mkdirSync(options.outDir, { recursive: true });
  const stamp = startedAt.replace(/[:.]/g, '-');
  const base = join(options.outDir, `vs-qemu-${stamp}`);
  writeFileSync(`${base}.json`, JSON.stringify(resultsForJson(results), null, 2) + '\n');
  writeFileSync(
    `${base}.md`,
    `# Ferry vs QEMU ${qemuVersionText}\n\nFerry: \`${accelerators.ferry}\` accelerator; QEMU: \`${accelerators.qemu}\`. ` +
      `${options.reps} rep(s) per side, cap ${options.capMs / 1000} s, max-bandwidth unlimited. Command: \`${results.command}\`.\n\n${md}\n`,
  );
  writeFileSync(`${base}.html`, renderBenchReport(results));
  console.log('');
  for (const s of summaries) {
    console.log(
      `${s.cell.key}\n  total    Ferry ${formatStat('totalMs', s.ferry)} | QEMU ${formatStat('totalMs', s.qemu)} | F/Q ${formatRatio(s.ratios.totalMs)}` +
        `\n  downtime Ferry ${formatStat('downtimeMs', s.ferry)} | QEMU ${formatStat('downtimeMs', s.qemu)} | F/Q ${formatRatio(s.ratios.downtimeMs)}` +
        `\n  paused   Ferry ${formatStat('pauseMs', s.ferry)} | QEMU ${formatStat('pauseMs', s.qemu)} | F/Q ${formatRatio(s.ratios.pauseMs)}` +
        `\n  through. Ferry ${formatStat('throughput', s.ferry)} | QEMU ${formatStat('throughput', s.qemu)} | F/Q ${formatRatio(s.ratios.throughput)}` +
        `\n  bytes    Ferry ${formatStat('bytes', s.ferry)} | QEMU ${formatStat('bytes', s.qemu)} | F/Q ${formatRatio(s.ratios.bytes)}`,
    );
  }
  console.log(`\nWrote ${base}.json, .md and .html`);
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exitCode = 1;
  });
}
