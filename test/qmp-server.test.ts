// The QMP server over real sockets, spoken to byte by byte as a client would: greeting,
// negotiation, every error path (and that the server keeps serving after each), framing
// and oversized input. Sessions, events, flow control, handlers and listening are in
// qmp-server-sessions.test.ts.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { QmpServer } from '../src/qmp/server.js';
import { Raw, err, newServer, sockPath, stillServes, track, type Json } from './qmp-test-helpers.js';

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

