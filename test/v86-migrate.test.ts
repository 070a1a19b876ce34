// The v86 guest moved by Ferry's own migration engine (pre-copy RAM through the dirty
// log, then the v86 state section) over an in-memory channel pair, within one process:
// the heartbeat goes on from its number on the destination and tmpfs content survives.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate } from 'node:timers';
import { createV86AcceleratorInstance, linuxGuestAvailable, linuxGuestDir } from '../src/v86/v86-accelerator.js';
import type { V86Accelerator } from '../src/v86/v86-accelerator.js';
import type { AcceleratorConfig, ConsoleSink, IoBus } from '../src/hypervisor/types.js';
import type { RunState } from '../src/machine/run-state.js';
import type { MigrationVm } from '../src/migration/vm.js';
import { Migration } from '../src/migration/migration.js';
import { createMemoryChannelPair } from '../src/stream/memory-channel.js';
import { listenerFor } from './migration-engine-helpers.js';

const MEMORY = 128 * 1024 * 1024;
const skip = linuxGuestAvailable() ? false : `no Linux guest in ${linuxGuestDir()}: run \`sudo sh scripts/setup-linux-guest.sh\``;
const noIo: IoBus = { pioRead: () => 0xff, pioWrite: () => {}, mmioRead: () => 0, mmioWrite: () => {} };

function config(incoming: boolean): AcceleratorConfig {
  return { memorySize: MEMORY, vcpus: 1, guest: { kind: 'idle' }, ioBus: noIo, incoming };
}

/** The least a Machine does for the migration engine, around an accelerator. */
class AcceleratorVm implements MigrationVm {
  readonly machineType = 'ferry-v86';
  runState: RunState;
  constructor(readonly accel: V86Accelerator, incoming: boolean) {
    this.runState = incoming ? 'inmigrate' : 'running';
  }
  get memory() { return this.accel.memory; }
  get dirtyLog() { return this.accel.dirtyLog; }
  get stateSections() { return this.accel.stateSections; }
  setRunState(state: RunState): void { this.runState = state; }
  async pauseForMigration(): Promise<boolean> {
    const was = this.accel.running;
    await this.accel.pause();
    this.runState = 'finish-migrate';
    return was;
  }
  resumeAfterMigration(wasRunning: boolean): void {
    if (wasRunning) this.accel.resume();
    this.runState = wasRunning ? 'running' : 'paused';
  }
  startAfterIncoming(): void {
    this.accel.resume();
    this.runState = 'running';
  }
}

class ConsoleText implements ConsoleSink {
  text = '';
  write(bytes: Uint8Array): void { this.text += Buffer.from(bytes).toString('latin1'); }
  async waitFor(pattern: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = pattern.exec(this.text.slice(from));
      if (m) return m;
      if (Date.now() > end) throw new Error(`console did not show ${pattern} in ${timeoutMs} ms; last: ${JSON.stringify(this.text.slice(-300))}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

const live: V86Accelerator[] = [];
after(async () => { for (const a of live) await a.destroy(); });

test('pre-copy migration of the running Linux guest through the engine', { skip, timeout: 300_000 }, async () => {
  const src = await createV86AcceleratorInstance(config(false));
  live.push(src);
  const srcCon = new ConsoleText();
  const srcIn = src.connectConsole(srcCon);
  src.resume();
  await srcCon.waitFor(/heartbeat 2\b/, 240_000);
  srcIn.input(new TextEncoder().encode('echo moved-$((20+1)) > /tmp/x\n'));
  await srcCon.waitFor(/heartbeat 3\b/, 30_000);

  const dst = await createV86AcceleratorInstance(config(true));
  live.push(dst);
  const dstCon = new ConsoleText();
  const dstIn = dst.connectConsole(dstCon);

  const [a, b] = createMemoryChannelPair();
  const common = { now: () => performance.now(), emit: () => {}, schedule: (fn: () => void) => setImmediate(fn) };
  const srcVm = new AcceleratorVm(src, false);
  const dstVm = new AcceleratorVm(dst, true);
  const out = new Migration({ ...common, vm: srcVm, connect: async () => a, listen: () => Promise.reject(new Error('source does not listen')) });
  const inc = new Migration({
    ...common, vm: dstVm, connect: () => Promise.reject(new Error('destination does not connect')),
    listen: async () => listenerFor(b),
  });
  await inc.migrateIncoming('tcp:0:0');
  const t0 = performance.now();
  const bufferAtStart = src.memory[0]!.bytes.buffer;
  out.migrate('tcp:127.0.0.1:1');
  await out.whenSettled();
  await inc.whenIncomingSettled();
  const info = out.queryMigrate() as unknown as Record<string, unknown>;
  console.log(`# engine migration: ${(performance.now() - t0).toFixed(0)} ms, ${JSON.stringify({ status: info['status'], downtime: info['downtime'], ram: info['ram'] })}`);
  console.log(`# wasm memory grew during the migration: ${src.memory[0]!.bytes.buffer !== bufferAtStart}`);
  assert.equal(out.status, 'completed', `source status ${out.status}`);
  assert.equal(inc.incomingStatus, 'completed', `destination status ${inc.incomingStatus}: ${inc.incomingError ?? ''}`);
  assert.equal(src.running, false);
  assert.equal(dstVm.runState, 'running');

  const beats = [...srcCon.text.matchAll(/heartbeat (\d+)/g)];
  const last = Number(beats[beats.length - 1]![1]);
  const next = await dstCon.waitFor(/heartbeat (\d+)/, 30_000);
  assert.equal(Number(next[1]), last + 1, `destination's first heartbeat ${next[1]} after the source's ${last}`);
  const from = dstCon.text.length;
  dstIn.input(new TextEncoder().encode('cat /tmp/x\n'));
  await dstCon.waitFor(/moved-21/, 30_000, from);
  await dstCon.waitFor(new RegExp(`heartbeat ${last + 3}\\b`), 30_000);
  await out.close();
  await inc.close();
});
