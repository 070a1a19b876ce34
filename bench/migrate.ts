// `npm run bench:migrate [-- --accel sim|kvm|v86] [--reps N] [--quick] [--mem-prealloc both|on|off]
//   [--memory 256M,1G] [--transport tcp,unix] [--stopped]`:
// live migrations between two ferry processes, measured through QMP's query-migrate, and
// in the same run the ceilings they are read against (loopback socket throughput, memcpy) —
// at the start of the run, and again just before and after each dirtying migration.
// Each dirtying cell runs twice by default: to a destination that backs its RAM as pages
// arrive (the default) and to one started with --mem-prealloc (QEMU's -mem-prealloc).
// --stopped stops the source guest (QMP stop) once it is warm, before migrating: the
// engine's own speed, without a running guest's thread taking a core.
// --no-warm-up starts both processes with --no-warm-up: the first migration of a process
// then runs on cold code (by default every `ferry run` warms its migration code up after
// start, and each run here waits for both ends to have done so).
// --multifd N turns the multifd capability on at both ends with N channels: pages of data
// then go over N more connections (the ceilings stay those of one connection).
// --multifd-compression zlib|zstd (with --multifd) compresses them at both ends.
// --x-ignore-shared maps both ends' RAM from one file (memory-backend-file, share=on, in
// /dev/shm) and turns x-ignore-shared on at both: the RAM is not sent at all.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConsoleClient } from '../src/cli/console-client.js';
import { FerryProcess } from '../src/cli/ferry-process.js';
import { forgetEvents, guestPause } from '../src/report/guest-pause.js';
import { runMigration, type QueryMigrateInfo } from '../src/cli/migrate-command.js';
import { kvmAvailable } from '../src/hypervisor/kvm-accelerator.js';
import { describeFirstTouch, measureCeilings, measureChannelOnce } from './ceiling.js';
import { cpuBetween, sampleCpu, waitForQuiet } from './cpu-usage.js';
import { keepOutput } from './lib/results-log.js';
import { benchUsage, parseBenchArgs } from './lib/usage.js';
import { makeTestCerts } from '../src/crypto/test-certs.js';

/** Runs of each ceiling at the start of a run. */
const CEILING_RUNS = 5;

interface Cell { memory: string; guest: string; transport: 'tcp' | 'unix'; prealloc: boolean }
interface Run {
  status: string; totalMs: number; downtimeMs: number; pauseMs: number; bytes: number; passes: number; throughput: number; expectedDowntimeOk: boolean;
  /** With multifd-compression: what the pages went as on the channels (x-ferry-multifd-compression). */
  compressedBytes: number;
  /** Main-thread CPU of source and destination during the migration, and how busy the machine was (0–1). */
  srcMainMs: number; dstMainMs: number; machineBusy: number;
  /** CPU of both processes, every thread, during the migration. */
  bothMs: number;
  /** Durations of the stops the downtime guard called off (the guest then ran again), ms. */
  calledOffMs: number[];
  /**
   * The channel ceiling of this transport measured around the migration (dirtying cells):
   * the mean of one run just before its processes started and one just after they quit, bytes/s.
   */
  ceilingAround: number;
}

const USAGE = 'usage: npm run bench:migrate [-- --accel sim|kvm|v86] [--reps N] [--quick] [--mem-prealloc both|on|off] [--memory 256M,1G] [--transport tcp,unix] [--downtime-limit MS] [--stopped] [--guests sweep,idle] [--no-warm-up] [--multifd CHANNELS] [--multifd-compression zlib|zstd] [--tls] [--x-ignore-shared]';

