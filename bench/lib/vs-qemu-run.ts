// One migration of the Ferry-vs-QEMU benchmark, on either side: start a destination (none
// for exec-to-file) and a source, let the guest settle into its sweep, migrate through QMP
// with runMigration, cancel at the time cap, and read everything back as a BenchRun.

import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runMigration, type QueryMigrateInfo } from '../../src/cli/migrate-command.js';
import { FerryProcess } from '../../src/cli/ferry-process.js';
import type { QmpClient } from '../../src/qmp/client.js';
import { MigrationRecorder, settleFinalInfo } from '../../src/report/migration-record.js';
import { stat, type BenchCell, type BenchRun, type Side } from '../../src/report/bench-summary.js';
import { QemuProcess } from './qemu-process.js';
import { forgetEvents, guestPause } from '../../src/report/guest-pause.js';

/** max-bandwidth for "unlimited": 1 PiB/s. Both QEMU 7.2 (≤ SIZE_MAX) and Ferry (a safe integer) accept it. */
export const UNLIMITED_BANDWIDTH = 2 ** 50;
const PAGE = 4096;
const SWEEP_FROM = 0x100000;

export interface RunOptions {
  readonly side: Side;
  readonly cell: BenchCell;
  readonly rep: number;
  /** Accelerator for that side: Ferry "kvm" | "sim"; QEMU "kvm" | "tcg". */
  readonly accel: string;
  /** Pages/s for Ferry's sim sweep. */
  readonly ferryRate: number;
  readonly capMs: number;
  readonly pollMs: number;
}

/** A port free right now on 127.0.0.1 (QEMU's -incoming needs a number up front). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => server.listen(0, '127.0.0.1', resolve).once('error', reject));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

interface Vm {
  readonly qmp: QmpClient;
  quit(): Promise<void>;
}

/** The sweep guest's pass counter, read the side's own way. */
async function sweepCounter(side: Side, vm: Vm): Promise<number> {
  if (side === 'qemu') return (vm as QemuProcess).sweepCounter();
  const guest = await vm.qmp.execute<{ pass?: number }>('x-ferry-query-guest');
  return guest.pass ?? 0;
}

/**
 * Wait until the guest has finished a whole pass (all of its RAM touched, the sweep in its
 * steady state), then measure its dirty rate from one change of the pass counter to a
 * later one at least `windowMs` on: timing edge to edge keeps a slow guest (one pass a
 * second) from reading as 0 or double.
 */
export async function settleSweep(side: Side, vm: Vm, memoryMiB: number, timeoutMs: number, windowMs = 1000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  const poll = async (until: (count: number, atMs: number) => boolean): Promise<[number, number]> => {
    for (;;) {
      const count = await sweepCounter(side, vm);
      const atMs = performance.now();
      if (until(count, atMs)) return [count, atMs];
      if (Date.now() > deadline) throw new Error(`the ${side} sweep guest did not make progress within ${timeoutMs} ms (pass counter ${count})`);
      await new Promise((r) => setTimeout(r, 15));
    }
  };
  const [first] = await poll((count) => count >= 2);
  const [c0, t0] = await poll((count) => count > first);
  const [c1, t1] = await poll((count, atMs) => count > c0 && atMs - t0 >= windowMs);
  const pagesPerPass = (memoryMiB * 1024 * 1024 - SWEEP_FROM) / PAGE;
  return ((c1 - c0) * pagesPerPass * 1000) / (t1 - t0);
}

function uriFor(cell: BenchCell, dir: string, port: number): string {
  switch (cell.transport) {
    case 'tcp':
      return `tcp:127.0.0.1:${port}`;
    case 'unix':
      return `unix:${join(dir, 'migrate.sock')}`;
    case 'exec-file':
      return `exec:cat > ${join(dir, 'stream.bin')}`;
  }
}

async function startVm(options: RunOptions, dir: string, name: string, incoming: string | undefined): Promise<Vm> {
  const { cell } = options;
  if (options.side === 'qemu') {
    return QemuProcess.start({
      dir,
      name,
      memoryMiB: cell.memoryMiB,
      accel: options.accel as 'kvm' | 'tcg',
      guest: cell.guest,
      ...(incoming !== undefined ? { incoming } : {}),
      startTimeoutMs: 30_000,
    });
  }
  const args = ['-m', `${cell.memoryMiB}M`, '--accel', options.accel];
  if (incoming !== undefined) args.push('--incoming', incoming);
  else args.push('--guest', cell.guest === 'idle' ? 'builtin:idle' : options.accel === 'sim' ? `builtin:sweep,rate=${Math.round(options.ferryRate)}` : 'builtin:sweep');
  // The engine's trace (a few lines on stderr) says where a source's downtime went.
  return FerryProcess.start({ dir, name, args, serial: 'null', startTimeoutMs: 30_000, ...(incoming === undefined ? { env: { NODE_DEBUG: 'ferry' } } : {}) });
}

