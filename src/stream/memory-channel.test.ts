import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TransportError } from '../errors.js';
import { channelFromBytes, createCollectingChannel, createMemoryChannelPair } from './memory-channel.js';
import { fromHex, toHex } from './testing.js';

test('memory pair: chunks arrive in order, both directions, then null after end()', async () => {
  const [a, b] = createMemoryChannelPair();
  await a.write(fromHex('0102'));
  await a.write(fromHex('03'));
  await b.write(fromHex('ff'));
  assert.equal(toHex((await b.read())!), '0102');
  assert.equal(toHex((await b.read())!), '03');
  assert.equal(toHex((await a.read())!), 'ff');
  const pending = b.read();
  await a.end();
  assert.equal(await pending, null);
  assert.equal(await b.read(), null);
  await assert.rejects(a.write(fromHex('00')), TransportError);
});

test('memory pair: write() waits while the peer has a full queue', async () => {
  const [a, b] = createMemoryChannelPair({ highWaterMark: 4 });
  await a.write(fromHex('01'));
  let resolved = false;
  const full = a.write(fromHex('02030405')).then(() => {
    resolved = true;
  });
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(resolved, false);
  await b.read();
  await b.read();
  await full;
  assert.equal(resolved, true);
});

test('memory pair: destroy() breaks both ends with TransportErrors', async () => {
  const [a, b] = createMemoryChannelPair({ highWaterMark: 1 });
  const reading = b.read();
  const writing = b.write(fromHex('0102'));
  a.destroy();
  await assert.rejects(reading, TransportError);
  await assert.rejects(writing, TransportError);
  await assert.rejects(a.read(), TransportError);
  await assert.rejects(b.write(fromHex('00')), TransportError);
});

test('channelFromBytes: slices in chunkSize pieces, then null; refuses writes', async () => {
  const ch = channelFromBytes(fromHex('0102030405'), { chunkSize: 2 });
  const got: string[] = [];
  for (let c = await ch.read(); c !== null; c = await ch.read()) got.push(toHex(c));
  assert.deepEqual(got, ['0102', '0304', '05']);
  await assert.rejects(ch.write(fromHex('00')), TransportError);
  assert.throws(() => channelFromBytes(new Uint8Array(1), { chunkSize: 0 }), TransportError);
});

test('collecting channel: keeps what it is given and can fail on demand', async () => {
  const ch = createCollectingChannel({ failAfterBytes: 3 });
  await ch.write(fromHex('0102'));
  await assert.rejects(ch.write(fromHex('0304')), TransportError);
  assert.equal(toHex(ch.bytes()), '0102');
  await ch.end();
  assert.equal(ch.ended, true);
});
