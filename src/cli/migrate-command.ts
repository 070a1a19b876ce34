// `ferry migrate --qmp SOCKET URI`: starts a migration over QMP, shows a live progress
// bar from query-migrate, and ends with a summary. It only speaks QMP, so it drives a
// real QEMU the same way it drives Ferry.

import cliProgress from 'cli-progress';
import { writeFile } from 'node:fs/promises';
import { QmpClient } from '../qmp/client.js';
import { MigrationRecorder, querySourceFacts, settleFinalInfo } from '../report/migration-record.js';
import { renderMigrationReport } from '../report/migration-report.js';
import { formatBytes, formatMs, formatRate } from '../format.js';
import { forgetEvents, guestPause, pausesWithoutSwitchover } from '../report/guest-pause.js';

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
  /** How long a migration runs before it may be called not converging (default NOT_CONVERGING_AFTER_MS). */
  readonly hintAfterMs?: number;
  /**
   * Post-copy: postcopy-ram on (migrateCommand turns it on at the destination too when it
   * has its QMP socket), and migrate-start-postcopy once the first pass has gone.
   */
  readonly postcopy?: boolean;
  /**
   * The multifd capability, with this many channels (true: the multifd-channels already
   * set); migrateCommand sets both on the destination too when it has its QMP socket.
   */
  readonly multifd?: boolean | number;
  /** multifd-compression (and its method's level parameter), on the destination too. */
  readonly multifdCompression?: { readonly method: 'none' | 'zlib' | 'zstd'; readonly level?: number };
  /**
   * tls-creds (a tls-creds-x509 object with endpoint=client on the source) and
   * tls-hostname: set on the source only — a destination listens with TLS from its
   * migrate-incoming on, so its own tls-creds must be set before that.
   */
  readonly tlsCreds?: string;
  readonly tlsHostname?: string;
}

/** The migrate-set-parameters a run asks for beside its capabilities (multifd-channels, multifd-compression). */
function multifdSettings(multifd: boolean | number | undefined, compression?: MigrateCommandOptions['multifdCompression']): { capabilities: { capability: string; state: boolean }[]; parameters: Record<string, number | string> } {
  if (multifd === undefined || multifd === false) return { capabilities: [], parameters: {} };
  const parameters: Record<string, number | string> = typeof multifd === 'number' ? { 'multifd-channels': multifd } : {};
  if (compression !== undefined) {
    parameters['multifd-compression'] = compression.method;
    if (compression.level !== undefined) parameters[`multifd-${compression.method}-level`] = compression.level;
  }
  return { capabilities: [{ capability: 'multifd', state: true }], parameters };
}

