import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError } from '../errors.js';
import { createMemoryChannelPair } from '../stream/memory-channel.js';
import { StreamReader } from '../stream/reader.js';
import { readRpMessage } from '../stream/return-path.js';
import type { Channel } from '../transport/channel.js';
import { DestinationReturnPath } from './return-path.js';

test('destination return path: PING gets PONG, SHUT goes out once; a PING before OPEN_RETURN_PATH is refused', async () => {
  const [dst, src] = createMemoryChannelPair();
  const rp = new DestinationReturnPath(dst);
  assert.throws(() => rp.onCommand({ type: 'ping', value: 9 }, 30), (err: unknown) => err instanceof StreamFormatError && /CMD_PING \(0x9\) at offset 30 received with no return path/.test(err.message));
  rp.onCommand({ type: 'open-return-path' }, 10);
  rp.onCommand({ type: 'ping', value: 7 }, 20);
  await rp.shut(0);
  await rp.shut(1); // only the first SHUT counts
  rp.close();
  const r = new StreamReader(src);
  assert.deepEqual(await readRpMessage(r), { type: 'pong', value: 7 });
  assert.deepEqual(await readRpMessage(r), { type: 'shut', value: 0 });
  assert.equal(await readRpMessage(r), null);
});

test('destination return path: over a channel with no way back (exec:, a file) the commands are taken and nothing is written', async () => {
  const writes: Uint8Array[] = [];
  const channel: Channel = {
    description: 'exec:cat saved.stream', read: async () => null, end: async () => {}, destroy: () => {},
    write: async (d) => { writes.push(d); },
  };
  const rp = new DestinationReturnPath(channel);
  rp.onCommand({ type: 'open-return-path' }, 10);
  rp.onCommand({ type: 'ping', value: 1 }, 20);
  await rp.shut(0);
  assert.deepEqual(writes, []);
});

test('destination return path: a SHUT that cannot be sent rejects (the guest must not start), and after a failure SHUT 1 gives up in time', async () => {
  const [dst, src] = createMemoryChannelPair();
  const rp = new DestinationReturnPath(dst);
  rp.onCommand({ type: 'open-return-path' }, 10);
  src.destroy();
  await assert.rejects(rp.shut(0), /Cannot tell the source over memory:a that the stream is in/);
  const [dst2, src2] = createMemoryChannelPair({ highWaterMark: 1 });
  const stuck: Channel = { ...dst2, duplex: true, description: dst2.description, read: () => dst2.read(), end: () => dst2.end(), destroy: (e) => dst2.destroy(e), write: () => new Promise<void>(() => {}), drain: () => new Promise<void>(() => {}) };
  const rp2 = new DestinationReturnPath(stuck);
  rp2.onCommand({ type: 'open-return-path' }, 10);
  const started = performance.now();
  await rp2.shutAfterFailure();
  assert.ok(performance.now() - started < 3000);
  src2.destroy();
});
