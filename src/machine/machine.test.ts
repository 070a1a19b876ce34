// The Machine over the sim accelerator: run states as QEMU names them, stop/cont with
// their events, the switchover hooks a migration uses, and the serial console.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Machine } from './machine.js';
import { parseGuestSpec } from '../guests/spec.js';

const MiB = 1024 * 1024;

async function machine(t: import('node:test').TestContext, options: Partial<Parameters<typeof Machine.create>[0]> = {}): Promise<Machine> {
  const m = await Machine.create({ accel: 'sim', memorySize: 8 * MiB, guest: parseGuestSpec('builtin:sweep,rate=200000'), ...options });
  t.after(() => m.destroy());
  return m;
}

test('machine: starts running, or in prelaunch with -S, or in inmigrate as a destination', async (t) => {
  assert.equal((await machine(t)).runState, 'running');
  assert.equal((await machine(t, { startPaused: true })).runState, 'prelaunch');
  const dest = await machine(t, { incoming: true });
  assert.equal(dest.runState, 'inmigrate');
  assert.equal(dest.isRunning, false);
  assert.equal(dest.machineType, 'pc-i440fx-7.2');
  assert.equal(dest.memory[0]!.idstr, 'pc.ram');
});

test('machine: stop and cont change the run state, stop the guest, and emit STOP/RESUME', async (t) => {
  const m = await machine(t);
  const events: string[] = [];
  m.on('stop', () => events.push('stop'));
  m.on('resume', () => events.push('resume'));
  await m.stop();
  assert.equal(m.runState, 'paused');
  const ram = m.memory[0]!.bytes;
  const frozen = Buffer.from(ram.subarray(MiB, 2 * MiB));
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(frozen.equals(ram.subarray(MiB, 2 * MiB)), 'no guest write while paused');
  m.cont();
  assert.equal(m.runState, 'running');
  await m.stop();
  assert.deepEqual(events, ['stop', 'resume', 'stop']);
});

test('machine: stop and cont in inmigrate only set autostart, as QEMU does', async (t) => {
  const dest = await machine(t, { incoming: true });
  await dest.stop();
  assert.equal(dest.autostart, false);
  assert.equal(dest.runState, 'inmigrate');
  dest.startAfterIncoming();
  assert.equal(dest.runState, 'paused');
  dest.cont();
  assert.equal(dest.runState, 'running');
});

test('machine: the switchover stops the guest in finish-migrate; a failed one resumes it', async (t) => {
  const m = await machine(t);
  assert.equal(await m.pauseForMigration(), true);
  assert.equal(m.runState, 'finish-migrate');
  assert.throws(() => m.cont(), /switching over/);
  m.resumeAfterMigration(true);
  assert.equal(m.runState, 'running');
  await m.stop();
  assert.equal(await m.pauseForMigration(), false, 'a paused guest was not running');
  m.resumeAfterMigration(false);
  assert.equal(m.runState, 'paused');
  assert.throws(() => m.setRunState('inmigrate'), /Cannot change run state from paused to inmigrate/);
});

test('machine: the guest\'s progress lines come out of the serial console; -serial none has no UART', async (t) => {
  let text = '';
  const m = await machine(t, { guest: parseGuestSpec('builtin:sweep,to=2M,rate=200000'), console: { write: (bytes) => { text += Buffer.from(bytes).toString(); } } });
  const deadline = Date.now() + 10_000;
  while (!/pass \d+/.test(text) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.match(text, /pass \d+/);
  assert.ok(m.stateSections.some((s) => s.idstr === 'serial'), 'the UART state migrates');
  const bare = await machine(t);
  assert.equal(bare.stateSections.some((s) => s.idstr === 'serial'), false);
});
