// The downtime guard: a switchover whose RAM cannot go out within the downtime limit is
// called off — the guest runs again, the passes go on at the rate the switchover really
// got — and a later one completes inside the limit, with the RAM intact.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMemoryChannelPair } from '../src/stream/memory-channel.js';
import type { Channel } from '../src/transport/channel.js';
import { digest, listenerFor, makeSide, statuses } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;

test('a switchover that cannot send its RAM within the limit is called off; the guest runs again and a later one completes within it', async (t) => {
  const [a, b] = createMemoryChannelPair();
  let slowStops = 1;
  let source: ReturnType<typeof makeSide> | undefined;
  let slowedWrites = 0;
  // The source's channel slows to a crawl during the first stop only: a link that got
  // slower just when the guest was stopped, as the overruns seen on these machines did.
  const slowWhileStopped: Channel = {
    description: 'memory: slow while the first switchover runs',
    read: () => a.read(),
    end: () => a.end(),
    destroy: (error) => a.destroy(error),
    write: async (data, done) => {
      if (slowStops > 0 && source?.vm.runState === 'finish-migrate') {
        slowedWrites++;
        await new Promise((r) => setTimeout(r, 25));
      }
      return a.write(data, done);
    },
  };
  const src = makeSide({ memorySize: 32 * MiB }, { connect: async () => slowWhileStopped });
  source = src;
  const dst = makeSide({ memorySize: 32 * MiB, incoming: true }, { listen: async () => listenerFor(b) });
  src.vm.fillPages(0, 8192); // 32 MiB of data
  src.vm.startWorkload(64, 1); // keeps rewriting pages: each pass leaves some behind
  t.after(() => src.vm.stopWorkload());
  src.vm.runStates.length = 0;
  for (const side of [src, dst]) side.migration.setCapabilities([{ capability: 'events', state: true }]);
  src.migration.setParameters({ 'max-bandwidth': 0, 'downtime-limit': 60 });
  // Once the first stop is over, the link is fast again.
  const watch = setInterval(() => {
    if (slowStops > 0 && slowedWrites > 0 && src.vm.runState === 'running') slowStops = 0;
  }, 1);
  t.after(() => clearInterval(watch));

  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  src.vm.stopWorkload();

  const info = src.migration.queryMigrate();
  assert.equal(info.status, 'completed', JSON.stringify(info));
  assert.ok(slowedWrites > 0, 'the first switchover met the slow link');
  // running → finish-migrate → running (called off) → … → finish-migrate → postmigrate
  const states = src.vm.runStates;
  const stops = states.filter((s) => s === 'finish-migrate').length;
  assert.ok(stops >= 2, `run states ${states.join(' → ')}`);
  assert.equal(states[states.indexOf('finish-migrate') + 1], 'running', 'the first switchover was called off and the guest ran again');
  assert.equal(states.at(-1), 'postmigrate');
  assert.ok((info.downtime ?? Infinity) <= 60 + 15, `downtime ${info.downtime} ms for a 60 ms limit`);
  assert.deepEqual(statuses(src.events), ['setup', 'active', 'completed']);
  assert.equal(dst.migration.incomingStatus, 'completed', dst.migration.incomingError);
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
  assert.equal(info.ram!['precopy-bytes'] + info.ram!['downtime-bytes'], info.ram!.transferred);
});
