// The `pause-before-switchover` capability, as QEMU 7.2: once the vCPUs are stopped the
// source waits in `pre-switchover` for migrate-continue, then sends the rest in `device`;
// a cancel while it waits runs the guest again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { digest, makePair, statuses, waitFor } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;
const CAPS = [{ capability: 'pause-before-switchover', state: true }, { capability: 'events', state: true }];

function pausedPair() {
  const { src, dst } = makePair(8 * MiB);
  src.vm.fillPages(0, 1024);
  src.migration.setCapabilities(CAPS);
  src.migration.setParameters({ 'max-bandwidth': 0 });
  return { src, dst };
}

test('pause-before-switchover: the source waits in pre-switchover with the vCPUs stopped until migrate-continue, then completes', async () => {
  const { src, dst } = pausedPair();
  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  await waitFor('pre-switchover', () => src.migration.status === 'pre-switchover');
  assert.equal(src.vm.runState, 'finish-migrate');
  const sentAtPause = src.migration.queryMigrate().ram?.transferred;
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(src.migration.status, 'pre-switchover', 'it waits');
  assert.equal(src.migration.queryMigrate().ram?.transferred, sentAtPause, 'nothing is sent meanwhile');
  assert.throws(() => src.migration.continue('device'), /Migration not in expected state: pre-switchover/);
  src.migration.continue('pre-switchover');
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  assert.equal(src.migration.status, 'completed', src.migration.queryMigrate()['error-desc']);
  assert.deepEqual(statuses(src.events), ['setup', 'active', 'pre-switchover', 'device', 'completed']);
  assert.ok((src.migration.queryMigrate().downtime ?? 0) >= 100, 'the pause counts as downtime, as in QEMU');
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
  assert.throws(() => src.migration.continue('pre-switchover'), /Migration not in expected state: completed/);
});

test('pause-before-switchover: migrate_cancel while paused cancels, and the source guest runs again', async () => {
  const { src, dst } = pausedPair();
  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  await waitFor('pre-switchover', () => src.migration.status === 'pre-switchover');
  src.migration.cancel();
  await src.migration.whenSettled();
  assert.equal(src.migration.status, 'cancelled');
  assert.equal(src.vm.runState, 'running');
  assert.deepEqual(statuses(src.events), ['setup', 'active', 'pre-switchover', 'cancelling', 'cancelled']);
  await dst.migration.whenIncomingSettled();
  assert.equal(dst.migration.incomingStatus, 'failed');
  assert.ok(!dst.vm.runStates.includes('running'));
});
