// `npm run bench:start`: how fast Ferry starts and how much memory it needs beyond the
// guest's own RAM. Prints figures measured in this run (medians with min–max); no
// pass/fail, since these machines are noisy.
//   - process start → the guest's first serial byte (target ≤ 150 ms), read against the
//     floor measured in the same run: Node printing from its main thread and from a worker
//   - RSS beyond guest RAM for -m 1G (target ≤ 80 MiB)
//   - IO-exit round trips per second (KVM only: the guest writes to a port in a loop)

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { FERRY_MAIN } from '../src/cli/ferry-process.js';
import { kvmAvailable } from '../src/hypervisor/kvm-accelerator.js';
import { keepOutput } from './lib/results-log.js';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 7);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function summary(xs: number[], unit: string, digits = 1): string {
  return `${median(xs).toFixed(digits)} ${unit} [${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)}]`;
}

/** Spawn `node ARGS` → its first byte on stdout. */
async function spawnToFirstByte(args: readonly string[], what: string): Promise<number> {
  const started = performance.now();
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    return await new Promise<number>((resolve, reject) => {
      child.stdout.once('data', () => resolve(performance.now() - started));
      child.once('exit', (code) => reject(new Error(`${what} exited with ${code} before any output`)));
      setTimeout(() => reject(new Error(`${what}: no output within 20 s`)), 20_000);
    });
  } finally {
    child.kill('SIGKILL');
  }
}

/** Spawn → first byte on the guest's serial console (stdout). */
function startToFirstByte(accel: string): Promise<number> {
  return spawnToFirstByte([FERRY_MAIN, 'run', '--accel', accel, '-m', '128M', '--guest', 'builtin:sweep,to=2M', '--serial', 'stdio'], 'ferry run');
}

/**
 * What this machine allows at best, measured in the same run: Node printing one byte
 * from its main thread, and from one worker thread (a vCPU, or the sim's workload, runs
 * on a worker, so its first output cannot come sooner than that).
 */
const FLOORS: ReadonlyArray<{ name: string; args: string[] }> = [
  { name: 'node, main thread prints', args: ['-e', 'process.stdout.write("x")'] },
  { name: 'node, a worker thread prints', args: ['-e', 'new (require("node:worker_threads").Worker)("process.stdout.write(\\"x\\")", { eval: true })'] },
];

function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) * 1024 : NaN;
}

/**
 * RSS of a `-m 1G` VM minus the guest RAM that is resident: with the idle guest no guest
 * page is touched, so all of RSS is Ferry's own; with the sweep guest after its first
 * pass, every guest page is resident and the overhead is RSS − 1 GiB.
 */
async function rssOverhead(accel: string, guest: string, settleMs: number): Promise<number> {
  const child = spawn(process.execPath, [FERRY_MAIN, 'run', '--accel', accel, '-m', '1G', '--guest', guest, '--serial', 'stdio'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  try {
    const deadline = Date.now() + 60_000;
    if (guest.startsWith('builtin:sweep')) {
      while (!/pass 2\n/.test(out)) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error('the sweep guest did not finish two passes');
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    await new Promise((r) => setTimeout(r, settleMs));
    const guestResident = guest.startsWith('builtin:sweep') ? 1024 * 1024 * 1024 - 1024 * 1024 : 0;
    return rssBytes(child.pid!) - guestResident;
  } finally {
    child.kill('SIGKILL');
  }
}

/**
 * The sweep guest over a single page prints "pass N\n" after every pass: nearly all it
 * does is OUT to the UART, and every byte is one IO exit carried from the vCPU thread to
 * the device on the main thread and back. Bytes per second = exits per second.
 */
async function measureIoExitRate(): Promise<number> {
  const child = spawn(process.execPath, [FERRY_MAIN, 'run', '--accel', 'kvm', '-m', '16M', '--guest', 'builtin:sweep,from=1M,to=1052672', '--serial', 'stdio'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let bytes = 0;
  let firstAt = 0;
  child.stdout.on('data', (chunk: Buffer) => {
    if (firstAt === 0) firstAt = performance.now();
    else bytes += chunk.length;
  });
  try {
    const deadline = performance.now() + 20_000;
    while (firstAt === 0) {
      if (performance.now() > deadline || child.exitCode !== null) throw new Error('the guest printed nothing');
      await new Promise((r) => setTimeout(r, 10));
    }
    await new Promise((r) => setTimeout(r, 2000));
    return bytes / ((performance.now() - firstAt) / 1000);
  } finally {
    child.kill('SIGKILL');
  }
}

async function main(): Promise<void> {
  const kvm = kvmAvailable();
  const accels = kvm.ok ? ['kvm', 'sim'] : ['sim'];
  console.log(`Ferry start and memory benchmark — ${RUNS} runs each; node ${process.version}`);
  if (!kvm.ok) console.log(`kvm: not measured (${kvm.reason})`);
  for (const floor of FLOORS) {
    const times: number[] = [];
    for (let i = 0; i < RUNS; i++) times.push(await spawnToFirstByte(floor.args, floor.name));
    console.log(`floor: ${floor.name}: ${summary(times, 'ms')}`);
  }
  for (const accel of accels) {
    const times: number[] = [];
    for (let i = 0; i < RUNS; i++) times.push(await startToFirstByte(accel));
    console.log(`${accel}: process start → first serial byte: ${summary(times, 'ms')} (target ≤ 150 ms)`);
    const idle: number[] = [];
    const sweep: number[] = [];
    for (let i = 0; i < Math.min(RUNS, 3); i++) {
      idle.push((await rssOverhead(accel, 'builtin:idle', 500)) / 1048576);
      sweep.push((await rssOverhead(accel, 'builtin:sweep', 200)) / 1048576);
    }
    console.log(`${accel}: RSS beyond guest RAM, -m 1G, idle guest (no guest page resident): ${summary(idle, 'MiB')} (target ≤ 80 MiB)`);
    console.log(`${accel}: RSS beyond guest RAM, -m 1G, sweep guest (all guest pages resident): ${summary(sweep, 'MiB')} (target ≤ 80 MiB)`);
  }
  if (kvm.ok) {
    const rates: number[] = [];
    for (let i = 0; i < 3; i++) rates.push(await measureIoExitRate());
    console.log(`kvm: IO-exit round trips: ${summary(rates.map((r) => r / 1000), 'k/s')}`);
  } else {
    console.log('kvm: IO-exit round trips: not measured (needs /dev/kvm)');
  }
}

const saveOutput = keepOutput(`start-${kvmAvailable().ok ? 'kvm' : 'sim'}`);
await main();
console.log(`\nWritten to ${saveOutput()}`);