/** What the destination said, when its QMP socket was given. */
export interface DestinationOutcome {
  /** Its run state once the migration settled: "running" after a good one. */
  readonly status: string;
  /** Source STOP to destination RESUME (ms), when both came. */
  readonly pauseMs: number | undefined;
  /** After a post-copy with postcopy-blocktime on there: each vCPU's ms asleep on missing pages, and the ms all slept at once. */
  readonly vcpuBlocktimeMs?: readonly number[];
  readonly blocktimeMs?: number;
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
  /** Ferry's, with multifd-compression: bytes of pages into the compression and out of it. */
  'x-ferry-multifd-compression'?: { pages: number; 'compressed-size': number; 'compression-rate': number };
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
    'postcopy-requests'?: number;
    'postcopy-bytes'?: number;
    'multifd-bytes'?: number;
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

/** A migration still active this long (and past its first passes) may be told it is not converging. */
export const NOT_CONVERGING_AFTER_MS = 5000;
/** Passes (dirty syncs) it must have made first: the first pass sends all of RAM whatever the guest does. */
const NOT_CONVERGING_AFTER_PASSES = 3;

/** What convergenceHint weighs besides query-migrate: the source's settings, read once. */
export interface HintSettings {
  readonly downtimeLimitMs: number;
  /** max-bandwidth in bytes/s; 0 is no cap. */
  readonly maxBandwidth: number;
  readonly autoConverge: boolean;
}

/**
 * What to tell someone watching a pre-copy migration that has not converged: after a few
 * passes, what is left still takes longer than the downtime limit at the measured rate —
 * typically a guest that dirties RAM about as fast as it can be sent. (Not query-migrate's
 * dirty-pages-rate: it counts a page once per sync, so it cannot exceed RAM per pass.) QEMU's migration
 * goes on until it fits (or is cancelled), and so does this one; the hint names the knobs
 * that change that. Undefined while there is nothing to say.
 */
export function convergenceHint(info: QueryMigrateInfo, elapsedMs: number, settings: HintSettings, afterMs = NOT_CONVERGING_AFTER_MS): string | undefined {
  const ram = info.ram;
  const expected = info['expected-downtime'];
  if (info.status !== 'active' || ram === undefined || expected === undefined) return undefined;
  if (elapsedMs < afterMs || ram['dirty-sync-count'] < NOT_CONVERGING_AFTER_PASSES) return undefined;
  if (expected <= settings.downtimeLimitMs) return undefined;
  const knobs = [
    ...(settings.autoConverge ? [] : ['--auto-converge (slows the guest\'s vCPUs until it fits)']),
    `a --downtime-limit above ${formatMs(expected)}`,
    ...(settings.maxBandwidth > 0 ? [`a --max-bandwidth above ${formatRate(settings.maxBandwidth)}`] : []),
  ];
  return (
    `ferry: not converging yet after ${ram['dirty-sync-count']} passes in ${formatMs(elapsedMs)}: ` +
    `the ${formatBytes(ram.remaining)} of its ${formatBytes(ram.total)} of RAM still to send would take ` +
    `~${formatMs(expected)} at ${formatRate((ram.mbps * 1e6) / 8)} with the guest stopped; the downtime limit is ` +
    `${formatMs(settings.downtimeLimitMs)}. It goes on until what is left fits; to help it: ${knobs.join(', or ')}. Ctrl-C cancels (the source guest runs on).\n`
  );
}

/** The source's settings convergenceHint weighs; where the peer does not say, QEMU's defaults. */
async function hintSettings(client: QmpClient): Promise<HintSettings> {
  const params = (await client.execute('query-migrate-parameters').catch(() => ({}))) as { 'downtime-limit'?: number; 'max-bandwidth'?: number };
  const caps = (await client.execute('query-migrate-capabilities').catch(() => [])) as Array<{ capability: string; state: boolean }>;
  return {
    downtimeLimitMs: params['downtime-limit'] ?? 300,
    maxBandwidth: params['max-bandwidth'] ?? 0,
    autoConverge: Array.isArray(caps) && caps.some((c) => c.capability === 'auto-converge' && c.state),
  };
}

/** Run a migration to its end through an open QMP client; resolves with the final query-migrate. */
export async function runMigration(client: QmpClient, options: MigrateCommandOptions): Promise<MigrationOutcome> {
  const params: Record<string, number | string> = {};
  if (options.downtimeLimitMs !== undefined) params['downtime-limit'] = options.downtimeLimitMs;
  if (options.maxBandwidth !== undefined) params['max-bandwidth'] = options.maxBandwidth;
  Object.assign(params, multifdSettings(options.multifd, options.multifdCompression).parameters);
  if (options.tlsCreds !== undefined) params['tls-creds'] = options.tlsCreds;
  if (options.tlsHostname !== undefined) params['tls-hostname'] = options.tlsHostname;
  if (Object.keys(params).length > 0) await client.execute('migrate-set-parameters', params);
  const wanted = [...(options.capabilities ?? []), ...(options.postcopy ? ['postcopy-ram'] : []), ...(options.multifd !== undefined && options.multifd !== false ? ['multifd'] : [])];
  const caps = [{ capability: 'events', state: true }, ...wanted.map((c) => ({ capability: c, state: true }))];
  await client.execute('migrate-set-capabilities', { capabilities: caps });

  const started = performance.now();
  await client.execute('migrate', { uri: options.uri });
  const settings = await hintSettings(client);
  let hinted = false;
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
  let postcopyAsked = false;
  try {
    for (;;) {
      info = (await client.execute('query-migrate')) as QueryMigrateInfo;
      // The first pass (every page) is out once the dirty log was synced again.
      if (options.postcopy && !postcopyAsked && info.status === 'active' && (info.ram?.['dirty-sync-count'] ?? 0) >= 2) {
        postcopyAsked = true;
        await client.execute('migrate-start-postcopy');
      }
      peakThrottle = Math.max(peakThrottle, info['cpu-throttle-percentage'] ?? 0);
      const elapsed = performance.now() - started;
      options.onSample?.(info, elapsed);
      const done = info.ram ? Math.max(0, Math.min(100, Math.round(100 * (1 - info.ram.remaining / (info.ram.total || 1))))) : 0;
      // Progress is what is left of RAM, not bytes sent: later passes resend pages.
      if (bar && info.ram) bar.update(done, payload(info));
      const hint = hinted ? undefined : convergenceHint(info, elapsed, settings, options.hintAfterMs);
      if (hint !== undefined) {
        hinted = true;
        // Once, between two bars: written under a live bar it would be drawn over.
        bar?.stop();
        (options.out ?? process.stderr).write(hint);
        bar?.start(100, done, payload(info));
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

/**
 * The one-screen summary printed at the end. `otherPauses`: the source's pauses that did
 * not end in the switchover (pausesWithoutSwitchover), in ms.
 */
export function formatSummary(outcome: MigrationOutcome, destination?: DestinationOutcome, otherPauses: readonly number[] = [], snapshotPauseMs?: number): string {
  const { info } = outcome;
  const ram = info.ram;
  const lines = [`Migration ${outcome.status}`];
  if (info['total-time'] !== undefined) lines.push(`  total time      ${formatMs(info['total-time'])}`);
  if (info['setup-time'] !== undefined) lines.push(`  setup time      ${formatMs(info['setup-time'])}`);
  if (info.downtime !== undefined) lines.push(`  downtime        ${formatMs(info.downtime)}`);
  if (destination?.pauseMs !== undefined) lines.push(`  guest paused    ${destination.pauseMs.toFixed(1)} ms (source STOP to destination RESUME)`);
  if (snapshotPauseMs !== undefined) lines.push(`  guest paused    ${snapshotPauseMs.toFixed(1)} ms (STOP to RESUME: the snapshot's moment; the guest ran on while its RAM was saved)`);
  if (otherPauses.length > 0) {
    const each = otherPauses.map((ms) => `${ms.toFixed(1)} ms`).join(', ');
    lines.push(`  other pauses    ${otherPauses.length}: ${each} (the source stopped the guest and ran it again: a switchover called off, a failed or cancelled stop, or stop/cont)`);
  }
  if (ram) {
    lines.push(`  passes          ${ram['dirty-sync-count']}`);
    lines.push(`  transferred     ${formatBytes(ram.transferred)} (${ram.normal} pages sent whole, ${ram.duplicate} zero pages)`);
    lines.push(`  RAM             ${formatBytes(ram.total)}`);
    if (info['total-time']) lines.push(`  throughput      ${formatRate(ram.transferred / (info['total-time'] / 1000))} average, ${formatRate((ram.mbps * 1e6) / 8)} last`);
  }
  if (ram?.['multifd-bytes']) {
    lines.push(`  multifd         ${formatBytes(ram['multifd-bytes'])} of it on the multifd channels (pages of data with their packet headers; zero pages on the main stream)`);
  }
  const mc = info['x-ferry-multifd-compression'];
  if (mc) {
    lines.push(`  compressed      ${formatBytes(mc.pages * 4096)} of pages went as ${formatBytes(mc['compressed-size'])} (${mc['compression-rate'].toFixed(1)} : 1, multifd-compression)`);
  }
  if (outcome.peakThrottle > 0) lines.push(`  CPU throttle    up to ${outcome.peakThrottle} % (auto-converge)`);
  if (ram?.['postcopy-bytes']) {
    lines.push(`  post-copy       ${formatBytes(ram['postcopy-bytes'])} sent after the switch, ${ram['postcopy-requests'] ?? 0} page requests from the destination`);
  }
  const perVcpu = destination?.vcpuBlocktimeMs;
  if (perVcpu !== undefined && perVcpu.length > 0) {
    const each = perVcpu.length === 1 ? `${perVcpu[0]} ms` : perVcpu.map((ms, i) => `vCPU ${i} ${ms} ms`).join(', ');
    lines.push(`  vCPUs blocked   ${each} on pages not there yet, all at once ${destination?.blocktimeMs ?? 0} ms (the destination's postcopy-blocktime)`);
  }
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
  if (options.capabilities?.includes('x-ignore-shared') && destination) {
    // It changes the stream's RAM section: the destination must have it on as well.
    try {
      await destination.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    } catch (err) {
      await client.close();
      await destination.close();
      throw err;
    }
  }
  if (options.postcopy && destination) {
    // Both sides must have it before the stream starts (the destination checks at ADVISE);
    // the destination also measures what the switch costs the guest (postcopy-blocktime).
    try {
      await destination.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }, { capability: 'postcopy-blocktime', state: true }] });
    } catch (err) {
      await client.close();
      await destination.close();
      throw err;
    }
  }
  const multifd = multifdSettings(options.multifd, options.multifdCompression);
  if (destination && multifd.capabilities.length > 0) {
    // Before the source connects: the destination takes connections after the main one as
    // its channels only with the capability on, and expects as many as it is told.
    try {
      if (Object.keys(multifd.parameters).length > 0) await destination.execute('migrate-set-parameters', multifd.parameters);
      await destination.execute('migrate-set-capabilities', { capabilities: multifd.capabilities });
    } catch (err) {
      await client.close();
      await destination.close();
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
    const postcopied = (outcome.info.ram?.['postcopy-bytes'] ?? 0) > 0;
    // A background snapshot stops the guest once, at its start, and runs it again: that
    // pause is its own, not one of the others.
    const pauses = pausesWithoutSwitchover(client);
    const snapshotPause = options.capabilities?.includes('background-snapshot') ? pauses.shift() : undefined;
    const summary = formatSummary(outcome, destination ? await destinationOutcome(client, destination, outcome.status, postcopied) : undefined, pauses, snapshotPause);
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
export async function destinationOutcome(source: QmpClient, destination: QmpClient, status: string, postcopy = false): Promise<DestinationOutcome> {
  const runState = async (): Promise<string> => (await destination.execute<{ status: string }>('query-status')).status;
  if (status !== 'completed') return { status: await runState(), pauseMs: undefined };
  // The destination starts the guest a moment after the source completes.
  const pauseMs = await guestPause(source, destination, 2_000);
  if (!postcopy) return { status: await runState(), pauseMs };
  // After post-copy the destination completes once it has told the source (a moment later).
  type Blocktime = { status?: string; 'postcopy-blocktime'?: number; 'postcopy-vcpu-blocktime'?: number[] };
  let info = await destination.execute<Blocktime>('query-migrate');
  for (const deadline = Date.now() + 5_000; info.status !== 'completed' && Date.now() < deadline;) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    info = await destination.execute<Blocktime>('query-migrate');
  }
  return {
    status: await runState(),
    pauseMs,
    ...(info['postcopy-vcpu-blocktime'] !== undefined ? { vcpuBlocktimeMs: info['postcopy-vcpu-blocktime'] } : {}),
    ...(info['postcopy-blocktime'] !== undefined ? { blocktimeMs: info['postcopy-blocktime'] } : {}),
  };
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
