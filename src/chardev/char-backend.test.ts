import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConfigError } from '../errors.js';
import { openCharBackend } from './char-backend.js';

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-chardev-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('chardev: bad specs are ConfigErrors that name the value', async () => {
  for (const spec of ['', 'tcp:1234', 'file:', 'unix:', 'unix:/tmp/x,telnet', 'stdio2', 'vc']) {
    await assert.rejects(openCharBackend(spec), (e: unknown) => e instanceof ConfigError && e.message.includes(`"${spec}"`), spec);
  }
});

test('chardev: null and none discard output and have no input', async () => {
  for (const spec of ['null', 'none'] as const) {
    const b = await openCharBackend(spec);
    assert.equal(b.kind, spec);
    b.write(bytes('nowhere'));
    b.onInput(() => assert.fail('no input expected'));
    await b.close();
  }
});

test('chardev file: output lands in the file in order, truncating what was there', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'console.log');
  writeFileSync(path, 'old content that must go');
  const b = await openCharBackend(`file:${path}`);
  assert.equal(b.kind, 'file');
  assert.equal(b.description, `file:${path}`);
  const chunk = bytes('pass 1\n');
  b.write(chunk);
  chunk.fill(0x21); // the backend copied it
  for (let i = 2; i <= 1000; i++) b.write(bytes(`pass ${i}\n`));
  await b.close();
  const expected = Array.from({ length: 1000 }, (_, i) => `pass ${i + 1}\n`).join('');
  assert.equal(readFileSync(path, 'utf8'), expected);
  b.write(bytes('after close is ignored'));
  await b.close();
});

test('chardev file: a path that cannot be opened fails at once, naming it', async (t) => {
  const dir = tempDir(t);
  await assert.rejects(openCharBackend(`file:${join(dir, 'missing', 'x.log')}`), (e: unknown) => e instanceof ConfigError && e.message.includes('missing/x.log') && /ENOENT/.test(e.message));
});

async function connectClient(path: string): Promise<{ socket: Socket; received: () => string; waitFor: (text: string) => Promise<void> }> {
  const socket = connect(path);
  await once(socket, 'connect');
  let data = '';
  socket.on('data', (c: Buffer) => { data += c.toString(); });
  const waitFor = async (text: string): Promise<void> => {
    const deadline = Date.now() + 3000;
    while (!data.includes(text)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${JSON.stringify(text)}; got ${JSON.stringify(data)}`);
      await sleep(5);
    }
  };
  return { socket, received: () => data, waitFor };
}

test('chardev unix: two clients both see the output, and input from either reaches the guest', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'console.sock');
  const b = await openCharBackend(`unix:${path},server,nowait`);
  assert.equal(b.kind, 'unix');
  const input: string[] = [];
  b.onInput((data) => input.push(Buffer.from(data).toString()));
  b.write(bytes('before anyone connects\n')); // dropped, as QEMU does without a client

  const one = await connectClient(path);
  const two = await connectClient(path);
  await sleep(20); // let the server register both
  b.write(bytes('login: '));
  await one.waitFor('login: ');
  await two.waitFor('login: ');
  assert.equal(one.received(), 'login: ');

  one.socket.write('root\n');
  await sleep(20);
  two.socket.write('ls\n');
  const deadline = Date.now() + 3000;
  while (input.join('') !== 'root\nls\n' && Date.now() < deadline) await sleep(5);
  assert.equal(input.join(''), 'root\nls\n');

  // One client leaving does not disturb the other.
  one.socket.destroy();
  await sleep(20);
  b.write(bytes('still here'));
  await two.waitFor('still here');

  const ended = once(two.socket, 'end');
  await b.close();
  await ended;
  assert.equal(existsSync(path), false, 'the socket file is removed on close');
  two.socket.destroy();
});

test('chardev unix: a stale socket file is replaced, a regular file is refused', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'console.sock');
  // A socket file nobody listens on, as a crashed run leaves it (Node would unlink its own).
  execFileSync('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', path]);
  assert.equal(lstatSync(path).isSocket(), true);
  const backend = await openCharBackend(`unix:${path}`);
  const client = await connectClient(path);
  await sleep(20);
  backend.write(bytes('ok'));
  await client.waitFor('ok');
  client.socket.destroy();
  await backend.close();

  const file = join(dir, 'plain');
  writeFileSync(file, 'x');
  await assert.rejects(openCharBackend(`unix:${file}`), (e: unknown) => e instanceof ConfigError && /exists and is not a socket/.test(e.message));
  assert.equal(readFileSync(file, 'utf8'), 'x');
});

const moduleUrl = new URL('./char-backend.js', import.meta.url).href;

/** Run a child node process that opens `--serial stdio` and does what `body` says. */
function child(body: string, stdin: 'pipe' | 'ignore') {
  const script = `const { openCharBackend } = await import(${JSON.stringify(moduleUrl)});\n${body}`;
  const proc = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: [stdin, 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
  proc.stderr!.on('data', (c: Buffer) => { err += c.toString(); });
  const exited = new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    proc.on('close', (code) => resolve({ code, out, err }));
  });
  return { proc, exited };
}

test('chardev stdio: input from a pipe reaches the guest, output goes to stdout', async () => {
  const { proc, exited } = child(`
    const b = await openCharBackend('stdio');
    const keepAlive = setTimeout(() => process.exit(3), 5000);
    b.onInput((data) => {
      b.write(new TextEncoder().encode('got:' + Buffer.from(data).toString().toUpperCase()));
      clearTimeout(keepAlive);
      void b.close();
    });
    b.write(new TextEncoder().encode('ready\\n'));
  `, 'pipe');
  await sleep(300);
  proc.stdin!.write('hello');
  const { code, out, err } = await exited;
  assert.equal(err, '');
  assert.equal(code, 0);
  assert.equal(out, 'ready\ngot:HELLO');
});

test('chardev stdio: an open stdin pipe does not keep the process alive', async () => {
  const { proc, exited } = child(`
    const b = await openCharBackend('stdio');
    b.onInput(() => {});
    b.write(new TextEncoder().encode('bye'));
  `, 'pipe');
  const timer = setTimeout(() => proc.kill(), 5000);
  const { code, out, err } = await exited;
  clearTimeout(timer);
  assert.equal(err, '');
  assert.equal(code, 0, 'the child exited on its own while its stdin was still open');
  assert.equal(out, 'bye');
  proc.stdin!.destroy();
});

test('chardev stdio: stdin that is not a terminal or pipe is not read', async () => {
  const { exited } = child(`
    const b = await openCharBackend('stdio');
    b.onInput(() => { throw new Error('input from /dev/null'); });
    await new Promise((r) => setTimeout(r, 100));
    b.write(new TextEncoder().encode('done'));
  `, 'ignore');
  const { code, out, err } = await exited;
  assert.equal(err, '');
  assert.equal(code, 0);
  assert.equal(out, 'done');
});