const usageError: (message: string) => never = benchUsage('bench:migrate', USAGE);
const { values } = parseBenchArgs({
  accel: { type: 'string' },
  reps: { type: 'string', default: '3' },
  quick: { type: 'boolean', default: false },
  'downtime-limit': { type: 'string', default: '300' },
  'mem-prealloc': { type: 'string', default: 'both' },
  memory: { type: 'string' },
  transport: { type: 'string' },
  stopped: { type: 'boolean', default: false },
  guests: { type: 'string' },
  'no-warm-up': { type: 'boolean', default: false },
  multifd: { type: 'string', default: '0' },
  'multifd-compression': { type: 'string', default: 'none' },
  tls: { type: 'boolean', default: false },
  'x-ignore-shared': { type: 'boolean', default: false },
}, usageError);
const reps = Number(values.reps);
if (!Number.isInteger(reps) || reps < 1) usageError(`--reps must be a whole number of at least 1, not "${values.reps}"`);
const downtimeLimit = Number(values['downtime-limit']);
if (!Number.isFinite(downtimeLimit) || downtimeLimit <= 0) usageError(`--downtime-limit must be a positive number of milliseconds, not "${values['downtime-limit']}"`);
const accel = values.accel ?? (kvmAvailable().ok ? 'kvm' : 'sim');
if (!['sim', 'kvm', 'v86'].includes(accel)) usageError(`--accel must be sim, kvm or v86, not "${accel}"`);
const PREALLOC_MODES: Record<string, boolean[]> = { both: [false, true], on: [true], off: [false] };
const preallocOption = values['mem-prealloc'] ?? 'both';
if (!(preallocOption in PREALLOC_MODES)) usageError(`--mem-prealloc must be both, on or off, not "${preallocOption}"`);
const preallocModes = PREALLOC_MODES[preallocOption]!;
const stopped = values.stopped ?? false;
const warmUp = !(values['no-warm-up'] ?? false);
const multifdChannels = Number(values.multifd);
if (!Number.isInteger(multifdChannels) || multifdChannels < 0 || multifdChannels > 255) usageError(`--multifd takes a channel count from 1 to 255 (0: off), not "${values.multifd}"`);
const multifdCompression = values['multifd-compression'] ?? 'none';
if (!['none', 'zlib', 'zstd'].includes(multifdCompression)) usageError(`--multifd-compression takes none, zlib or zstd, not "${multifdCompression}"`);
if (multifdCompression !== 'none' && multifdChannels === 0) usageError('--multifd-compression needs --multifd CHANNELS');
// --tls: every connection a TLS session (tls-creds-x509, certificates made for the run).
const useTls = values.tls ?? false;
const ignoreShared = values['x-ignore-shared'] ?? false;
if (ignoreShared && accel === 'v86') usageError('--x-ignore-shared needs --accel sim or kvm (v86\'s RAM is WebAssembly memory)');
const TRANSPORTS = ['tcp', 'unix'] as const;
const transports = (values.transport ?? 'tcp,unix').split(',');
for (const t of transports) if (!(TRANSPORTS as readonly string[]).includes(t)) usageError(`--transport takes tcp and/or unix (comma-separated), not "${t}"`);

// Which guests: the dirtying one (sweep; busy for v86), the idle one, or both.
const guestKinds = (values.guests ?? 'sweep,idle').split(',');
for (const g of guestKinds) if (!['sweep', 'idle'].includes(g)) usageError(`--guests takes sweep and/or idle (comma-separated), not "${g}"`);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
const range = (xs: number[], f: (x: number) => string) => `${f(median(xs))} [${f(Math.min(...xs))}–${f(Math.max(...xs))}]`;
const ms = (x: number) => (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${Math.round(x)} ms`);
const gbs = (x: number) => `${(x / 1e9).toFixed(2)} GB/s`;
const secondsPerGB = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)} s` : "—");
const mb = (x: number) => `${(x / 1e6).toFixed(1)} MB`;

