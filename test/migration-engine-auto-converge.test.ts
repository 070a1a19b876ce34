// The auto-converge capability: a guest that dirties RAM faster than max-bandwidth can send
// it never converges on its own; with auto-converge the vCPUs are throttled, step by step,
// until it does — and run freely again once the migration is over, whatever its outcome.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { digest, makePair, makeSide, waitFor } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;

/**
 * A pair whose source guest dirties 64 pages a millisecond (~256 MB/s) over `mib` MiB,
 * with auto-converge on and `parameters` set, migrating once both sides are set up.
 */
async function throttledMigration(t: TestContext, mib: number, parameters: Record<string, number>): Promise<ReturnType<typeof makePair>> {
  const pair = makePair(mib * MiB);
  const { src, dst } = pair;
  src.vm.fillPages(0, mib * 256);
  src.vm.startWorkload(64, 1);
  t.after(() => src.vm.stopWorkload());
  src.migration.setCapabilities([{ capability: 'auto-converge', state: true }]);
  src.migration.setParameters(parameters);
  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  return pair;
}

test('auto-converge throttles a guest that outruns max-bandwidth until the migration converges, then lifts the throttle', async (t) => {
  // ~256 MB/s of dirtying against a 16 MiB/s link.
  const { src, dst } = await throttledMigration(t, 16, { 'max-bandwidth': 16 * MiB, 'cpu-throttle-initial': 50, 'cpu-throttle-increment': 49 });
  // Two periods of a second over the threshold start the throttle at 50 %.
  await waitFor('the throttle to start', () => src.vm.throttle > 0, 15_000);
  const mid = src.migration.queryMigrate();
  if (mid.status === 'active') {
    assert.equal(mid['cpu-throttle-percentage'], src.vm.throttle);
    assert.match(src.migration.infoMigrateText(), new RegExp(`^cpu throttle percentage: ${src.vm.throttle}$`, 'm'));
  }
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  src.vm.stopWorkload();

  const info = src.migration.queryMigrate();
  assert.equal(info.status, 'completed', JSON.stringify(info));
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
  // 50, then 99 (50 + 49), and off (0) when it completed; never lowered on the way up.
  assert.equal(src.vm.throttleHistory[0], 50);
  assert.equal(src.vm.throttleHistory.at(-1), 0);
  const rising = src.vm.throttleHistory.slice(0, -1);
  assert.deepEqual(rising, [...rising].sort((a, b) => a - b), `throttle steps ${src.vm.throttleHistory.join(', ')}`);
  assert.ok(rising.every((p) => p === 50 || p === 99), `throttle steps ${src.vm.throttleHistory.join(', ')}`);
  assert.equal(src.vm.throttle, 0);
  assert.equal(info['cpu-throttle-percentage'], undefined, 'not reported once the throttle is off');
});

test('a cancelled migration leaves the source guest running unthrottled', async (t) => {
  // At most 20 %: not enough for this guest to converge, so the migration stays active.
  const { src, dst } = await throttledMigration(t, 8, { 'max-bandwidth': 8 * MiB, 'cpu-throttle-initial': 20, 'max-cpu-throttle': 20 });
  await waitFor('the throttle to start', () => src.vm.throttle === 20, 15_000);
  assert.equal(src.migration.queryMigrate()['cpu-throttle-percentage'], 20);
  src.migration.cancel();
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  assert.equal(src.migration.status, 'cancelled');
  assert.equal(src.vm.runState, 'running');
  assert.equal(src.vm.throttle, 0);
  assert.deepEqual(src.vm.throttleHistory, [20, 0]);
});

test('without auto-converge the guest is never throttled', async (t) => {
  const { src, dst } = makePair(4 * MiB);
  src.vm.fillPages(0, 1024);
  src.vm.startWorkload(64, 1);
  t.after(() => src.vm.stopWorkload());
  src.migration.setParameters({ 'max-bandwidth': 8 * MiB });
  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  // Two periods, or the end (a machine busy enough to starve the workload's timer lets it converge).
  await waitFor('two periods', () => src.migration.status !== 'active' || (src.migration.queryMigrate()['total-time'] ?? 0) > 2200, 10_000);
  assert.deepEqual(src.vm.throttleHistory, []);
  assert.equal(src.migration.queryMigrate()['cpu-throttle-percentage'], undefined);
  src.migration.cancel();
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
});

test('auto-converge is refused on a VM that cannot throttle its vCPUs', () => {
  const side = makeSide({ memorySize: MiB, throttle: false }, {});
  assert.throws(() => side.migration.setCapabilities([{ capability: 'auto-converge', state: true }]), /'auto-converge' is not supported by Ferry/);
  assert.equal(side.migration.queryCapabilities().find((c) => c.capability === 'auto-converge')?.state, false);
});
