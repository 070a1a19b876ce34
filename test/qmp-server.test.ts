// The QMP server over real sockets, spoken to byte by byte as a client would: greeting,
// negotiation, every error path (and that the server keeps serving after each), framing,
// oversized input, vanishing clients, several clients with events, dispatch order.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, MigrationError, QmpError } from '../src/errors.js';
import { JsonFramer } from '../src/qmp/framing.js';
import { QmpServer } from '../src/qmp/server.js';
import { t } from '../src/qmp/schema.js';

const dir = mkdtempSync(join(tmpdir(), 'ferry-qmp-'));
let socketCount = 0;
const sockPath = (): string => join(dir, `s${++socketCount}.sock`);

type Json = Record<string, unknown>;

/** A bare-socket client: sends raw bytes, reads framed JSON messages. */
class Raw {
  readonly socket: net.Socket;
  readonly #messages: Json[] = [];
  readonly #framer = new JsonFramer({ maxMessageBytes: 64 * 1024 * 1024 });
  #wake: (() => void) | undefined;
  ended = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk) => {
      for (const f of this.#framer.push(chunk)) if (f.kind === 'message') this.#messages.push(JSON.parse(f.text) as Json);
      this.#wake?.();
    });
    socket.on('close', () => {
      this.ended = true;
      this.#wake?.();
    });
    socket.on('error', () => {});
  }

  static async open(address: string): Promise<Raw> {
    const socket = address.startsWith('tcp:')
      ? net.connect(Number(address.slice(address.lastIndexOf(':') + 1)), address.slice(4, address.lastIndexOf(':')).replace(/^\[|\]$/g, ''))
      : net.connect(address.replace(/^unix:/, ''));
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const raw = new Raw(socket);
    raws.add(raw);
    return raw;
  }

  /** Open, read the greeting, negotiate. */
  static async ready(address: string): Promise<Raw> {
    const raw = await Raw.open(address);
    await raw.next();
    assert.deepEqual(await raw.ask('{"execute":"qmp_capabilities"}'), { return: {} });
    return raw;
  }

  send(text: string | Uint8Array): void {
    this.socket.write(text);
  }

  async next(timeoutMs = 3000): Promise<Json> {
    const deadline = Date.now() + timeoutMs;
    while (this.#messages.length === 0) {
      if (this.ended) throw new Error('connection closed while waiting for a message');
      if (Date.now() > deadline) throw new Error('timed out waiting for a message');
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 20);
      });
    }
    return this.#messages.shift()!;
  }

  async ask(line: string): Promise<Json> {
    this.send(line + '\n');
    return this.next();
  }

  /** Nothing arrives within `ms`. */
  async quiet(ms = 100): Promise<void> {
    await new Promise((r) => setTimeout(r, ms));
    assert.deepEqual(this.#messages, []);
  }

  async closed(timeoutMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      if (Date.now() > deadline) throw new Error('connection still open');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

const err = (cls: string, desc: string, id?: unknown): Json =>
  id === undefined ? { error: { class: cls, desc } } : { error: { class: cls, desc }, id };

async function stillServes(raw: Raw): Promise<void> {
  const reply = await raw.ask('{"execute":"query-version","id":"alive"}');
  assert.equal(reply['id'], 'alive');
  assert.ok('return' in reply, `expected a return, got ${JSON.stringify(reply)}`);
}

// Every server and raw client a test makes is closed at the end of the file even when
// the test fails half-way, so a failure reports instead of hanging the run.
const servers = new Set<QmpServer>();
const raws = new Set<Raw>();
after(async () => {
  for (const raw of raws) raw.destroy();
  await Promise.all([...servers].map((s) => s.close()));
});

function track(server: QmpServer): QmpServer {
  servers.add(server);
  return server;
}

function newServer(): QmpServer {
  const server = track(new QmpServer());
  server.register({
    name: 'x-test-migrate',
    args: {
      uri: t.str,
      'detach?': t.bool,
      'caps?': t.array(t.object({ capability: t.enum(['xbzrle', 'events']), state: t.bool })),
    },
    handler: (args) => ({ got: args }),
  });
  return server;
}

describe('greeting and negotiation', () => {
  let server: QmpServer;
  let address: string;
  before(async () => {
    server = newServer();
    address = await server.listen(`unix:${sockPath()}`);
  });
  after(() => server.close());

  test('the greeting has QEMU’s shape with Ferry’s version', async () => {
    const raw = await Raw.open(address);
    const greeting = await raw.next();
    const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
    const [major, minor, micro] = version.split('.').map(Number);
    assert.deepEqual(greeting, { QMP: { version: { qemu: { major, minor, micro }, package: `ferry-${version}` }, capabilities: [] } });
    raw.destroy();
  });

  test('before qmp_capabilities every other command, known or not, is CommandNotFound as QEMU words it', async () => {
    const raw = await Raw.open(address);
    await raw.next();
    const expecting = "Expecting capabilities negotiation with 'qmp_capabilities'";
    assert.deepEqual(await raw.ask('{"execute":"query-version"}'), err('CommandNotFound', expecting));
    assert.deepEqual(await raw.ask('{"execute":"no-such-thing","id":5}'), err('CommandNotFound', expecting, 5));
    // Shape errors are still shape errors before negotiation.
    assert.deepEqual(await raw.ask('[1]'), err('GenericError', 'QMP input must be a JSON object'));
    assert.deepEqual(await raw.ask('{"execute":"qmp_capabilities","id":{"a":[1]}}'), { return: {}, id: { a: [1] } });
    assert.ok('return' in (await raw.ask('{"execute":"query-version"}')));
    assert.deepEqual(
      await raw.ask('{"execute":"qmp_capabilities","id":2}'),
      err('CommandNotFound', 'Capabilities negotiation is already complete, command ignored', 2),
    );
    await stillServes(raw);
    raw.destroy();
  });

  test('negotiation and the next command may arrive in one write', async () => {
    const raw = await Raw.open(address);
    await raw.next();
    raw.send('{"execute":"qmp_capabilities"}{"execute":"query-commands","id":1}');
    assert.deepEqual(await raw.next(), { return: {} });
    const commands = await raw.next();
    const names = (commands['return'] as { name: string }[]).map((c) => c.name);
    for (const name of ['qmp_capabilities', 'query-commands', 'query-version', 'getfd', 'closefd', 'x-test-migrate']) {
      assert.ok(names.includes(name), `query-commands lacks ${name}`);
    }
    raw.destroy();
  });

  test('capabilities that are not offered are refused', async () => {
    const raw = await Raw.open(address);
    await raw.next();
    assert.deepEqual(await raw.ask('{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}'),
      err('GenericError', "Capability 'oob' not available"));
    assert.deepEqual(await raw.ask('{"execute":"qmp_capabilities","arguments":{"enable":["x"]}}'),
      err('GenericError', "Parameter 'enable[0]' does not accept value 'x'"));
    assert.deepEqual(await raw.ask('{"execute":"qmp_capabilities","arguments":{"enable":[]}}'), { return: {} });
    raw.destroy();
  });
});

describe('error paths keep the server serving', () => {
  let server: QmpServer;
  let raw: Raw;
  before(async () => {
    server = newServer();
    raw = await Raw.ready(await server.listen(`unix:${sockPath()}`));
  });
  after(async () => {
    raw.destroy();
    await server.close();
  });

  const cases: [string, string, Json][] = [
    ['malformed JSON', '{bad json}', { class: 'GenericError', prefix: 'JSON parse error, ' }],
    ['an invalid keyword', 'nul', { class: 'GenericError', prefix: 'JSON parse error, ' }],
    ['a stray closing brace', '}', { class: 'GenericError', desc: "JSON parse error, stray '}'" }],
    ['a raw newline in a string', '{"execute":"que', { class: 'GenericError', prefix: 'JSON parse error, ' }],
    ['an array', '[1,2]', { class: 'GenericError', desc: 'QMP input must be a JSON object' }],
    ['a number', '42', { class: 'GenericError', desc: 'QMP input must be a JSON object' }],
    ['a string', '"str"', { class: 'GenericError', desc: 'QMP input must be a JSON object' }],
    ['no execute', '{"arguments":{}}', { class: 'GenericError', desc: "QMP input lacks member 'execute'" }],
    ['execute not a string', '{"execute":1}', { class: 'GenericError', desc: "QMP input member 'execute' must be a string" }],
    ['arguments not an object', '{"execute":"query-version","arguments":[]}',
      { class: 'GenericError', desc: "QMP input member 'arguments' must be an object" }],
    ['an unexpected member', '{"execute":"query-version","foo":1}', { class: 'GenericError', desc: "QMP input member 'foo' is unexpected" }],
    ['exec-oob', '{"exec-oob":"query-version"}', { class: 'GenericError', prefix: "QMP input member 'exec-oob' is unexpected" }],
    ['an unknown command', '{"execute":"nonexistent"}', { class: 'CommandNotFound', desc: 'The command nonexistent has not been found' }],
    ['an unknown argument', '{"execute":"query-version","arguments":{"x":1}}', { class: 'GenericError', desc: "Parameter 'x' is unexpected" }],
    ['a missing argument', '{"execute":"x-test-migrate","arguments":{}}', { class: 'GenericError', desc: "Parameter 'uri' is missing" }],
    ['a mistyped argument', '{"execute":"x-test-migrate","arguments":{"uri":5}}',
      { class: 'GenericError', desc: "Invalid parameter type for 'uri', expected: string" }],
    ['a mistyped optional argument', '{"execute":"x-test-migrate","arguments":{"uri":"u","detach":"t"}}',
      { class: 'GenericError', desc: "Invalid parameter type for 'detach', expected: boolean" }],
    ['a nested mistyped member', '{"execute":"x-test-migrate","arguments":{"uri":"u","caps":[{"capability":"xbzrle","state":"yes"}]}}',
      { class: 'GenericError', desc: "Invalid parameter type for 'caps[0].state', expected: boolean" }],
    ['a bad enum value', '{"execute":"x-test-migrate","arguments":{"uri":"u","caps":[{"capability":"bogus","state":true}]}}',
      { class: 'GenericError', desc: "Parameter 'caps[0].capability' does not accept value 'bogus'" }],
    ['null for a string', '{"execute":"x-test-migrate","arguments":{"uri":null}}',
      { class: 'GenericError', desc: "Invalid parameter type for 'uri', expected: string" }],
  ];
  for (const [what, line, expected] of cases) {
    test(`${what} gets ${String(expected['class'])} and the next command still works`, async () => {
      const reply = await raw.ask(line);
      const error = reply['error'] as { class: string; desc: string } | undefined;
      assert.ok(error, `expected an error for ${line}, got ${JSON.stringify(reply)}`);
      assert.equal(error.class, expected['class']);
      if (typeof expected['desc'] === 'string') assert.equal(error.desc, expected['desc']);
      else assert.ok(error.desc.startsWith(String(expected['prefix'])), error.desc);
      assert.ok(!('id' in reply));
      await stillServes(raw);
    });
  }

  test('the id is echoed whatever its JSON type, on success and on error', async () => {
    for (const id of ['s', 7, 1.5, null, true, [1, 'a'], { deep: { x: [] } }]) {
      const ok = await raw.ask(JSON.stringify({ execute: 'x-test-migrate', arguments: { uri: 'u' }, id }));
      assert.deepEqual(ok, { return: { got: { uri: 'u' } }, id });
      const bad = await raw.ask(JSON.stringify({ execute: 'nonexistent', id }));
      assert.deepEqual(bad, err('CommandNotFound', 'The command nonexistent has not been found', id));
      const shape = await raw.ask(JSON.stringify({ execute: 'query-version', bogus: 1, id }));
      assert.deepEqual(shape, err('GenericError', "QMP input member 'bogus' is unexpected", id));
    }
  });

  test('valid arguments reach the handler as declared', async () => {
    const reply = await raw.ask('{"execute":"x-test-migrate","arguments":{"uri":"tcp:[::1]:4444","detach":true,"caps":[{"capability":"events","state":false}]}}');
    assert.deepEqual(reply, {
      return: { got: { uri: 'tcp:[::1]:4444', detach: true, caps: [{ capability: 'events', state: false }] } },
    });
  });
});

describe('framing over a real socket', () => {
  let server: QmpServer;
  let address: string;
  before(async () => {
    server = newServer();
    address = await server.listen(`unix:${sockPath()}`);
  });
  after(() => server.close());

  test('a message written a byte at a time is answered once', async () => {
    const raw = await Raw.ready(address);
    for (const ch of '{"execute":"query-version","id":"slow"}\r\n') {
      raw.send(ch);
      await new Promise((r) => setTimeout(r, 1));
    }
    assert.equal((await raw.next())['id'], 'slow');
    await raw.quiet(50);
    raw.destroy();
  });

  test('coalesced messages, CRLF and no newline at all are each answered in order', async () => {
    const raw = await Raw.ready(address);
    raw.send('{"execute":"query-version","id":1}\r\n{"execute":"query-version","id":2}{"execute":"query-version","id":3}\n\n  {"execute":"query-version","id":4}');
    for (const id of [1, 2, 3, 4]) assert.equal((await raw.next())['id'], id);
    raw.destroy();
  });

  test('an oversized message is refused, that client is dropped, others are unharmed', async () => {
    const small = track(new QmpServer({ maxMessageBytes: 64 * 1024 }));
    const addr = await small.listen(`unix:${sockPath()}`);
    const bystander = await Raw.ready(addr);
    const hog = await Raw.ready(addr);
    hog.send('{"execute":"query-version","arguments":{"x":"' + 'a'.repeat(200 * 1024));
    const reply = await hog.next();
    assert.equal((reply['error'] as Json)['class'], 'GenericError');
    assert.match(String((reply['error'] as Json)['desc']), /message too large: more than 65536 bytes/);
    await hog.closed();
    await stillServes(bystander);
    assert.equal(small.sessionCount, 1);
    bystander.destroy();
    await small.close();
  });

  test('the default cap is 1 MiB and a huge line on tcp is refused too', async () => {
    const addr = await server.listen('tcp:127.0.0.1:0');
    const hog = await Raw.ready(addr);
    hog.send('"' + 'b'.repeat(1024 * 1024 + 10));
    const reply = await hog.next();
    assert.match(String((reply['error'] as Json)['desc']), /more than 1048576 bytes/);
    await hog.closed();
  });

  test('a client that vanishes mid-message harms nothing', async () => {
    const other = await Raw.ready(address);
    const before = server.sessionCount;
    const quitter = await Raw.ready(address);
    assert.equal(server.sessionCount, before + 1);
    quitter.send('{"execute":"x-test-migrate","argu');
    await new Promise((r) => setTimeout(r, 20));
    quitter.destroy();
    for (let i = 0; i < 100 && server.sessionCount > before; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(server.sessionCount, before);
    await stillServes(other);
    other.destroy();
  });

  test('input that ends without a newline after a half-close is still answered', async () => {
    const raw = await Raw.ready(address);
    raw.socket.end('{"execute":"query-version","id":"last"}');
    assert.equal((await raw.next())['id'], 'last');
    await raw.closed();
  });
});

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
