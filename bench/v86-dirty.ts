// Measures the v86 accelerator: boot time, save/load of the memory-less state, the
// dirty-log comparison for 128 MiB and 512 MiB, and pages dirtied per second by an idle
// Linux guest and by one running a write loop in tmpfs.
// Run: node dist/bench/v86-dirty.js [--runs N]   (needs scripts/setup-linux-guest.sh first)

import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createV86AcceleratorInstance, linuxGuestAvailable, linuxGuestDir } from '../src/v86/v86-accelerator.js';
import type { V86Accelerator } from '../src/v86/v86-accelerator.js';
import { ShadowDirtyLog } from '../src/v86/shadow-dirty-log.js';
import type { IoBus } from '../src/hypervisor/types.js';
import { PAGE_SIZE } from '../src/hypervisor/types.js';

const runsArg = process.argv.indexOf('--runs');
const RUNS = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 5;
const MIB = 1024 * 1024;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}
function range(xs: number[]): string {
  return `${median(xs).toFixed(1)} [${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)}]`;
}
function popcount(bitmap: Uint32Array): number {
  let n = 0;
  for (let w of bitmap) {
    while (w) { w &= w - 1; n++; }
  }
  return n;
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Comparison cost on plain memory of the given size with `dirtyPages` pages changed per round. */
function compareCost(size: number, dirtyPages: number): { cold: number; warm: number[] } {
  const ram = new Uint8Array(size);
  for (let i = 0; i < size; i += PAGE_SIZE) ram[i] = (i >>> 12) & 0xff; // touch every page
  const log = new ShadowDirtyLog(() => ram);
  log.start();
  const t0 = performance.now();
  log.sync();
  const cold = performance.now() - t0;
  const warm: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    for (let k = 0; k < dirtyPages; k++) { const at = ((k * 7919) % (size / PAGE_SIZE)) * PAGE_SIZE + 8; ram[at] = ram[at]! ^ 0xff; }
    const t = performance.now();
    log.sync();
    warm.push(performance.now() - t);
  }
  log.stop();
  return { cold, warm };
}

class Console {
  text = '';
  write(bytes: Uint8Array): void { this.text += Buffer.from(bytes).toString('latin1'); }
  async waitFor(pattern: RegExp, timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!pattern.test(this.text)) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${pattern}`);
      await sleep(50);
    }
  }
}

/** Event-loop delay while the guest runs (what QMP and the migration loop wait for), p50/p99/max in ms. */
async function loopDelay(seconds: number, during: () => Promise<void> = () => sleep(seconds * 1000)): Promise<string> {
  const h = monitorEventLoopDelay({ resolution: 5 });
  h.enable();
  await during();
  h.disable();
  const ms = (ns: number): string => (ns / 1e6).toFixed(1);
  return `event-loop delay p50 ${ms(h.percentile(50))} / p99 ${ms(h.percentile(99))} / max ${ms(h.max)} ms`;
}

async function dirtyRate(acc: V86Accelerator, seconds: number): Promise<{ pagesPerSecond: number; collects: number; collectShare: number; delay: string }> {
  let result = { pagesPerSecond: 0, collects: 0, collectShare: 0 };
  const delay = await loopDelay(seconds, async () => { result = await measureDirty(acc, seconds); });
  return { ...result, delay };
}

async function measureDirty(acc: V86Accelerator, seconds: number): Promise<{ pagesPerSecond: number; collects: number; collectShare: number }> {
  acc.dirtyLog.start();
  const t0 = performance.now();
  let pages = 0;
  for (let s = 0; s < seconds; s++) {
    await sleep(1000);
    pages += popcount(acc.dirtyLog.sync()[0]!);
  }
  const elapsed = performance.now() - t0;
  const stats = acc.dirtyLog.stats;
  acc.dirtyLog.stop();
  return { pagesPerSecond: (pages * 1000) / elapsed, collects: stats.collects, collectShare: stats.totalCollectMs / elapsed };
}

async function main(): Promise<void> {
  console.log(`v86 accelerator measurements (${RUNS} runs where repeated; median [min–max])`);
  for (const size of [128 * MIB, 512 * MIB]) {
    const idle = compareCost(size, 150);
    const busy = compareCost(size, 2500);
    console.log(`dirty-log sync, ${size / MIB} MiB: first ${idle.cold.toFixed(1)} ms; warm with 150 dirty pages ${range(idle.warm)} ms, with 2500 ${range(busy.warm)} ms`);
  }
  if (!linuxGuestAvailable()) {
    console.log(`no Linux guest in ${linuxGuestDir()}: run \`sudo sh scripts/setup-linux-guest.sh\` for the guest figures`);
    return;
  }
  const noIo: IoBus = { pioRead: () => 0xff, pioWrite: () => {}, mmioRead: () => 0, mmioWrite: () => {} };
  const t0 = performance.now();
  const acc = await createV86AcceleratorInstance({ memorySize: 128 * MIB, vcpus: 1, guest: { kind: 'idle' }, ioBus: noIo, incoming: false });
  const con = new Console();
  const input = acc.connectConsole(con);
  acc.resume();
  await con.waitFor(/heartbeat 1\b/, 240_000);
  console.log(`boot to the first heartbeat (128 MiB): ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  await con.waitFor(/heartbeat 4\b/, 30_000);

  const saves: number[] = [];
  const loads: number[] = [];
  let stateBytes = 0;
  const section = acc.stateSections[0]!;
  for (let r = 0; r < RUNS; r++) {
    await acc.pause();
    let t = performance.now();
    const value = section.save();
    saves.push(performance.now() - t);
    stateBytes = (value['state'] as Uint8Array).byteLength;
    t = performance.now();
    section.load(value);
    loads.push(performance.now() - t);
    acc.resume();
    await sleep(300);
  }
  console.log(`memory-less state: ${(stateBytes / 1024).toFixed(0)} KiB; save ${range(saves)} ms; load ${range(loads)} ms`);

  console.log(`idle guest, no dirty logging: ${await loopDelay(5)}`);
  const idle = await dirtyRate(acc, 5);
  console.log(`idle guest: ${idle.pagesPerSecond.toFixed(0)} pages/s dirtied; ${idle.collects} comparisons, ${(idle.collectShare * 100).toFixed(0)}% of the time comparing; ${idle.delay}`);
  // Random bytes over a 16 MiB tmpfs file, again and again: every write is a real change
  // (rewriting identical bytes is not one, so cat/cp loops would show almost nothing).
  input.input(new TextEncoder().encode('while :; do dd if=/dev/urandom of=/tmp/w bs=4096 count=4096 conv=notrunc 2>/dev/null; done &\n'));
  console.log(`write loop, no dirty logging: ${await loopDelay(5)}`);
  const busy = await dirtyRate(acc, 5);
  console.log(`write loop in tmpfs: ${busy.pagesPerSecond.toFixed(0)} pages/s dirtied; ${busy.collects} comparisons, ${(busy.collectShare * 100).toFixed(0)}% of the time comparing; ${busy.delay}`);
  input.input(new TextEncoder().encode('kill %1\n'));
  await acc.destroy();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