export async function runOnce(options: RunOptions): Promise<BenchRun> {
  const { cell, side } = options;
  const base = { side, cellKey: cell.key, rep: options.rep, accelerator: options.accel };
  const dir = mkdtempSync(join(tmpdir(), `ferry-vs-qemu-${side}-`));
  const vms: Vm[] = [];
  try {
    const uri = uriFor(cell, dir, cell.transport === 'tcp' ? await freePort() : 0);
    let destination: Vm | undefined;
    if (cell.transport !== 'exec-file') {
      destination = await startVm(options, dir, 'dst', uri);
      vms.push(destination);
    }
    const source = await startVm(options, dir, 'src', undefined);
    vms.push(source);
    let guestPagesPerSec: number | undefined;
    if (cell.guest === 'sweep') {
      guestPagesPerSec = await settleSweep(side, source, cell.memoryMiB, 60_000);
    } else {
      // Let the firmware (QEMU) or the idle model (Ferry) settle so setup is not measured with boot.
      await new Promise((r) => setTimeout(r, 500));
    }

    // From here on, the STOP and RESUME events are the migration's.
    forgetEvents(source.qmp, destination?.qmp);
    const recorder = new MigrationRecorder(source.qmp);
    let cancel: Promise<unknown> | undefined;
    let cancelledAt: number | undefined;
    // After a cancel, query-migrate no longer shows RAM figures: keep the last that did.
    let lastRam: QueryMigrateInfo['ram'];
    const dirtyRates: number[] = [];
    recorder.start();
    const outcome = await runMigration(source.qmp, {
      qmp: '',
      uri,
      downtimeLimitMs: cell.downtimeLimitMs,
      maxBandwidth: UNLIMITED_BANDWIDTH,
      progress: false,
      pollMs: options.pollMs,
      onSample: (info: QueryMigrateInfo, atMs: number) => {
        recorder.onSample(info, atMs);
        if (info.ram) {
          lastRam = info.ram;
          if (info.status === 'active' && info.ram['dirty-pages-rate'] > 0) dirtyRates.push(info.ram['dirty-pages-rate']);
        }
        if (cancel === undefined && atMs > options.capMs && info.status === 'active') {
          cancelledAt = atMs;
          cancel = source.qmp.execute('migrate_cancel');
        }
      },
    });
    if (cancel) await cancel;
    const info = await settleFinalInfo(source.qmp, outcome.info);
    const label = `${side === 'ferry' ? 'Ferry' : 'QEMU'} (${options.accel}), ${cell.key}, rep ${options.rep + 1}`;
    const record = await recorder.finish(
      {
        title: label,
        accelerator: options.accel,
        uri,
        memoryBytes: cell.memoryMiB * 1024 * 1024,
        downtimeLimitMs: cell.downtimeLimitMs,
        maxBandwidth: UNLIMITED_BANDWIDTH,
        notes: guestPagesPerSec !== undefined ? [`Guest dirty rate before the migration: ${Math.round(guestPagesPerSec).toLocaleString('en-US')} pages/s.`] : [],
      },
      info,
      cancelledAt,
    );
    let destinationStatus: string | undefined;
    let pauseMs: number | undefined;
    if (destination && outcome.status === 'completed') {
      destinationStatus = await waitRunning(destination.qmp, 10_000);
      pauseMs = await guestPause(source.qmp, destination.qmp);
    }
    const status = outcome.status === 'completed' ? 'completed' : cancelledAt !== undefined ? 'not-converged' : 'failed';
    const total = info['total-time'];
    return {
      ...base,
      status,
      ...(total !== undefined ? { totalMs: total } : {}),
      ...(info.downtime !== undefined ? { downtimeMs: info.downtime } : {}),
      ...(pauseMs !== undefined ? { pauseMs } : {}),
      ...(info['setup-time'] !== undefined ? { setupMs: info['setup-time'] } : {}),
      ...(lastRam ? { bytes: lastRam.transferred, passes: lastRam['dirty-sync-count'] } : {}),
      ...(info.ram && total ? { throughput: (info.ram.transferred * 1000) / total } : {}),
      ...(guestPagesPerSec !== undefined ? { guestPagesPerSec } : {}),
      ...(dirtyRates.length > 0 ? { dirtyPagesRate: stat(dirtyRates)!.median } : {}),
      ...(destinationStatus !== undefined ? { destinationStatus } : {}),
      ...((info.downtime ?? 0) > cell.downtimeLimitMs ? ferryDowntimeBreakdown(source) : {}),
      ...ferryCalledOff(source),
      ...(info['error-desc'] !== undefined ? { error: info['error-desc'] } : {}),
      record,
    };
  } catch (err) {
    return { ...base, status: 'failed', error: err instanceof Error ? err.message : String(err) };
  } finally {
    for (const vm of vms.reverse()) await vm.quit();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A Ferry source's completion trace line (what its downtime was spent on), if it printed one: kept for runs over the limit. */
function ferryDowntimeBreakdown(source: unknown): { downtimeBreakdown?: string } {
  if (!(source instanceof FerryProcess)) return {};
  const line = source.stderr.split('\n').find((l) => l.includes('migration: completed in'));
  return line ? { downtimeBreakdown: line.replace(/^FERRY \d+: migration: /, '') } : {};
}

/** How many switchovers a Ferry source's downtime guard called off (from its trace), when any. */
function ferryCalledOff(source: unknown): { switchoversCalledOff?: number } {
  if (!(source instanceof FerryProcess)) return {};
  const count = source.stderr.split('\n').filter((l) => l.includes('migration: switchover called off')).length;
  return count > 0 ? { switchoversCalledOff: count } : {};
}

/** The destination's run state once it settled: "running" after a good migration. */
async function waitRunning(client: QmpClient, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = (await client.execute<{ status: string }>('query-status')).status;
    if (status === 'running' || Date.now() > deadline) return status;
    await new Promise((r) => setTimeout(r, 20));
  }
}
