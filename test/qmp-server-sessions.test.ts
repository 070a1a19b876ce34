// The QMP server over real sockets, continued: several clients and events, flow
// control, how handlers' results and errors reach the wire, and listening.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, MigrationError, QmpError } from '../src/errors.js';
import { QmpServer } from '../src/qmp/server.js';
import { t } from '../src/qmp/schema.js';
import { Raw, dir, err, newServer, sockPath, stillServes, track, type Json } from './qmp-test-helpers.js';

describe('several clients and events', () => {
  test('events go to every negotiated client on unix and tcp, with timestamps, and not to others', async () => {
    const server = newServer();
    const unixAddr = await server.listen(`unix:${sockPath()}`);
    const tcpAddr = await server.listen('tcp:127.0.0.1:0');
    assert.match(tcpAddr, /^tcp:127\.0\.0\.1:\d+$/);
    const a = await Raw.ready(unixAddr);
    const b = await Raw.ready(tcpAddr);
    const c = await Raw.ready(unixAddr);
    const shy = await Raw.open(unixAddr);
    await shy.next(); // greeting only, never negotiates
    assert.equal(server.sessionCount, 4);

    const before = Date.now() / 1000;
    server.emit('STOP');
    server.emit('MIGRATION', { status: 'active' });
    for (const raw of [a, b, c]) {
      const stop = await raw.next();
      assert.equal(stop['event'], 'STOP');
      assert.ok(!('data' in stop));
      const ts = stop['timestamp'] as { seconds: number; microseconds: number };
      assert.ok(Number.isInteger(ts.seconds) && Number.isInteger(ts.microseconds));
      assert.ok(ts.microseconds >= 0 && ts.microseconds < 1_000_000);
      assert.ok(Math.abs(ts.seconds + ts.microseconds / 1e6 - before) < 5);
      assert.deepEqual((await raw.next())['data'], { status: 'active' });
    }
    await shy.quiet(100);
    for (const raw of [a, b, c, shy]) raw.destroy();
    await server.close();
  });

  test('commands from several clients at once are each answered on their own connection', async () => {
    const server = newServer();
    server.register({
      name: 'x-slow',
      args: { ms: t.uint, tag: t.str },
      handler: async ({ ms, tag }) => {
        await new Promise((r) => setTimeout(r, ms));
        return { tag };
      },
    });
    const addr = await server.listen(`unix:${sockPath()}`);
    const clients = await Promise.all([1, 2, 3, 4, 5].map(() => Raw.ready(addr)));
    const replies = await Promise.all(
      clients.map((raw, i) => raw.ask(JSON.stringify({ execute: 'x-slow', arguments: { ms: 50 - i * 10, tag: `c${i}` }, id: i }))),
    );
    replies.forEach((reply, i) => assert.deepEqual(reply, { return: { tag: `c${i}` }, id: i }));
    for (const raw of clients) raw.destroy();
    await server.close();
  });

  test('a client that leaves before its reply is written harms nothing', async () => {
    const server = newServer();
    let finished = false;
    server.register({
      name: 'x-slow',
      handler: async () => {
        await new Promise((r) => setTimeout(r, 50));
        finished = true;
        return { big: 'x'.repeat(100_000) };
      },
    });
    const addr = await server.listen(`unix:${sockPath()}`);
    const stays = await Raw.ready(addr);
    const leaves = await Raw.ready(addr);
    leaves.send('{"execute":"x-slow"}\n');
    await new Promise((r) => setTimeout(r, 10));
    leaves.destroy();
    for (let i = 0; i < 100 && !finished; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(finished, true);
    await stillServes(stays);
    assert.equal(server.sessionCount, 1);
    stays.destroy();
    await server.close();
  });

  test('what a command arranged for after its reply (quit) still runs if the client left first', async () => {
    const server = newServer();
    let quitRan = false;
    server.register({
      name: 'x-quit',
      handler: async (_args, ctx) => {
        await new Promise((r) => setTimeout(r, 30));
        ctx.afterReply(() => (quitRan = true));
        return {};
      },
    });
    const raw = await Raw.ready(await server.listen('tcp:127.0.0.1:0'));
    raw.send('{"execute":"x-quit"}\n');
    await new Promise((r) => setTimeout(r, 5));
    // The session is gone before the reply is ready (here because the server shuts down).
    await server.close();
    assert.equal(server.sessionCount, 0);
    for (let i = 0; i < 100 && !quitRan; i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(quitRan, true);
    raw.destroy();
  });

  test('a client that never reads its events is dropped before its backlog grows without bound', async () => {
    const server = newServer();
    const addr = await server.listen('tcp:127.0.0.1:0');
    const reader = await Raw.ready(addr);
    const sleeper = await Raw.ready(addr);
    sleeper.socket.pause(); // reads nothing more, so the server's output to it piles up
    const data = { blob: 'y'.repeat(4096) };
    for (let i = 0; i < 6000 && server.sessionCount === 2; i++) {
      server.emit('X_FLOOD', data);
      if (i % 500 === 0) await new Promise((r) => setTimeout(r, 1));
    }
    assert.equal(server.sessionCount, 1, 'the sleeping client should have been dropped');
    sleeper.destroy();
    reader.socket.destroy();
    await server.close();
  });

  test('one client’s commands run one at a time, replies in request order', async () => {
    const server = newServer();
    const log: string[] = [];
    server.register({
      name: 'x-slow',
      args: { ms: t.uint, tag: t.str },
      handler: async ({ ms, tag }) => {
        log.push(`start ${tag}`);
        await new Promise((r) => setTimeout(r, ms));
        log.push(`end ${tag}`);
        return {};
      },
    });
    const raw = await Raw.ready(await server.listen(`unix:${sockPath()}`));
    raw.send('{"execute":"x-slow","arguments":{"ms":60,"tag":"a"},"id":"a"}\n{"execute":"x-slow","arguments":{"ms":1,"tag":"b"},"id":"b"}\n');
    assert.equal((await raw.next())['id'], 'a');
    assert.equal((await raw.next())['id'], 'b');
    assert.deepEqual(log, ['start a', 'end a', 'start b', 'end b']);
    raw.destroy();
    await server.close();
  });
});

describe('flow control', () => {
  for (const kind of ['unix', 'tcp'] as const) {
    test(`2000 pipelined commands in one write over ${kind} are all answered, in order`, async () => {
      const server = newServer();
      server.register({
        name: 'x-tick',
        args: { n: t.int },
        handler: async ({ n }) => {
          await new Promise((r) => setImmediate(r));
          return { n };
        },
      });
      const raw = await Raw.ready(await server.listen(kind === 'unix' ? `unix:${sockPath()}` : 'tcp:127.0.0.1:0'));
      const count = 2000;
      raw.send(Array.from({ length: count }, (_, n) => JSON.stringify({ execute: 'x-tick', arguments: { n }, id: n })).join('\n') + '\n');
      for (let n = 0; n < count; n++) assert.deepEqual(await raw.next(), { return: { n }, id: n });
      await stillServes(raw);
      raw.destroy();
      await server.close();
    });
  }
});

describe('handlers', () => {
  let server: QmpServer;
  let raw: Raw;
  const afterLog: string[] = [];
  before(async () => {
    server = track(new QmpServer());
    server.register({ name: 'x-qmp-error', handler: () => { throw new QmpError('DeviceNotFound', "Device 'x' not found"); } });
    server.register({ name: 'x-ferry-error', handler: async () => { throw new MigrationError('Cannot migrate: already running'); } });
    server.register({ name: 'x-plain-error', handler: () => { throw new TypeError('boom at step 3'); } });
    server.register({ name: 'x-throw-string', handler: () => { throw 'just a string'; } });
    server.register({ name: 'x-void', handler: () => undefined });
    server.register({ name: 'x-bigint', handler: () => ({ n: 1n }) });
    server.register({ name: 'x-bad-return', returns: t.object({ status: t.str }), handler: () => ({ status: 3 }) as never });
    server.register({ name: 'x-good-return', returns: t.object({ status: t.str, 'extra?': t.int }), handler: () => ({ status: 'running' }) });
    server.register({
      name: 'x-after',
      handler: (_args, ctx) => {
        ctx.afterReply(() => afterLog.push(`after ${ctx.session.transport} ${ctx.session.id}`));
        ctx.emit('X_EVENT', { from: 'handler' });
        return { ok: true };
      },
    });
    raw = await Raw.ready(await server.listen(`unix:${sockPath()}`));
  });
  after(async () => {
    raw.destroy();
    await server.close();
  });

  test('a QmpError keeps its class', async () => {
    assert.deepEqual(await raw.ask('{"execute":"x-qmp-error"}'), err('DeviceNotFound', "Device 'x' not found"));
  });
  test('another FerryError becomes GenericError with its message', async () => {
    assert.deepEqual(await raw.ask('{"execute":"x-ferry-error"}'), err('GenericError', 'Cannot migrate: already running'));
  });
  test('an unexpected error becomes GenericError with its message', async () => {
    assert.deepEqual(await raw.ask('{"execute":"x-plain-error"}'), err('GenericError', 'boom at step 3'));
    assert.deepEqual(await raw.ask('{"execute":"x-throw-string"}'), err('GenericError', 'Command x-throw-string failed: just a string'));
  });
  test('undefined returns {}', async () => {
    assert.deepEqual(await raw.ask('{"execute":"x-void"}'), { return: {} });
  });
  test('a result JSON cannot carry is an error, not a crash', async () => {
    const reply = await raw.ask('{"execute":"x-bigint"}');
    assert.equal((reply['error'] as Json)['class'], 'GenericError');
    await stillServes(raw);
  });
  test('a declared return schema is enforced', async () => {
    assert.deepEqual(await raw.ask('{"execute":"x-good-return"}'), { return: { status: 'running' } });
    const reply = await raw.ask('{"execute":"x-bad-return"}');
    assert.match(String((reply['error'] as Json)['desc']), /x-bad-return returned a value that does not match its schema: Invalid parameter type for 'return.status'/);
  });
  test('afterReply runs once the reply is written; ctx.emit reaches the client', async () => {
    const event = raw.ask('{"execute":"x-after"}');
    assert.deepEqual(await event, { event: 'X_EVENT', data: { from: 'handler' }, timestamp: (await event)['timestamp'] });
    assert.deepEqual(await raw.next(), { return: { ok: true } });
    for (let i = 0; i < 50 && afterLog.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    assert.match(afterLog[0] ?? '', /^after unix \d+$/);
  });
  test('registering a name twice is refused; unregister frees it', () => {
    assert.throws(() => server.register({ name: 'x-void', handler: () => undefined }), /already registered/);
    assert.equal(server.unregister('x-void'), true);
    server.register({ name: 'x-void', handler: () => ({ again: true }) });
  });
});

describe('listening', () => {
  test('a stale unix socket file is replaced; a regular file in the way is refused; close removes the socket', async () => {
    const path = sockPath();
    const first = track(new QmpServer());
    await first.listen(path);
    // Simulate a crashed process: the socket file stays behind.
    const stale = track(new QmpServer());
    await assert.rejects(stale.listen('tcp:127.0.0.1:99999'), ConfigError);
    await stale.listen(`unix:${path},server=on,wait=off`);
    await stillServes(await Raw.ready(path));
    await stale.close();
    await first.close();
    assert.equal(existsSync(path), false);

    const file = join(dir, 'not-a-socket');
    writeFileSync(file, 'keep me');
    await assert.rejects(track(new QmpServer()).listen(`unix:${file}`), /exists and is not a socket/);
    assert.equal(readFileSync(file, 'utf8'), 'keep me');
  });

  test('IPv6 loopback works where the host has it', async (t) => {
    const server = newServer();
    let addr: string;
    try {
      addr = await server.listen('tcp:[::1]:0');
    } catch (e) {
      t.skip(`no IPv6 loopback here: ${(e as Error).message}`);
      await server.close();
      return;
    }
    assert.match(addr, /^tcp:\[::1\]:\d+$/);
    const raw = await Raw.ready(addr);
    await stillServes(raw);
    raw.destroy();
    await server.close();
  });

  test('a port in use is a TransportError naming the address', async () => {
    const server = newServer();
    const addr = await server.listen('tcp:127.0.0.1:0');
    await assert.rejects(track(new QmpServer()).listen(addr), (e: Error) => e.name === 'TransportError' && e.message.includes(addr));
    await server.close();
  });
});
