// `ferry migrate --qmp SOCKET URI`: starts a migration over QMP, shows a live progress
// bar from query-migrate, and ends with a summary. It only speaks QMP, so it drives a
// real QEMU the same way it drives Ferry.

import cliProgress from 'cli-progress';
import { writeFile } from 'node:fs/promises';
import { QmpClient } from '../qmp/client.js';
import { MigrationRecorder, querySourceFacts, settleFinalInfo } from '../report/migration-record.js';
import { renderMigrationReport } from '../report/migration-report.js';
import { formatBytes, formatMs, formatRate } from '../format.js';
import { forgetEvents, guestPause } from '../report/guest-pause.js';

export interface MigrateCommandOptions {
  readonly qmp: string;
  readonly uri: string;
  readonly downtimeLimitMs?: number;
  readonly maxBandwidth?: number;
  /** Extra capabilities to switch on, e.g. ["xbzrle"]. */
  readonly capabilities?: readonly string[];
  readonly pollMs?: number;
  /** Where progress and the summary go (stderr by default, stdout for the summary). */
  readonly out?: NodeJS.WritableStream;
  readonly progress?: boolean;
  /** Called with every query-migrate answer (reports and benchmarks record the run). */
  readonly onSample?: (info: QueryMigrateInfo, atMs: number) => void;
  /** Write a self-contained HTML report of the run to this file (migrateCommand only). */
  readonly report?: string;
  /**
   * The destination's QMP socket (migrateCommand only): the summary then also gives the
   * guest's pause as its users saw it and the destination's run state.
   */
  readonly destinationQmp?: string;
}

/** What the destination said, when its QMP socket was given. */
export interface DestinationOutcome {
  /** Its run state once the migration settled: "running" after a good one. */
  readonly status: string;
  /** Source STOP to destination RESUME (ms), when both came. */
  readonly pauseMs: number | undefined;
}

/** The parts of QEMU's query-migrate answer this command reads. */
export interface QueryMigrateInfo {
  status?: string;
  'total-time'?: number;
  'setup-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'error-desc'?: string;
  /** Present while auto-converge throttles the guest's vCPUs. */
  'cpu-throttle-percentage'?: number;
  ram?: {
    transferred: number;
    remaining: number;
    total: number;
    duplicate: number;
    normal: number;
    'normal-bytes': number;
    'dirty-pages-rate': number;
    mbps: number;
    'dirty-sync-count': number;
    'pages-per-second'?: number;
    'precopy-bytes'?: number;
    'downtime-bytes'?: number;
    'page-size'?: number;
  };
}

