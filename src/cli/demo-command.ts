// `ferry demo`: the one command a newcomer runs after installing. It starts a source and
// a destination Ferry, live-migrates the running guest between them over tcp with the
// progress bar, and shows that the guest kept running on the other side.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AccelKind } from '../hypervisor/types.js';
import { formatBytes } from '../format.js';
import { FerryProcess } from './ferry-process.js';
import { destinationOutcome, formatSummary, runMigration } from './migrate-command.js';
import { forgetEvents, pausesWithoutSwitchover } from '../report/guest-pause.js';

export interface DemoOptions {
  accel?: AccelKind;
  memory?: number;
}

interface GuestInfo { pass?: number; accel?: string }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The shortest wait for the pass counter to move on the destination. */
const PASS_WAIT_MIN_MS = 1500;
/** Bytes a guest sweeps per millisecond, about (250 000 pages/s): how long its passes take. */
const PASS_BYTES_PER_MS = 1_000_000;
const say = (text: string) => process.stdout.write(text + '\n');

export async function demoCommand(opts: DemoOptions): Promise<number> {
  if (opts.accel === 'v86') {
    const { linuxDemo } = await import('./demo-linux.js');
    return linuxDemo(opts);
  }
  const dir = mkdtempSync(join(tmpdir(), 'ferry-demo-'));
  const memory = opts.memory ?? 256 * 1024 * 1024;
  const common = ['-m', `${memory / 1048576}M`, ...(opts.accel ? ['--accel', opts.accel] : [])];
  let source: FerryProcess | undefined;
  let dest: FerryProcess | undefined;
  try {
    say(`Starting the source VM (${formatBytes(memory)}, built-in guest sweeping its RAM)…`);
    source = await FerryProcess.start({ dir, name: 'source', args: common });
    const accel = (await source.execute<GuestInfo>('x-ferry-query-guest')).accel ?? '?';
    if (accel === 'sim') say('  (sim accelerator: /dev/kvm is not usable here, so a workload model writes guest RAM in place of guest code)');
    say('Starting the destination VM, waiting for the incoming migration…');
    dest = await FerryProcess.start({ dir, name: 'destination', args: [...common, '--incoming', 'tcp:127.0.0.1:0'] });
    const address = await dest.incomingAddress();
    await sleep(1000);
    const before = (await source.execute<GuestInfo>('x-ferry-query-guest')).pass ?? 0;
    say(`The guest is at pass ${before} on the source. Migrating it to ${address}…`);

    forgetEvents(source.qmp, dest.qmp);
    const outcome = await runMigration(source.qmp, { qmp: source.qmpPath, uri: address, maxBandwidth: 0 });
    // The guest's pause as its users saw it, beside the downtime QEMU's way of counting gives.
    say(formatSummary(outcome, await destinationOutcome(source.qmp, dest.qmp, outcome.status), pausesWithoutSwitchover(source.qmp)));
    if (outcome.status !== 'completed') return 1;

    const status = await dest.execute<{ status: string }>('query-status');
    const first = (await dest.execute<GuestInfo>('x-ferry-query-guest')).pass ?? 0;
    // Wait for the counter to move: one pass sweeps all RAM, which takes the guest about a
    // second per GiB (MACHINE.md's ~250 000 pages/s), so a large guest needs a while.
    const waitMs = Math.max(PASS_WAIT_MIN_MS, (3 * memory) / PASS_BYTES_PER_MS);
    const started = performance.now();
    let second = first;
    while (second <= first && performance.now() - started < waitMs) {
      await sleep(100);
      second = (await dest.execute<GuestInfo>('x-ferry-query-guest')).pass ?? 0;
    }
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const sourceStatus = await source.execute<{ status: string }>('query-status');
    say('');
    say(`Source:      ${sourceStatus.status} (its guest stopped for good at the switchover)`);
    say(second > first
      ? `Destination: ${status.status}; the guest's pass counter went ${first} → ${second} in ${seconds} s — it kept running from where it stopped.`
      : `Destination: ${status.status}; the guest's pass counter stayed at ${first} for ${seconds} s — it did not run on.`);
    const tail = readFileSync(dest.consolePath, 'utf8').trim().split('\n').slice(-3).join(' | ');
    if (tail) say(`Destination console: ${tail}`);
    return second > first ? 0 : 1;
  } finally {
    await source?.quit();
    await dest?.quit();
    rmSync(dir, { recursive: true, force: true });
  }
}
