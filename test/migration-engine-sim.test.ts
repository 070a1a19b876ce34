// The engine against real Machines on the sim accelerator (no KVM needed): a sweeping
// workload keeps dirtying RAM in a worker while it migrates; afterwards the destination's
// per-page counters are consistent and it carries on sweeping.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate } from 'node:timers';
import { setTimeout as sleep } from 'node:timers/promises';
import { Machine } from '../src/machine/machine.js';
import { parseGuestSpec } from '../src/guests/spec.js';
import { checkSweepCounters, readGuestParams } from '../src/guests/params.js';
import { Migration } from '../src/migration/migration.js';
import type { MigrationVm } from '../src/migration/vm.js';
import { createMemoryChannelPair } from '../src/stream/memory-channel.js';
import { listenerFor } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;

function prefault(m: Machine): void {
  const bytes = m.memory[0]!.bytes;
  for (let i = 4095; i < bytes.length; i += 4096) bytes[i] = bytes[i]!;
}

/** Two Migrations over Machines joined by an in-memory channel pair, max-bandwidth unlimited. */
function migrations(src: MigrationVm, dst: MigrationVm, emit: (event: string, data: unknown) => void = () => {}): { out: Migration; inc: Migration } {
  const [a, b] = createMemoryChannelPair();
  const common = { now: () => performance.now(), schedule: (fn: () => void) => setImmediate(fn) };
  const out = new Migration({ vm: src, connect: async () => a, listen: () => Promise.reject(new Error('unused')), emit, ...common });
  const inc = new Migration({ vm: dst, connect: () => Promise.reject(new Error('unused')), listen: async () => listenerFor(b), emit: () => {}, ...common });
  out.setParameters({ 'max-bandwidth': 0 });
  return { out, inc };
}

/** Listen, migrate, and wait until both sides settled; both must have completed. */
async function migrateToEnd(out: Migration, inc: Migration): Promise<void> {
  await inc.migrateIncoming('memory:');
  out.migrate('memory:');
  await out.whenSettled();
  await inc.whenIncomingSettled();
  assert.equal(out.status, 'completed', out.queryMigrate()['error-desc']);
  assert.equal(inc.incomingStatus, 'completed', inc.incomingError);
}

test('a sweeping sim guest migrates between two Machines and keeps sweeping on the destination', async (t) => {
  const guest = parseGuestSpec('builtin:sweep,to=12M,rate=50000');
  const src = await Machine.create({ accel: 'sim', memorySize: 16 * MiB, guest });
  const dst = await Machine.create({ accel: 'sim', memorySize: 16 * MiB, guest, incoming: true });
  t.after(async () => {
    await src.destroy();
    await dst.destroy();
  });
  prefault(dst);
  // The Machine is the MigrationVm: this assignment is the compile-time half of the test.
  const srcVm: MigrationVm = src;
  const dstVm: MigrationVm = dst;
  const events: string[] = [];
  const { out, inc } = migrations(srcVm, dstVm, (e, d) => events.push(`${e} ${JSON.stringify(d)}`));
  out.setCapabilities([{ capability: 'events', state: true }]);

  await sleep(100);
  const before = readGuestParams(src.memory[0]!.bytes);
  assert.ok(before && before.pass >= 0);
  await migrateToEnd(out, inc);
  assert.equal(src.runState, 'postmigrate');
  assert.equal(dst.runState, 'running');
  assert.ok(events.includes('MIGRATION {"status":"completed"}'));

  // The source stopped for good; its RAM is what the destination started from.
  const moved = checkSweepCounters(src.memory[0]!.bytes);
  assert.ok(moved.ok, moved.problem);
  await sleep(200);
  await dst.stop();
  const after = checkSweepCounters(dst.memory[0]!.bytes);
  assert.ok(after.ok, after.problem);
  const progressed = readGuestParams(dst.memory[0]!.bytes)!;
  const stepsSrc = Number(src.stateSections[0]!.save()['steps'] ?? 0);
  const stepsDst = Number(dst.stateSections[0]!.save()['steps'] ?? 0);
  assert.ok(stepsDst > stepsSrc, `the destination kept sweeping: ${stepsSrc} → ${stepsDst} steps (pass ${progressed.pass})`);
});

test('a 4 GiB sim guest sweeping its top 8 MiB migrates: block sizes and offsets past 2^32 bytes', async (t) => {
  // 4 GiB of address space each (nothing is backed but what the sweep writes); the page
  // arithmetic must not wrap at 2^32 bytes, as 32-bit shifts of sizes and offsets would.
  const guest = parseGuestSpec('builtin:sweep,from=4088M,to=4096M,rate=100000');
  const src = await Machine.create({ accel: 'sim', memorySize: 4096 * MiB, guest });
  // -S: it stays paused once loaded, so its RAM can be compared with the source's.
  const dst = await Machine.create({ accel: 'sim', memorySize: 4096 * MiB, guest, incoming: true, startPaused: true });
  t.after(async () => {
    await src.destroy();
    await dst.destroy();
  });
  const { out, inc } = migrations(src, dst);
  await sleep(200);
  assert.ok(readGuestParams(src.memory[0]!.bytes)!.pass >= 1, 'the guest swept its top 8 MiB at least once');
  await migrateToEnd(out, inc);
  const ram = out.queryMigrate()['ram'] as { total: number; normal: number };
  assert.equal(ram.total, 4096 * MiB);
  assert.ok(ram.normal >= 2048, `the swept pages went whole (${ram.normal})`);
  // What the source stopped with is what the destination has, up to the last page.
  const top = 4088 * MiB;
  assert.ok(Buffer.from(src.memory[0]!.bytes.subarray(top)).equals(Buffer.from(dst.memory[0]!.bytes.subarray(top))), 'the top 8 MiB differ');
  assert.equal(dst.runState, 'paused');
  dst.cont();
  await sleep(100);
  await dst.stop();
  const after = checkSweepCounters(dst.memory[0]!.bytes);
  assert.ok(after.ok, after.problem);
  assert.ok(after.pass > readGuestParams(src.memory[0]!.bytes)!.pass, 'the destination swept on');
});