export interface MigrationOutcome {
  readonly status: string;
  readonly info: QueryMigrateInfo;
  readonly passes: number;
  /** The highest auto-converge throttle query-migrate reported (0: never throttled). */
  readonly peakThrottle: number;
}

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** Run a migration to its end through an open QMP client; resolves with the final query-migrate. */
export async function runMigration(client: QmpClient, options: MigrateCommandOptions): Promise<MigrationOutcome> {
  const params: Record<string, number> = {};
  if (options.downtimeLimitMs !== undefined) params['downtime-limit'] = options.downtimeLimitMs;
  if (options.maxBandwidth !== undefined) params['max-bandwidth'] = options.maxBandwidth;
  if (Object.keys(params).length > 0) await client.execute('migrate-set-parameters', params);
  const caps = [{ capability: 'events', state: true }, ...(options.capabilities ?? []).map((c) => ({ capability: c, state: true }))];
  await client.execute('migrate-set-capabilities', { capabilities: caps });

  const started = performance.now();
  await client.execute('migrate', { uri: options.uri });
  const showBar = options.progress ?? true;
  const bar = showBar
    ? new cliProgress.SingleBar({
        format: ' {bar} {percentage}% | {transferred} sent, {remaining} left | pass {pass} | dirty {dirty} | {rate} | downtime ≈ {downtime}{throttle}',
        stream: (options.out ?? process.stderr) as NodeJS.WriteStream,
        hideCursor: true,
        clearOnComplete: false,
        noTTYOutput: true,
        notTTYSchedule: 1000,
        barsize: 24,
      }, cliProgress.Presets.shades_classic)
    : undefined;
  bar?.start(100, 0, payload(undefined));
  const poll = options.pollMs ?? 100;
  let info: QueryMigrateInfo = {};
  let peakThrottle = 0;
  try {
    for (;;) {
      info = (await client.execute('query-migrate')) as QueryMigrateInfo;
      peakThrottle = Math.max(peakThrottle, info['cpu-throttle-percentage'] ?? 0);
      options.onSample?.(info, performance.now() - started);
      if (bar && info.ram) {
        const total = info.ram.total || 1;
        // Progress is what is left of RAM, not bytes sent: later passes resend pages.
        const done = Math.max(0, Math.min(100, Math.round(100 * (1 - info.ram.remaining / total))));
        bar.update(done, payload(info));
      }
      if (info.status && TERMINAL.has(info.status)) {
        // QEMU 7.2 can answer "completed" a moment before it has set total-time and downtime.
        info = await settleFinalInfo(client, info);
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, poll));
    }
  } finally {
    if (bar) {
      if (info.status === 'completed') bar.update(100, payload(info));
      bar.stop();
    }
  }
  return { status: info.status ?? 'unknown', info, passes: info.ram?.['dirty-sync-count'] ?? 0, peakThrottle };
}

function payload(info: QueryMigrateInfo | undefined): Record<string, string> {
  const ram = info?.ram;
  const pageSize = ram?.['page-size'] ?? 4096;
  return {
    transferred: ram ? formatBytes(ram.transferred) : '-',
    remaining: ram ? formatBytes(ram.remaining) : '-',
    pass: ram ? String(ram['dirty-sync-count']) : '-',
    dirty: ram ? `${formatRate(ram['dirty-pages-rate'] * pageSize)}` : '-',
    rate: ram ? formatRate((ram.mbps * 1e6) / 8) : '-',
    downtime: info?.['expected-downtime'] !== undefined ? formatMs(info['expected-downtime']) : '-',
    throttle: info?.['cpu-throttle-percentage'] ? ` | throttle ${info['cpu-throttle-percentage']} %` : '',
  };
}

/** The one-screen summary printed at the end. */
export function formatSummary(outcome: MigrationOutcome, destination?: DestinationOutcome): string {
  const { info } = outcome;
  const ram = info.ram;
  const lines = [`Migration ${outcome.status}`];
  if (info['total-time'] !== undefined) lines.push(`  total time      ${formatMs(info['total-time'])}`);
  if (info['setup-time'] !== undefined) lines.push(`  setup time      ${formatMs(info['setup-time'])}`);
  if (info.downtime !== undefined) lines.push(`  downtime        ${formatMs(info.downtime)}`);
  if (destination?.pauseMs !== undefined) lines.push(`  guest paused    ${destination.pauseMs.toFixed(1)} ms (source STOP to destination RESUME)`);
  if (ram) {
    lines.push(`  passes          ${ram['dirty-sync-count']}`);
    lines.push(`  transferred     ${formatBytes(ram.transferred)} (${ram.normal} pages sent whole, ${ram.duplicate} zero pages)`);
    lines.push(`  RAM             ${formatBytes(ram.total)}`);
    if (info['total-time']) lines.push(`  throughput      ${formatRate(ram.transferred / (info['total-time'] / 1000))} average, ${formatRate((ram.mbps * 1e6) / 8)} last`);
  }
  if (outcome.peakThrottle > 0) lines.push(`  CPU throttle    up to ${outcome.peakThrottle} % (auto-converge)`);
  if (info['error-desc']) lines.push(`  error           ${info['error-desc']}`);
  if (destination) lines.push(`  destination     ${destination.status}`);
  return lines.join('\n');
}

