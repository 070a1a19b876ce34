// `ferry qmp`: key=value parsing, the printed return value, and error output and exit codes,
// against a real Ferry QMP server.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { ConfigError, QmpError } from '../src/errors.js';
import { parseQmpArguments, qmpCommand, type QmpCommandIo } from '../src/cli/qmp-command.js';
import { QmpServer } from '../src/qmp/server.js';
import { t } from '../src/qmp/schema.js';

function capture(): QmpCommandIo & { out: string; err: string } {
  const io = {
    out: '',
    err: '',
    stdout: { write: (s: string) => (io.out += s) },
    stderr: { write: (s: string) => (io.err += s) },
  };
  return io;
}

test('values are JSON when they parse, strings otherwise; dots nest', () => {
  assert.deepEqual(
    parseQmpArguments(['uri=tcp:127.0.0.1:4444', 'detach=true', 'limit=300', 'n=null', 'digits="300"', 'obj={"a":[1]}',
      'empty=', 'p.downtime-limit=30', 'p.inner.x=1.5', 'words=hello world']),
    {
      uri: 'tcp:127.0.0.1:4444', detach: true, limit: 300, n: null, digits: '300', obj: { a: [1] },
      empty: '', p: { 'downtime-limit': 30, inner: { x: 1.5 } }, words: 'hello world',
    },
  );
  assert.deepEqual(parseQmpArguments(['command-line=info migrate']), { 'command-line': 'info migrate' });
  assert.deepEqual(parseQmpArguments(['eq=a=b']), { eq: 'a=b' });
});

test('malformed key=value words are ConfigErrors naming the word', () => {
  for (const [words, pattern] of [
    [['novalue'], /"novalue": expected key=value/],
    [['=x'], /"=x": expected key=value/],
    [['a..b=1'], /empty member name/],
    [['a=1', 'a.b=2'], /"a" is already set to a non-object value/],
    [['a=1', 'a=2'], /"a" is given twice/],
  ] as const) {
    assert.throws(() => parseQmpArguments(words), (e: unknown) => e instanceof ConfigError && pattern.test(e.message));
  }
});

describe('qmpCommand against a Ferry server', () => {
  let server: QmpServer;
  let path: string;
  before(async () => {
    server = new QmpServer();
    server.register({
      name: 'x-echo',
      args: { 'uri?': t.str, 'detach?': t.bool, 'p?': t.object({ 'downtime-limit?': t.uint }) },
      handler: (args) => ({ args }),
    });
    server.register({ name: 'x-missing', handler: () => { throw new QmpError('DeviceNotFound', "Device 'serial9' not found"); } });
    path = join(mkdtempSync(join(tmpdir(), 'ferry-qmpcli-')), 'q.sock');
    await server.listen(`unix:${path}`);
  });
  after(async () => {
    await server.close();
    rmSync(dirname(path), { recursive: true, force: true });
  });

  test('prints the return value as one JSON line, or indented with --pretty', async () => {
    const io = capture();
    assert.equal(await qmpCommand(path, 'x-echo', ['uri=unix:/x', 'detach=false', 'p.downtime-limit=30'], {}, io), 0);
    assert.equal(io.out, '{"args":{"uri":"unix:/x","detach":false,"p":{"downtime-limit":30}}}\n');
    assert.equal(io.err, '');
    const pretty = capture();
    assert.equal(await qmpCommand(`unix:${path}`, 'query-version', [], { pretty: true }, pretty), 0);
    assert.deepEqual(JSON.parse(pretty.out), server.version);
    assert.match(pretty.out, /^\{\n {2}"qemu": \{/);
  });

  test('a QMP error prints "error: <class>: <desc>" and exits 1', async () => {
    const io = capture();
    assert.equal(await qmpCommand(path, 'x-missing', [], {}, io), 1);
    assert.equal(io.err, "error: DeviceNotFound: Device 'serial9' not found\n");
    assert.equal(io.out, '');
    const bad = capture();
    assert.equal(await qmpCommand(path, 'x-echo', ['detach=yes'], {}, bad), 1);
    assert.equal(bad.err, "error: GenericError: Invalid parameter type for 'detach', expected: boolean\n");
    const unknown = capture();
    assert.equal(await qmpCommand(path, 'nonexistent', [], {}, unknown), 1);
    assert.equal(unknown.err, 'error: CommandNotFound: The command nonexistent has not been found\n');
  });

  test('no server, or bad arguments: a one-line error and a non-zero exit', async () => {
    const io = capture();
    assert.equal(await qmpCommand(join(tmpdir(), 'ferry-no-such.sock'), 'query-status', [], {}, io), 1);
    assert.match(io.err, /^error: Cannot connect to QMP at unix:.*ferry-no-such\.sock/);
    const usage = capture();
    assert.equal(await qmpCommand(path, 'x-echo', ['oops'], {}, usage), 2);
    assert.match(usage.err, /^error: Invalid QMP argument "oops"/);
  });
});