/** Wait until `vm` has warmed its migration code up (ferry run does so once started). */
async function warmedUp(vm: FerryProcess, rounds: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const state = await vm.execute<{ status: string; error?: string; rounds?: number }>('x-ferry-query-warm-up');
    const { status, error } = state;
    if (status === 'completed' && (state.rounds ?? 0) >= rounds) return;
    if (status === 'failed' || status === 'skipped' || status === 'off') throw new Error(`the warm-up ended ${status}${error ? `: ${error}` : ''}`);
    if (Date.now() > deadline) throw new Error('the warm-up did not end within 30 s');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** "72 % [64–81 %] (4.21, 4.40, 3.95)": each run's throughput against the ceiling measured around it. */
/** The converged column's note on switchovers the guard called off: how many per run, and the longest such stop. */
function calledOffNote(runs: readonly Run[]): string {
  const stops = runs.flatMap((r) => r.calledOffMs);
  if (stops.length === 0) return '';
  return ` (called off: ${runs.map((r) => r.calledOffMs.length).join(', ')}; stops up to ${Math.round(Math.max(...stops))} ms)`;
}

function pairedShare(runs: readonly Run[]): string {
  const shares = runs.map((r) => (100 * r.throughput) / r.ceilingAround);
  const pct = (x: number) => `${Math.round(x)} %`;
  return `${pct(median(shares))} [${pct(Math.min(...shares))}–${pct(Math.max(...shares))}] (${runs.map((r) => (r.ceilingAround / 1e9).toFixed(2)).join(', ')})`;
}

/**
 * One channel run of `transport` on a quiet machine (the last run's processes free GiBs
 * of memory for a while after they quit): the machine's speed moves by tens of percent
 * within minutes here, so each migration is also read against runs taken around it.
 */
async function quietCeiling(transport: Cell['transport'], dir: string): Promise<number> {
  await waitForQuiet();
  return (await measureChannelOnce(transport, dir)).bytesPerSec;
}

async function migrateOnce(dir: string, cell: Cell, rep: number): Promise<Run> {
  if (/idle/.test(cell.guest)) return { ...(await migrateBetweenProcesses(dir, cell, rep)), ceilingAround: NaN };
  const before = await quietCeiling(cell.transport, dir);
  const run = await migrateBetweenProcesses(dir, cell, rep);
  const after = await quietCeiling(cell.transport, dir);
  return { ...run, ceilingAround: (before + after) / 2 };
}

/** Switchovers the downtime guard called off, with the engine's account of each (what was left, the rate while stopped). */
const calledOff: string[] = [];

/** Runs whose downtime overran the limit, with the engine's account of where it went. */
const overruns: string[] = [];

/** How long each stop the source's downtime guard called off lasted, from its trace ("switchover called off after 123.4 ms"). */
function calledOffStops(trace: string): number[] {
  return [...trace.matchAll(/migration: switchover called off after ([\d.]+) ms/g)].map((m) => Number(m[1]));
}

/** Where a destination that took migrate-incoming over QMP listens (query-migrate's socket-address). */
async function listeningOn(dest: FerryProcess): Promise<string> {
  const info = await dest.execute<{ 'socket-address'?: Array<{ type: string; host?: string; port?: string; path?: string }> }>('query-migrate');
  const at = info['socket-address']?.[0];
  if (at === undefined) throw new Error(`the destination is not listening: ${JSON.stringify(info)}`);
  return at.type === 'unix' ? `unix:${at.path}` : `tcp:${at.host}:${at.port}`;
}

/** The run's certificates (--tls), made once in the bench's directory. */
let certs: ReturnType<typeof makeTestCerts> | undefined;
function tlsCerts(dir: string): ReturnType<typeof makeTestCerts> {
  certs ??= makeTestCerts(join(dir, 'pki'));
  return certs;
}

/** Start a source and a destination, migrate once between them, and stop both. */
async function migrateBetweenProcesses(dir: string, cell: Cell, rep: number): Promise<Omit<Run, 'ceilingAround'>> {
  // --x-ignore-shared: both ends map one file in /dev/shm, removed once both have quit.
  const sharedFile = ignoreShared ? join('/dev/shm', `ferry-bench-${process.pid}-${rep}-${cell.memory}-${cell.transport}`) : undefined;
  const memoryBackend = sharedFile ? ['--object', `memory-backend-file,id=pc.ram,size=${cell.memory},mem-path=${sharedFile},share=on`, '--machine', 'memory-backend=pc.ram'] : [];
  const args = ['--accel', accel, '-m', cell.memory, ...memoryBackend, ...(accel === 'v86' ? [] : ['--guest', cell.guest]), ...(warmUp ? [] : ['--no-warm-up'])];
  const incoming = cell.transport === 'tcp' ? 'tcp:127.0.0.1:0' : `unix:${join(dir, `mig-${rep}.sock`)}`;
  const serial = (name: string) => (accel === 'v86' ? `unix:${join(dir, `${name}-${rep}.console`)}` : 'null');
  const pki = useTls ? tlsCerts(dir) : undefined;
  // With TLS the destination listens only once its tls-creds is set (as QEMU's: -incoming defer).
  const destArgs = [...args, ...(cell.prealloc ? ['--mem-prealloc'] : []), '--incoming', pki ? 'defer' : incoming,
    ...(pki ? ['--object', `tls-creds-x509,id=tls0,dir=${pki.serverDir},endpoint=server`] : [])];
  const dest = await FerryProcess.start({ dir, name: `dst-${rep}`, args: destArgs, serial: serial('dst'), startTimeoutMs: 120_000 });
  if (pki) {
    await dest.execute('migrate-set-parameters', { 'tls-creds': 'tls0' });
    await dest.execute('migrate-incoming', { uri: incoming });
  }
  // The engine's trace (a few lines on stderr) says where a run's downtime went, should it overrun the limit.
  const sourceArgs = [...args, ...(pki ? ['--object', `tls-creds-x509,id=tls0,dir=${pki.clientDir},endpoint=client`] : [])];
  const source = await FerryProcess.start({ dir, name: `src-${rep}`, args: sourceArgs, serial: serial('src'), startTimeoutMs: 120_000, env: { NODE_DEBUG: 'ferry' } });
  if (pki) await source.execute('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-hostname': 'localhost' });
  let console: ConsoleClient | undefined;
  try {
    if (accel === 'v86') {
      console = await ConsoleClient.connect(join(dir, `src-${rep}.console`));
      await console.waitFor(/heartbeat \d+/, 240_000);
      if (cell.guest === 'busy') {
        // A memory-busy Linux guest: rewrite an 8 MiB tmpfs file over and over.
        console.type('while :; do dd if=/dev/zero of=/tmp/busy bs=64k count=128 2>/dev/null; echo x >> /tmp/busy; done &\n');
        await new Promise((r) => setTimeout(r, 2000));
      }
    } else if (cell.guest.startsWith('builtin:sweep')) {
      // Migrate a warmed-up guest: its first pass has touched all of its RAM.
      const deadline = Date.now() + 60_000;
      while (((await source.execute<{ pass?: number }>('x-ferry-query-guest')).pass ?? 0) < 1) {
        if (Date.now() > deadline) throw new Error('the guest did not finish its first pass');
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    if (stopped) await source.execute('stop');
    if (ignoreShared) {
      for (const vm of [dest, source]) await vm.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    }
    if (multifdChannels > 0) {
      // Both ends, before the source connects (the destination reads them when it does),
      // and before the warm-up is waited for: turning multifd on warms its paths up too.
      for (const vm of [dest, source]) {
        await vm.execute('migrate-set-parameters', { 'multifd-channels': multifdChannels, 'multifd-compression': multifdCompression });
        await vm.execute('migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: true }] });
      }
    }
    // A VM that has been up a while: both ends have compiled their migration code (four
    // scratch migrations, and two more with multifd).
    if (warmUp) await Promise.all([warmedUp(source, multifdChannels > 0 ? 6 : 4), warmedUp(dest, multifdChannels > 0 ? 6 : 4)]);
    const address = pki ? await listeningOn(dest) : await dest.incomingAddress();
    const pids = [source.child.pid!, dest.child.pid!];
    const before = sampleCpu(pids);
    forgetEvents(source.qmp, dest.qmp);
    const outcome = await runMigration(source.qmp, { qmp: source.qmpPath, uri: address, maxBandwidth: 0, downtimeLimitMs: downtimeLimit, progress: false, pollMs: 50 });
    const cpu = cpuBetween(before, sampleCpu(pids));
    // A stopped source stops no guest, and its destination starts none.
    const pauseMs = outcome.status === 'completed' && !stopped ? await guestPause(source.qmp, dest.qmp) : undefined;
    const info: QueryMigrateInfo = outcome.info;
    for (const line of source.stderr.split('\n').filter((l) => l.includes('migration: switchover called off'))) {
      calledOff.push(`${cell.memory} ${cell.guest} ${cell.prealloc ? 'prealloc' : 'lazy'} ${cell.transport}, rep ${rep + 1}: ${line.replace(/^FERRY \d+: migration: /, '')}`);
    }
    if ((info.downtime ?? 0) > downtimeLimit) {
      const breakdown = source.stderr.split('\n').find((line) => line.includes('migration: completed in'));
      overruns.push(`${cell.memory} ${cell.guest} ${cell.prealloc ? 'prealloc' : 'lazy'} ${cell.transport}, rep ${rep + 1}: downtime ${info.downtime} ms — ${breakdown?.replace(/^FERRY \d+: migration: /, '') ?? '(no trace)'}`);
    }
    const totalMs = info['total-time'] ?? NaN;
    const bytes = info.ram?.transferred ?? NaN;
    return {
      status: outcome.status,
      totalMs,
      downtimeMs: info.downtime ?? NaN,
      pauseMs: pauseMs ?? NaN,
      bytes,
      compressedBytes: info['x-ferry-multifd-compression']?.['compressed-size'] ?? NaN,
      passes: outcome.passes,
      throughput: bytes / (totalMs / 1000),
      expectedDowntimeOk: (info.downtime ?? Infinity) <= downtimeLimit,
      srcMainMs: cpu.processes.get(pids[0]!)?.mainMs ?? NaN,
      dstMainMs: cpu.processes.get(pids[1]!)?.mainMs ?? NaN,
      machineBusy: cpu.machineBusy,
      calledOffMs: calledOffStops(source.stderr),
      bothMs: pids.reduce((sum, pid) => {
        const used = cpu.processes.get(pid);
        return sum + (used ? used.mainMs + used.otherMs : NaN);
      }, 0),
    };
  } finally {
    console?.close();
    await source.quit();
    await dest.quit();
    if (sharedFile) rmSync(sharedFile, { force: true });
  }
}

async function main(): Promise<void> {
  const cells: Cell[] = [];
  const memories = values.memory?.split(',') ?? (accel === 'v86' ? ['128M', '512M'] : values.quick ? ['256M'] : ['256M', '1G']);
  const guests = (accel === 'v86' ? ['idle', 'busy'] : ['builtin:sweep', 'builtin:idle']).filter((g) => guestKinds.includes(/idle/.test(g) ? 'idle' : 'sweep'));
  for (const memory of memories) {
    for (const guest of guests) {
      // An idle guest sends zero pages, which a destination does not back either way.
      const modes = /idle/.test(guest) ? [false] : preallocModes;
      for (const prealloc of modes) for (const transport of transports as (typeof TRANSPORTS)[number][]) cells.push({ memory, guest, transport, prealloc });
    }
  }

  console.log(`Ferry live-migration benchmark — accel ${accel}, downtime-limit ${downtimeLimit} ms, max-bandwidth unlimited, ${multifdChannels > 0 ? `multifd with ${multifdChannels} channels${multifdCompression !== 'none' ? `, pages compressed with ${multifdCompression} (level 1: "sent" and "throughput" count pages at their own size, as QEMU counts them; "sent" adds what the pages went as)` : ''}, ` : ''}${useTls ? 'every connection a TLS session (tls-creds-x509, verify-peer: certificates made for the run), ' : ''}${ignoreShared ? 'x-ignore-shared: both ends map their RAM from one file in /dev/shm (memory-backend-file, share=on), which is not sent, ' : ''}${reps} reps per cell; median [min–max]`);
  if (accel === 'sim') console.log('(sim: no guest code runs; a workload model writes guest RAM — the sweep at 250 000 pages/s, about what the real sweep guest does under this machine\'s KVM)');
  if (stopped) console.log('--stopped: each source guest was stopped (QMP stop) after warming up, before the migration: no guest thread runs meanwhile.');
  console.log(warmUp
    ? 'Warm-up: each migration began once both processes had warmed their migration code up (ferry run does so after start: four scratch migrations of 16 MiB within the process, over tcp and unix sockets, and two more with multifd once it is turned on).'
    : '--no-warm-up: both processes were started with --no-warm-up, so each migration ran on cold code (V8 compiled it meanwhile).');
  // Five runs each: with three, two runs disturbed by the machine set the median (a unix
  // ceiling of 2.92 GB/s from runs of 2.92, 2.32 and 8.87, at 18:16 on 2026-12-06).
  const ceilings = await measureCeilings({ bytes: 1024 ** 3, runs: CEILING_RUNS });
  // The ceiling is the best one Node connection reached: raw 'data' events or Ferry's channel.
  const tcpCeiling = Math.max(ceilings.tcpBytesPerSec, ceilings.channelTcpBytesPerSec || 0);
  const unixCeiling = Math.max(ceilings.unixBytesPerSec, ceilings.channelUnixBytesPerSec || 0);
  // What moving the bytes alone cost the ceiling's two processes, for the case that set it.
  const ceilingCpu = (raw: 'tcp' | 'unix', channel: 'channel-tcp' | 'channel-unix', rawWon: boolean): number => {
    const which = rawWon ? raw : channel;
    return ceilings.senderCpuSecondsPerGB[which] + ceilings.receiverCpuSecondsPerGB[which];
  };
  const tcpCeilingCpu = ceilingCpu('tcp', 'channel-tcp', tcpCeiling === ceilings.tcpBytesPerSec);
  const unixCeilingCpu = ceilingCpu('unix', 'channel-unix', unixCeiling === ceilings.unixBytesPerSec);
  console.log(`Ceilings in this run (two Node processes, one connection, 1 MiB writes, median of ${CEILING_RUNS} runs): loopback tcp ${gbs(tcpCeiling)}, unix ${gbs(unixCeiling)}; memcpy ${gbs(ceilings.memcpyBytesPerSec)}`);
  // Every run, so that the spread the medians come from shows (on a shared machine it is wide).
  const runsOf = (name: 'tcp' | 'unix' | 'channel-tcp' | 'channel-unix') => ceilings.samples[name].map((x) => (x / 1e9).toFixed(2)).join(', ');
  console.log(`(each ceiling is the better median of raw 'data' events and Ferry's channel, whose sockets are set up as a migration's: buffers, and over loopback tcp a congestion control that does not pace; runs in GB/s — raw tcp ${runsOf('tcp')}; channel tcp ${runsOf('channel-tcp')}; raw unix ${runsOf('unix')}; channel unix ${runsOf('channel-unix')})`);
  const memoryRuns = (name: 'memory-tcp' | 'memory-unix') => ceilings.samples[name].map((x) => (x / 1e9).toFixed(2)).join(', ');
  console.log(`Memory to memory in this run (Ferry's channel from 1 GiB of huge-page memory, each byte sent once, read straight into another such region: what a migration's bytes go through, where the ceilings above send one buffer again and again; median of ${CEILING_RUNS}): loopback tcp ${gbs(ceilings.memoryTcpBytesPerSec)}, unix ${gbs(ceilings.memoryUnixBytesPerSec)} (runs: tcp ${memoryRuns('memory-tcp')}; unix ${memoryRuns('memory-unix')})`);
  console.log(`The host backed fresh memory at ${describeFirstTouch(ceilings.firstTouchBytesPerSec)}: ~0.6 GB/s is memory this VM never used before (its nested hypervisor maps it on first touch), ~20 GB/s memory it did. A lazy destination pays this for every page it receives.`);
  console.log('');
  console.log('Destination "lazy" backs its RAM 2 MiB at a time as pages arrive (the default); "prealloc" was started with --mem-prealloc, as QEMU\'s -mem-prealloc.');
  console.log('');
  console.log('CPU: main-thread CPU time of the source and the destination during the migration, and how busy the machine\'s cores were (from /proc, 10 ms ticks).');
  console.log(`CPU per GB: both processes' CPU time (every thread, a running guest's own included: the sim workload's thread, KVM's vCPUs) per GB sent — less noisy than throughput on a shared machine; the ceiling's sender and receiver together used ${secondsPerGB(tcpCeilingCpu)} over tcp and ${secondsPerGB(unixCeilingCpu)} over unix: what moving the bytes alone costs.`);
  console.log('');
  console.log('Guest paused: from the source\'s STOP event to the destination\'s RESUME (QMP timestamps, one clock): what the guest\'s users see; downtime ends when the source has sent its last byte.');
  console.log('');
  console.log('Of the socket ceiling: the median throughput against this run\'s ceiling above; "around it": the median of each migration\'s throughput against the mean of two channel runs of its transport, one just before its two processes started and one just after they quit (each on a quiet machine), with those means in GB/s. Of the memory ceiling: the median throughput against the memory-to-memory figure of its transport.');
  console.log('');
  console.log('| RAM | guest | destination | transport | total time | downtime | guest paused | throughput | of the socket ceiling | of the ceiling around it | of the memory ceiling | sent | passes | converged | CPU src / dst main | machine busy | CPU per GB |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  const dir = mkdtempSync(join(tmpdir(), 'ferry-bench-'));
  try {
    for (const cell of cells) {
      const runs: Run[] = [];
      for (let rep = 0; rep < reps; rep++) runs.push(await migrateOnce(dir, cell, rep));
      const ok = runs.filter((r) => r.status === 'completed');
      const ceiling = cell.transport === 'tcp' ? tcpCeiling : unixCeiling;
      const memoryCeiling = cell.transport === 'tcp' ? ceilings.memoryTcpBytesPerSec : ceilings.memoryUnixBytesPerSec;
      const cpuPerGB = median(ok.map((r) => r.bothMs / 1000 / (r.bytes / 1e9)));
      // No throughput to speak of: an idle guest sends zero pages, x-ignore-shared no RAM at all.
      const isIdle = /idle/.test(cell.guest) || ignoreShared;
      const paused = ok.map((r) => r.pauseMs).filter((x) => Number.isFinite(x));
      console.log(`| ${cell.memory} | ${cell.guest.replace('builtin:', '')}${stopped ? ' (stopped)' : ''} | ${cell.prealloc ? 'prealloc' : 'lazy'} | ${cell.transport} | ${range(ok.map((r) => r.totalMs), ms)} | ${range(ok.map((r) => r.downtimeMs), ms)} | ${paused.length > 0 ? range(paused, ms) : '—'} | ${isIdle ? (ignoreShared ? '— (RAM not sent)' : '— (zero pages)') : range(ok.map((r) => r.throughput), gbs)} | ${isIdle ? '—' : `${Math.round((100 * median(ok.map((r) => r.throughput))) / ceiling)} %`} | ${isIdle ? '—' : pairedShare(ok)} | ${isIdle ? '—' : `${Math.round((100 * median(ok.map((r) => r.throughput))) / memoryCeiling)} %`} | ${range(ok.map((r) => r.bytes), mb)}${multifdCompression !== 'none' ? ` (pages as ${range(ok.map((r) => r.compressedBytes), mb)})` : ''} | ${range(ok.map((r) => r.passes), (x) => String(x))} | ${ok.length}/${runs.length}${ok.every((r) => r.expectedDowntimeOk) ? '' : ' (downtime over the limit!)'}${calledOffNote(ok)} | ${ms(median(ok.map((r) => r.srcMainMs)))} / ${ms(median(ok.map((r) => r.dstMainMs)))} | ${Math.round(100 * median(ok.map((r) => r.machineBusy)))} % | ${isIdle ? '—' : secondsPerGB(cpuPerGB)} |`);
    }
    if (calledOff.length > 0) {
      console.log("\nSwitchovers the downtime guard called off (the source's trace):");
      for (const line of calledOff) console.log(`- ${line}`);
    }
    if (overruns.length > 0) {
      console.log(`\nRuns whose downtime overran the ${downtimeLimit} ms limit, and where it went (the source's trace):`);
      for (const line of overruns) console.log(`- ${line}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const saveOutput = keepOutput(`migrate-${accel}${stopped ? '-stopped' : ''}${warmUp ? '' : '-cold'}${multifdChannels > 0 ? `-multifd${multifdChannels}` : ''}${multifdCompression !== 'none' ? `-${multifdCompression}` : ''}${useTls ? '-tls' : ''}${ignoreShared ? '-ignore-shared' : ''}`);
await main();
console.log(`\nWritten to ${saveOutput()}`);
