// A whole migration between two fake VMs in one process: RAM equal on both sides,
// device state installed, events in QEMU's order, run states where QEMU leaves them.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PAGE_SIZE } from '../src/hypervisor/types.js';
import type { VmStateDescription, VmStateSubsection } from '../src/migration/vmstate-types.js';
import { digest, makePair, statuses, waitFor } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;

test('a dirtying guest migrates: RAM digest equal, sections loaded, events in order', async (t) => {
  const { src, dst } = makePair(16 * MiB);
  src.vm.fillPages(0, 1024); // 4 MiB of data, 12 MiB of zeros
  src.vm.cpu.state = { rip: 0xffff_fff0n, flags: 0x202, regs: new Uint8Array(16).fill(7), halted: true };
  src.vm.serial.state = { ier: 3, lcr: 0x83, divider: 12 };
  src.vm.startWorkload(20, 1);
  t.after(() => src.vm.stopWorkload());
  for (const side of [src, dst]) side.migration.setCapabilities([{ capability: 'events', state: true }]);
  src.migration.setParameters({ 'max-bandwidth': 0 });

  const { address } = await dst.migration.migrateIncoming('memory:');
  assert.equal(address, 'memory:b');
  src.migration.migrate('memory:');
  assert.equal(src.migration.status, 'setup', 'migrate returns at once, in setup');
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  src.vm.stopWorkload();

  assert.equal(src.migration.status, 'completed', JSON.stringify(src.migration.queryMigrate()));
  assert.equal(dst.migration.incomingStatus, 'completed', dst.migration.incomingError);
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
  assert.deepEqual(dst.vm.cpu.state, src.vm.cpu.state);
  assert.deepEqual(dst.vm.serial.state, src.vm.serial.state);
  assert.equal(dst.vm.cpu.loads, 1);

  assert.equal(src.vm.runState, 'postmigrate');
  assert.equal(dst.vm.runState, 'running');
  assert.equal(src.vm.dirtyLog.active, false);

  assert.deepEqual(statuses(src.events), ['setup', 'active', 'completed']);
  assert.deepEqual(statuses(dst.events), ['setup', 'active', 'completed']);
  const passes = src.events.filter((e) => e.event === 'MIGRATION_PASS').map((e) => e.data['pass']);
  assert.ok(passes.length >= 2, `passes ${JSON.stringify(passes)}`);
  assert.deepEqual(passes, passes.map((_, i) => i + 1), 'pass numbers count up from 1');
  const firstPass = src.events.findIndex((e) => e.event === 'MIGRATION_PASS');
  const completed = src.events.findIndex((e) => e.data['status'] === 'completed');
  assert.ok(firstPass < completed);

  const info = src.migration.queryMigrate();
  assert.equal(info.status, 'completed');
  assert.ok(info.ram);
  assert.equal(info.ram.total, 16 * MiB);
  assert.equal(info.ram.remaining, 0);
  assert.ok(info.ram.normal >= 1024);
  assert.ok(info.ram.duplicate >= 3072);
  assert.equal(info.ram['page-size'], PAGE_SIZE);
  assert.ok(info.ram['dirty-sync-count'] >= 2);
  assert.equal(info.ram['precopy-bytes'] + info.ram['downtime-bytes'], info.ram.transferred);
  assert.ok(typeof info.downtime === 'number' && info.downtime >= 0);
  assert.ok(typeof info['total-time'] === 'number' && info['total-time'] >= info.downtime);
  assert.equal(info['expected-downtime'], undefined, 'expected-downtime is for an active migration');
  assert.match(src.migration.infoMigrateText(), /^Migration status: completed$/m);
  assert.deepEqual(dst.migration.queryMigrate(), { status: 'completed' });
});

test('an idle 64 MiB guest moves as zero pages: counted as duplicate, a few MB on the wire', async () => {
  const size = 64 * MiB;
  const { src, dst } = makePair(size);
  src.vm.fillPages(10, 3);
  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  assert.equal(src.migration.status, 'completed');
  const info = src.migration.queryMigrate();
  assert.ok(info.ram);
  assert.equal(info.ram.duplicate, size / PAGE_SIZE - 3);
  assert.equal(info.ram.normal, 3);
  assert.ok(info.ram.transferred < 1 * MiB, `${info.ram.transferred} bytes`);
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
  assert.deepEqual(src.events, [], 'without the events capability, no MIGRATION or MIGRATION_PASS events');
  assert.deepEqual(dst.events, []);
});

