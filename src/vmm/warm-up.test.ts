// The migration warm-up: scratch migrations through the real engine, in this process,
// that leave the VM beside them alone.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseGuestSpec } from '../guests/spec.js';
import { QmpClient } from '../qmp/client.js';
import { Vmm } from './vmm.js';
import { warmUpMigration } from './warm-up.js';
import type { StateSection } from '../hypervisor/types.js';
import type { VmStateValue } from '../migration/vmstate-types.js';
import { vmstateWarmUp } from '../migration/vmstate.js';
import { CPU_STATE_DESCRIPTION } from '../hypervisor/kvm-cpu-state.js';
import { SIM_CPU_STATE_DESCRIPTION } from '../sim/cpu-state.js';
import { SERIAL_STATE_DESCRIPTION } from '../devices/serial/serial-state.js';
import { V86_STATE_DESCRIPTION } from '../v86/v86-accelerator.js';

const MiB = 1024 * 1024;

test('warm-up: scratch migrations run through the engine and leave the VM, its migration state and its QMP alone', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-warm-up-test-'));
  const path = join(dir, 'qmp.sock');
  const vmm = await Vmm.create({ accel: 'sim', memorySize: 8 * MiB, guest: parseGuestSpec('builtin:sweep,to=4M,rate=200000'), qmp: [`unix:${path}`] });
  const qmp = await QmpClient.connect(path);
  t.after(async () => {
    qmp.close();
    await vmm.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  await qmp.execute('stop');
  const before = await qmp.execute<{ sha256: string }>('x-ferry-ram-digest');
  const stateBefore = await qmp.execute('x-ferry-query-state');
  const events: string[] = [];
  qmp.on('event', (event: { event: string }) => events.push(event.event));

  // With the machine's own sections, as ferry run passes them: stand-ins go through the stream.
  const outcome = await warmUpMigration(vmm.machine.machineType, { sections: vmm.machine.stateSections });
  assert.ok(!(outcome instanceof Error), `the warm-up failed: ${outcome instanceof Error ? outcome.message : ''}`);
  // Over tcp and a unix socket, each with large and with small buffers.
  assert.equal(outcome.rounds, 4);
  // Each round sent its 16 MiB of scratch RAM (three pages in four hold data) and more.
  assert.ok(outcome.bytes > 4 * 12 * MiB, `${outcome.bytes} bytes moved`);
  // The multifd capability's rounds, when asked for: over tcp and a unix socket, two channels each.
  const multifd = await warmUpMigration(vmm.machine.machineType, { sections: vmm.machine.stateSections, multifd: true });
  assert.ok(!(multifd instanceof Error), `the multifd warm-up failed: ${multifd instanceof Error ? multifd.message : ''}`);
  assert.equal(multifd.rounds, 2);
  assert.ok(multifd.bytes > 2 * 12 * MiB, `${multifd.bytes} bytes moved`);

  assert.deepEqual(await qmp.execute('x-ferry-ram-digest'), before);
  assert.deepEqual(await qmp.execute('x-ferry-query-state'), stateBefore);
  assert.equal(vmm.machine.runState, 'paused');
  assert.deepEqual(await qmp.execute('query-migrate'), {});
  await qmp.execute('query-status'); // a round trip: any event would have arrived by now
  assert.deepEqual(events.filter((e) => e.startsWith('MIGRATION')), []);
});

test('warm-up: a round is not begun once keepGoing says a real migration has started', async () => {
  let asked = 0;
  const outcome = await warmUpMigration('pc-i440fx-7.2', { keepGoing: () => ++asked === 1 });
  assert.ok(!(outcome instanceof Error));
  assert.equal(outcome.rounds, 1);
  assert.equal(asked, 2);
});

test('warm-up: the machine\'s state sections go through every round as stand-ins; the sections themselves are only checked', async () => {
  const checked: VmStateValue[] = [];
  const device: StateSection = {
    idstr: 'test-device',
    instanceId: 0,
    description: {
      name: 'test-device', version: 2, minimumVersion: 1,
      fields: [{ name: 'regs', type: 'uint32', count: 4 }, { name: 'clock', type: 'uint64' }, { name: 'fifo', type: 'buffer', size: 16 }],
    },
    save: () => assert.fail('the real save() ran: the guest may be running'),
    load: () => assert.fail('the real load() ran: the warm-up changed the machine'),
    check: (value) => {
      checked.push(value);
      throw new Error('a device may refuse a sample\'s zeros; the round goes on');
    },
  };
  // A description whose sample cannot be encoded is left out rather than failing the rounds.
  const odd: StateSection = {
    idstr: 'odd', instanceId: 0,
    description: { name: 'odd', version: 1, minimumVersion: 1, fields: [{ name: 'inner', type: 'struct' }] },
    save: () => assert.fail('odd save'),
    load: () => assert.fail('odd load'),
  };
  const outcome = await warmUpMigration('pc-i440fx-7.2', { sections: [device, odd] });
  assert.ok(!(outcome instanceof Error), `the warm-up failed: ${outcome instanceof Error ? outcome.message : ''}`);
  assert.equal(outcome.rounds, 4);
  // Each round's destination decoded the stand-in's state and had the device check it.
  assert.equal(checked.length, 4);
  for (const value of checked) {
    assert.deepEqual(value, { regs: [0, 0, 0, 0], clock: 0n, fifo: new Uint8Array(16) });
  }
});

test('warm-up: every state section a machine has gets its stand-in (its sample encodes)', () => {
  // A description whose sample did not encode would be left out of the warm-up in silence.
  for (const description of [CPU_STATE_DESCRIPTION, SIM_CPU_STATE_DESCRIPTION, SERIAL_STATE_DESCRIPTION, V86_STATE_DESCRIPTION]) {
    assert.equal(vmstateWarmUp(description), true, description.name);
  }
});
