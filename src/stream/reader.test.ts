import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError, StreamTruncatedError, TransportError } from '../errors.js';
import { createMemoryChannelPair } from './memory-channel.js';
import { StreamReader } from './reader.js';
import { fromHex, readerOf } from './testing.js';
import type { Channel } from '../transport/channel.js';

const SAMPLE = fromHex('ab 1234 deadbeef 0102030405060708 ffffffffffffffff 090807');

for (const chunk of [1, 2, 3, 5, 7, 64]) {
  test(`reader: integers and bytes decode across ${chunk}-byte chunks`, async () => {
    const r = readerOf(SAMPLE, chunk);
    await r.ensure(SAMPLE.length);
    assert.equal(r.available(), SAMPLE.length);
    assert.equal(r.u8(), 0xab);
    assert.equal(r.be16(), 0x1234);
    assert.equal(r.be32(), 0xdeadbeef);
    assert.equal(r.be64(), 0x0102030405060708n);
    assert.equal(r.be64(), 0xffffffffffffffffn);
    assert.equal(r.peekU8(0), 9);
    assert.equal(r.peekU8(2), 7);
    const tail = r.bytes(3);
    assert.deepEqual([...tail], [9, 8, 7]);
    assert.equal(r.offset, SAMPLE.length);
    assert.equal(await r.atEnd(), true);
  });
}

test('reader: copyTo writes straight into the target at the offset', async () => {
  const data = new Uint8Array(10000).map((_, i) => i * 7);
  const r = readerOf(data, 999);
  await r.ensure(10000);
  const target = new Uint8Array(20000);
  r.skip(100);
  r.copyTo(target, 5000, 9900);
  for (let i = 0; i < 9900; i++) assert.equal(target[5000 + i], data[100 + i]);
  assert.equal(target[4999], 0);
  assert.equal(r.offset, 10000);
});

test('reader: bytes() returns a copy, not a view of the chunk', async () => {
  const data = fromHex('01020304');
  const r = readerOf(data);
  await r.ensure(4);
  const got = r.bytes(4);
  got[0] = 0xff;
  assert.equal(data[0], 1);
});

test('reader: ensure past the end rejects StreamTruncatedError naming the section and offset', async () => {
  const r = readerOf(fromHex('0102030405'), 2);
  await r.ensure(2, 'a');
  r.be16();
  await assert.rejects(r.ensure(4, 'serial'), (e: unknown) => {
    assert.ok(e instanceof StreamTruncatedError);
    assert.equal(e.section, 'serial');
    assert.equal(e.offset, 5);
    assert.match(e.message, /serial/);
    return true;
  });
});

test('reader: a read without ensure() is a StreamTruncatedError, not a RangeError', async () => {
  const r = readerOf(fromHex('01'));
  await r.ensure(1);
  assert.throws(() => r.be32(), StreamTruncatedError);
  assert.throws(() => r.bytes(2), StreamTruncatedError);
  assert.throws(() => r.copyTo(new Uint8Array(4), 2, 4), StreamFormatError);
  assert.throws(() => r.copyTo(new Uint8Array(4), 0, 4), StreamTruncatedError);
  assert.equal(r.u8(), 1);
  assert.throws(() => r.u8(), StreamTruncatedError);
});

test('reader: fill returns false at EOF; atEnd is false while bytes remain', async () => {
  const r = readerOf(fromHex('0102'));
  assert.equal(await r.fill(3), false);
  assert.equal(r.available(), 2);
  assert.equal(await r.atEnd(), false);
  r.skip(2);
  assert.equal(await r.atEnd(), true);
});

test('reader: a broken channel rejects with TransportError (wrapped if needed), and keeps failing', async () => {
  let calls = 0;
  const ch: Channel = {
    description: 'broken',
    read: () => (calls++ === 0 ? Promise.resolve(fromHex('01')) : Promise.reject(new Error('ECONNRESET'))),
    write: () => Promise.resolve(),
    end: () => Promise.resolve(),
    destroy: () => undefined,
  };
  const r = new StreamReader(ch);
  await assert.rejects(r.ensure(4), (e: unknown) => e instanceof TransportError && /ECONNRESET/.test(e.message));
  await assert.rejects(r.ensure(4), TransportError);
});

test('reader: works over a memory pair with the writer side ending', async () => {
  const [a, b] = createMemoryChannelPair();
  const r = new StreamReader(b);
  const pending = r.ensure(6);
  await a.write(fromHex('0001'));
  await a.write(fromHex('02030405'));
  await pending;
  assert.equal(r.be16(), 1);
  assert.equal(r.be32(), 0x02030405);
  await a.end();
  assert.equal(await r.atEnd(), true);
});

test('reader: empty chunks are skipped', async () => {
  const chunks = [new Uint8Array(0), fromHex('aa'), new Uint8Array(0), fromHex('bb')];
  const ch: Channel = {
    description: 'gappy',
    read: () => Promise.resolve(chunks.shift() ?? null),
    write: () => Promise.resolve(),
    end: () => Promise.resolve(),
    destroy: () => undefined,
  };
  const r = new StreamReader(ch);
  await r.ensure(2);
  assert.equal(r.be16(), 0xaabb);
});