test('a paused source gives a paused destination; -S keeps a destination paused', async () => {
  {
    const { src, dst } = makePair(1 * MiB);
    src.vm.stop();
    await dst.migration.migrateIncoming('memory:');
    src.migration.migrate('memory:');
    await src.migration.whenSettled();
    await dst.migration.whenIncomingSettled();
    assert.equal(src.migration.status, 'completed');
    assert.equal(dst.vm.runState, 'paused');
    assert.ok(!dst.vm.runStates.includes('running'));
  }
  {
    const { src, dst } = makePair(1 * MiB, { destination: { startPaused: true } });
    await dst.migration.migrateIncoming('memory:');
    src.migration.migrate('memory:');
    await src.migration.whenSettled();
    await dst.migration.whenIncomingSettled();
    assert.equal(dst.vm.runState, 'paused');
  }
});

test('a stop during the migration is honoured and the migration then completes', async (t) => {
  const { src, dst } = makePair(8 * MiB);
  src.vm.fillPages(0, 2048);
  src.vm.startSyncWorkload(50);
  t.after(() => src.vm.stopWorkload());
  src.migration.setParameters({ 'downtime-limit': 0, 'max-bandwidth': 0 }); // cannot converge while it runs
  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  await waitFor('3 dirty syncs', () => (src.migration.queryMigrate().ram?.['dirty-sync-count'] ?? 0) >= 3);
  assert.equal(src.migration.status, 'active', 'a guest that keeps dirtying does not converge with downtime-limit 0');
  src.vm.stop();
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  assert.equal(src.migration.status, 'completed');
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
  assert.equal(dst.vm.runState, 'paused', 'the source was paused, so is the destination');
});

test('a second migrate while one runs is refused with QEMU\'s words; so is migrate on a destination', async () => {
  const { src, dst } = makePair(1 * MiB);
  await dst.migration.migrateIncoming('memory:');
  assert.throws(() => dst.migration.migrate('memory:'), /Guest is waiting for an incoming migration/);
  src.migration.migrate('memory:');
  assert.throws(() => src.migration.migrate('memory:'), /There's a migration process in progress/);
  assert.throws(() => src.migration.setCapabilities([{ capability: 'events', state: true }]), /There's a migration process in progress/);
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  assert.equal(src.migration.status, 'completed');
});

test('the device-state encoders are warmed at setup on samples: no state is read while the guest runs', async () => {
  const { src, dst } = makePair(4 * MiB);
  src.vm.startWorkload(20, 1);
  src.migration.setParameters({ 'max-bandwidth': 0 });
  // Like KVM's vCPU state, which cannot be read from a running vCPU.
  const readWhile: string[] = [];
  // A subsection's `needed` runs wherever the description is encoded: the warm-up too.
  const encodedWhile: string[] = [];
  for (const section of src.vm.stateSections) {
    const save = section.save.bind(section);
    section.save = () => {
      readWhile.push(`${section.idstr} ${src.vm.runState}`);
      return save();
    };
    const probe: VmStateSubsection = {
      description: { name: `${section.idstr}/probe`, version: 1, minimumVersion: 1, fields: [] },
      key: 'probe',
      needed: () => {
        encodedWhile.push(`${section.idstr} ${src.vm.runState}`);
        return false;
      },
    };
    (section as { description: VmStateDescription }).description = { ...section.description, subsections: [...(section.description.subsections ?? []), probe] };
  }
  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  src.vm.stopWorkload();
  assert.equal(src.migration.status, 'completed', src.migration.queryMigrate()['error-desc']);
  assert.deepEqual(readWhile, ['fake-cpu finish-migrate', 'fake-serial finish-migrate'], 'each section read once, with the guest stopped');
  assert.deepEqual(encodedWhile, ['fake-cpu running', 'fake-serial running', 'fake-cpu finish-migrate', 'fake-serial finish-migrate'], 'encoded on a sample at setup, then for real');
});
