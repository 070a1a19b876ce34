// QmpClient against Ferry's own server: addresses, replies and error classes, events
// (buffered waits, predicates, timeouts, the async iterator), and every way a
// connection can fail.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpError, TransportError } from '../src/errors.js';
import { QmpClient } from '../src/qmp/client.js';
import type { QmpEvent } from '../src/qmp/protocol.js';
import { QmpServer } from '../src/qmp/server.js';
import { t } from '../src/qmp/schema.js';

const dir = mkdtempSync(join(tmpdir(), 'ferry-qmpc-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('QmpClient against a Ferry server', () => {
  let server: QmpServer;
  let path: string;
  let tcp: string;
  let hang: () => void = () => {};
  before(async () => {
    server = new QmpServer();
    server.register({ name: 'x-add', args: { a: t.int, b: t.int }, handler: ({ a, b }) => ({ sum: a + b }) });
    server.register({ name: 'x-not-found', handler: () => { throw new QmpError('DeviceNotFound', 'no such device'); } });
    server.register({
      name: 'x-hang',
      handler: () => new Promise((resolve) => (hang = () => resolve({}))),
    });
    path = join(dir, 'c.sock');
    await server.listen(`unix:${path}`);
    tcp = await server.listen('tcp:127.0.0.1:0');
  });
  after(() => server.close());

  test('connects by bare path, unix: and tcp:, and reads the greeting', async () => {
    for (const address of [path, `unix:${path}`, tcp]) {
      const client = await QmpClient.connect(address);
      assert.equal(client.greeting.QMP.version.package, server.version.package);
      assert.deepEqual(await client.execute('x-add', { a: 2, b: 40 }), { sum: 42 });
      await client.close();
      assert.equal(client.closed, true);
    }
  });

  test('errors reject with QmpError carrying the class', async () => {
    const client = await QmpClient.connect(path);
    await assert.rejects(client.execute('x-not-found'), (e: unknown) =>
      e instanceof QmpError && e.errorClass === 'DeviceNotFound' && e.message === 'no such device');
    await assert.rejects(client.execute('nope'), (e: unknown) => e instanceof QmpError && e.errorClass === 'CommandNotFound');
    await assert.rejects(client.execute('x-add', { a: 1 }), (e: unknown) =>
      e instanceof QmpError && e.errorClass === 'GenericError' && e.message === "Parameter 'b' is missing");
    // Many commands in flight at once each get their own answer.
    const sums = await Promise.all(Array.from({ length: 50 }, (_, i) => client.execute<{ sum: number }>('x-add', { a: i, b: i })));
    sums.forEach((r, i) => assert.equal(r.sum, 2 * i));
    await client.close();
  });

  test('without negotiation the server says so', async () => {
    const client = await QmpClient.connect(path, { negotiate: false });
    await assert.rejects(client.execute('query-version'), /Expecting capabilities negotiation with 'qmp_capabilities'/);
    await client.execute('qmp_capabilities');
    await client.execute('query-version');
    await client.close();
  });

  test('waitForEvent finds an event that already arrived, once; predicates filter; timeouts reject', async () => {
    const client = await QmpClient.connect(path);
    const seen: QmpEvent[] = [];
    client.on('event', (e) => seen.push(e));
    server.emit('MIGRATION', { status: 'setup' });
    server.emit('MIGRATION', { status: 'active' });
    server.emit('MIGRATION', { status: 'completed' });
    await client.execute('query-version'); // the events were written before this reply
    const done = await client.waitForEvent('MIGRATION', (e) => e.data?.['status'] === 'completed', 1000);
    assert.deepEqual(done.data, { status: 'completed' });
    assert.deepEqual((await client.waitForEvent('MIGRATION', undefined, 1000)).data, { status: 'setup' });
    assert.deepEqual(client.bufferedEvents().map((e) => e.data), [{ status: 'active' }]);
    client.clearEvents();
    await assert.rejects(client.waitForEvent('MIGRATION', undefined, 50), (e: unknown) =>
      e instanceof TransportError && /No QMP event MIGRATION .* within 50 ms/.test(e.message));
    const later = client.waitForEvent('RESUME', undefined, 1000);
    setTimeout(() => server.emit('RESUME'), 10);
    assert.equal((await later).event, 'RESUME');
    assert.equal(seen.length, 4);
    await client.close();
  });

  test('events() yields every event in order until the connection closes', async () => {
    const client = await QmpClient.connect(path);
    const got: string[] = [];
    const iterating = (async () => {
      for await (const e of client.events()) got.push(`${e.event}:${String(e.data?.['pass'] ?? '')}`);
    })();
    await new Promise((r) => setTimeout(r, 10));
    for (let pass = 1; pass <= 3; pass++) server.emit('MIGRATION_PASS', { pass });
    await client.execute('query-version');
    await client.close();
    await iterating;
    assert.deepEqual(got, ['MIGRATION_PASS:1', 'MIGRATION_PASS:2', 'MIGRATION_PASS:3']);
  });

  test('a command in flight rejects with TransportError when the connection drops; timeouts reject', async () => {
    const client = await QmpClient.connect(tcp);
    await assert.rejects(client.execute('x-hang', undefined, { timeoutMs: 50 }), /No reply to x-hang .* within 50 ms/);
    const pending = client.execute('x-hang');
    const waiting = client.waitForEvent('NEVER', undefined, 10_000);
    await new Promise((r) => setTimeout(r, 20));
    await client.close();
    await assert.rejects(pending, (e: unknown) => e instanceof TransportError && /before the reply to x-hang/.test(e.message));
    await assert.rejects(waiting, /while waiting for event NEVER/);
    await assert.rejects(client.execute('query-version'), /connection is closed/);
    hang();
  });
});

test('connecting where nobody listens is a TransportError naming the address', async () => {
  const path = join(dir, 'nobody.sock');
  await assert.rejects(QmpClient.connect(path), (e: unknown) =>
    e instanceof TransportError && e.message.startsWith(`Cannot connect to QMP at unix:${path}`));
  await assert.rejects(QmpClient.connect('tcp:127.0.0.1:1'), (e: unknown) =>
    e instanceof TransportError && /Cannot connect to QMP at tcp:127\.0\.0\.1:1/.test(e.message));
});

test('a server that never greets times out', async (t) => {
  const sockets: net.Socket[] = [];
  const silent = net.createServer((socket) => void sockets.push(socket));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    silent.close();
  });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  const port = (silent.address() as net.AddressInfo).port;
  await assert.rejects(QmpClient.connect(`tcp:127.0.0.1:${port}`, { timeoutMs: 100 }), /no greeting within 100 ms/);
});

test('a bad address is a ConfigError', async () => {
  await assert.rejects(QmpClient.connect('tcp:nohost'), (e: Error) => e.name === 'ConfigError');
  await assert.rejects(QmpClient.connect('unix:/x,bogus=1'), /unknown option "bogus=1"/);
});
