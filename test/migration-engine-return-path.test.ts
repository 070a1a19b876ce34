// The `return-path` capability: the destination answers on the same connection, and the
// source completes only once it says it loaded the whole stream. A destination that fails
// at the very end (or goes quiet, or closes) leaves the source guest running — without the
// capability the same failure leaves no copy running.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMemoryChannelPair } from '../src/stream/memory-channel.js';
import type { Channel } from '../src/transport/channel.js';
import { digest, makePair, makeSide, migrateToEnd, waitFor } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;
const RETURN_PATH = [{ capability: 'return-path', state: true }];

test('return-path: the migration completes once the destination has answered, with the same RAM on both sides', async () => {
  const { src, dst } = makePair(8 * MiB);
  src.vm.fillPages(0, 1024);
  src.migration.setCapabilities(RETURN_PATH);
  src.migration.setParameters({ 'max-bandwidth': 0 });
  await migrateToEnd(src, dst);
  assert.equal(src.migration.status, 'completed', src.migration.queryMigrate()['error-desc']);
  assert.equal(dst.migration.incomingStatus, 'completed');
  assert.equal(src.vm.runState, 'postmigrate');
  assert.equal(dst.vm.runState, 'running');
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
});

for (const returnPath of [true, false]) {
  test(`a destination that fails on the last section: ${returnPath ? 'with return-path the source fails and its guest runs again' : 'without return-path the source completes and no copy runs'}`, async () => {
    const { src, dst } = makePair(4 * MiB);
    src.vm.fillPages(0, 256);
    // The serial port's FULL section, sent last of all, is unknown to this destination.
    dst.vm.stateSections.splice(dst.vm.stateSections.indexOf(dst.vm.serial), 1);
    if (returnPath) src.migration.setCapabilities(RETURN_PATH);
    src.migration.setParameters({ 'max-bandwidth': 0 });
    await migrateToEnd(src, dst);
    assert.equal(dst.migration.incomingStatus, 'failed');
    assert.match(dst.migration.queryMigrate()['error-desc'] ?? '', /Unknown savevm section or instance 'fake-serial'/);
    assert.ok(!dst.vm.runStates.includes('running'));
    if (returnPath) {
      const info = src.migration.queryMigrate();
      assert.equal(info.status, 'failed');
      assert.match(info['error-desc'] ?? '', /destination failed to load the stream \(it answered SHUT 1/);
      assert.equal(src.vm.runState, 'running');
    } else {
      assert.equal(src.migration.status, 'completed');
      assert.equal(src.vm.runState, 'postmigrate');
    }
  });
}

/** A source whose destination end is driven by the test instead of a Migration. */
function sourceWithRawPeer(channelOverride?: (a: Channel) => Channel): { src: ReturnType<typeof makeSide>; peer: Channel } {
  const [a, b] = createMemoryChannelPair();
  const channel = channelOverride ? channelOverride(a) : a;
  const src = makeSide({ memorySize: 4 * MiB }, { connect: async () => channel });
  src.vm.fillPages(0, 256);
  src.migration.setCapabilities(RETURN_PATH);
  src.migration.setParameters({ 'max-bandwidth': 0 });
  return { src, peer: b };
}

/** Read and drop everything the source sends, until the stream ends. */
async function drain(peer: Channel): Promise<void> {
  for (;;) {
    const chunk = await peer.read().catch(() => null);
    if (chunk === null) return;
  }
}

test('return-path: a destination that closes its side without SHUT fails the migration, and the source guest runs again', async () => {
  const { src, peer } = sourceWithRawPeer();
  await peer.end(); // no answer will ever come
  const reading = drain(peer);
  src.migration.migrate('memory:');
  await src.migration.whenSettled();
  const info = src.migration.queryMigrate();
  assert.equal(info.status, 'failed');
  assert.match(info['error-desc'] ?? '', /closed the return path \(memory:a\) without saying whether it loaded the stream/);
  assert.equal(src.vm.runState, 'running');
  peer.destroy();
  await reading;
});

test('return-path: while the source waits for SHUT, migrate_cancel runs its guest again', async () => {
  const { src, peer } = sourceWithRawPeer();
  const reading = drain(peer); // reads everything, never answers
  src.migration.migrate('memory:');
  await waitFor('the source to stop the guest and send it all', () => src.vm.runState === 'finish-migrate', 20_000);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(src.vm.runState, 'finish-migrate', 'still stopped, waiting for the answer');
  assert.equal(src.migration.status, 'active');
  src.migration.cancel();
  await src.migration.whenSettled();
  assert.equal(src.migration.status, 'cancelled');
  assert.equal(src.vm.runState, 'running');
  peer.destroy();
  await reading;
});

test('return-path over a channel nobody can answer on (exec:, a file) is refused at the start, naming the channel', async () => {
  const { src, peer } = sourceWithRawPeer((a) => ({
    description: 'exec:cat > /tmp/x',
    read: () => a.read(), write: (d, done) => a.write(d, done), end: () => a.end(), destroy: (e) => a.destroy(e),
  }));
  src.migration.migrate('memory:');
  await src.migration.whenSettled();
  const info = src.migration.queryMigrate();
  assert.equal(info.status, 'failed');
  assert.match(info['error-desc'] ?? '', /Cannot use the return-path capability over exec:cat > \/tmp\/x: the destination has no way to answer on it/);
  assert.equal(src.vm.runState, 'running');
  peer.destroy();
});