/** Exit code of a command a signal interrupted (128 + SIGINT), as shells report it. */
const INTERRUPTED_EXIT = 130;

/**
 * The `ferry migrate` command: returns the process exit code. Ctrl-C (or SIGTERM) while
 * it runs cancels the migration — the source guest runs on — rather than leaving it
 * going with nobody watching; a second one ends the command at once.
 */
export async function migrateCommand(options: MigrateCommandOptions): Promise<number> {
  const client = await QmpClient.connect(options.qmp);
  // Connected before anything starts: a wrong destination socket changes nothing.
  let destination: QmpClient | undefined;
  if (options.destinationQmp !== undefined) {
    try {
      destination = await QmpClient.connect(options.destinationQmp);
    } catch (err) {
      await client.close();
      throw err;
    }
  }
  let interrupted = false;
  const onSignal = (): void => {
    if (interrupted) process.exit(INTERRUPTED_EXIT);
    interrupted = true;
    (options.out ?? process.stderr).write('\nferry: interrupted: cancelling the migration (the source guest runs on); interrupt again to quit at once\n');
    client.execute('migrate_cancel').catch((err: unknown) => {
      (options.out ?? process.stderr).write(`ferry: migrate_cancel failed: ${err instanceof Error ? err.message : String(err)}\n`);
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const recorder = options.report !== undefined ? new MigrationRecorder(client) : undefined;
    const userOnSample = options.onSample;
    recorder?.start();
    forgetEvents(client, destination);
    const outcome = await runMigration(client, {
      ...options,
      ...(recorder
        ? {
            onSample: (info: QueryMigrateInfo, atMs: number) => {
              recorder.onSample(info, atMs);
              userOnSample?.(info, atMs);
            },
          }
        : {}),
    });
    if (recorder && options.report !== undefined) await writeReport(client, recorder, options, outcome);
    const summary = formatSummary(outcome, destination ? await destinationOutcome(client, destination, outcome.status) : undefined);
    if (outcome.status === 'completed') {
      process.stdout.write(summary + '\n');
      return 0;
    }
    process.stderr.write(summary + '\n');
    return interrupted ? INTERRUPTED_EXIT : 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await client.close();
    await destination?.close();
  }
}

/**
 * How the destination ended, and — when it runs the guest — how long the guest was
 * paused: a destination started with -S stays paused, and one that failed never runs it.
 * Call forgetEvents on both clients before the migration starts.
 */
export async function destinationOutcome(source: QmpClient, destination: QmpClient, status: string): Promise<DestinationOutcome> {
  const runState = async (): Promise<string> => (await destination.execute<{ status: string }>('query-status')).status;
  if (status !== 'completed') return { status: await runState(), pauseMs: undefined };
  // The destination starts the guest a moment after the source completes.
  const pauseMs = await guestPause(source, destination, 2_000);
  return { status: await runState(), pauseMs };
}

/** Read back what the source ran with (after the run, so the limits set by this command show) and write the page. */
async function writeReport(client: QmpClient, recorder: MigrationRecorder, options: MigrateCommandOptions, outcome: MigrationOutcome): Promise<void> {
  const facts = await querySourceFacts(client);
  const final = await settleFinalInfo(client, outcome.info);
  const record = await recorder.finish(
    {
      title: `Migration to ${options.uri}`,
      accelerator: facts.accelerator,
      uri: options.uri,
      memoryBytes: final.ram?.total ?? 0,
      downtimeLimitMs: facts.downtimeLimitMs,
      maxBandwidth: facts.maxBandwidth === 0 ? Number.POSITIVE_INFINITY : facts.maxBandwidth,
      notes: [`Source QMP socket ${options.qmp}.`],
    },
    final,
  );
  await writeFile(options.report!, renderMigrationReport(record));
  (options.out ?? process.stderr).write(`Report written to ${options.report}\n`);
}
