// QmpClient against a real QEMU (the reference peer), and Ferry's server answering the
// same malformed and mistyped requests with the same error classes and words as QEMU.
// Skips only when qemu-system-x86_64 is not installed (apt-get install qemu-system-x86).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, rmSync, writeSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import koffi from 'koffi';
import { QmpError } from '../src/errors.js';
import { QmpClient } from '../src/qmp/client.js';
import { JsonFramer } from '../src/qmp/framing.js';
import { QmpServer } from '../src/qmp/server.js';

const QEMU = 'qemu-system-x86_64';
const qemuMissing = spawnSync(QEMU, ['--version'], { stdio: 'ignore' }).status !== 0
  ? `${QEMU} is not installed (apt-get install qemu-system-x86)`
  : false;

const dir = mkdtempSync(join(tmpdir(), 'ferry-qemu-qmp-'));
// The sockets' directory goes once every test in this file has run.
after(() => rmSync(dir, { recursive: true, force: true }));
const pipeFn = koffi.load('libc.so.6').func('int pipe(_Out_ int *fds)') as (fds: number[]) => number;

function startQemu(socketPath: string): ChildProcess {
  const child = spawn(QEMU, ['-accel', 'tcg', '-machine', 'none', '-nodefaults', '-display', 'none',
    '-qmp', `unix:${socketPath},server=on,wait=off`], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr?.on('data', () => {});
  return child;
}

async function waitForSocket(path: string, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (child.exitCode !== null) throw new Error(`${QEMU} exited with ${child.exitCode}`);
    if (existsSync(path)) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${QEMU} did not create ${path}`);
}

/** Send raw lines, collect one reply per line (events are skipped). */
async function rawExchange(path: string, lines: readonly string[]): Promise<Record<string, unknown>[]> {
  const socket = net.connect(path);
  const framer = new JsonFramer({ maxMessageBytes: 1 << 24 });
  const replies: Record<string, unknown>[] = [];
  let wake: () => void = () => {};
  socket.on('data', (chunk) => {
    for (const f of framer.push(chunk)) {
      if (f.kind !== 'message') continue;
      const m = JSON.parse(f.text) as Record<string, unknown>;
      if (!('event' in m)) replies.push(m);
    }
    wake();
  });
  const nextReply = async (count: number): Promise<void> => {
    const deadline = Date.now() + 5000;
    while (replies.length < count) {
      if (Date.now() > deadline) throw new Error(`no reply to line ${count - 1} of ${path}`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 20);
      });
    }
  };
  await nextReply(1); // greeting
  for (let i = 0; i < lines.length; i++) {
    socket.write(lines[i] + '\n');
    await nextReply(i + 2);
  }
  socket.destroy();
  return replies.slice(1);
}

describe('against QEMU 7.2', { skip: qemuMissing }, () => {
  let qemu: ChildProcess;
  let path: string;
  before(async () => {
    path = join(dir, 'qemu.sock');
    qemu = startQemu(path);
    await waitForSocket(path, qemu);
  });
  after(() => {
    if (qemu.exitCode === null) qemu.kill('SIGKILL');
  });

  test('QmpClient negotiates and runs commands; errors carry QEMU’s class', async () => {
    const client = await QmpClient.connect(path);
    assert.ok(client.greeting.QMP.version.qemu.major >= 7);
    assert.ok(client.greeting.QMP.capabilities.includes('oob'));
    const version = await client.execute<{ qemu: { major: number }; package: string }>('query-version');
    assert.equal(version.qemu.major, client.greeting.QMP.version.qemu.major);
    const status = await client.execute<{ status: string; running: boolean }>('query-status');
    assert.equal(typeof status.status, 'string');
    await assert.rejects(client.execute('no-such-command'), (e: unknown) =>
      e instanceof QmpError && e.errorClass === 'CommandNotFound' && e.message === 'The command no-such-command has not been found');
    await assert.rejects(client.execute('query-status', { bogus: 1 }), (e: unknown) =>
      e instanceof QmpError && e.errorClass === 'GenericError' && e.message === "Parameter 'bogus' is unexpected");

    await client.execute('stop');
    assert.equal((await client.waitForEvent('STOP', undefined, 5000)).event, 'STOP');
    assert.equal((await client.execute<{ running: boolean }>('query-status')).running, false);
    await client.execute('cont');
    assert.equal((await client.waitForEvent('RESUME', undefined, 5000)).event, 'RESUME');
    await client.close();
  });

  test('sendFd hands QEMU a pipe with getfd; closefd closes it there', async () => {
    const client = await QmpClient.connect(path);
    const fds = [0, 0];
    assert.equal(pipeFn(fds), 0);
    await client.sendFd('ferrytest', fds[0]!);
    await client.execute('closefd', { fdname: 'ferrytest' });
    await assert.rejects(client.execute('closefd', { fdname: 'ferrytest' }), /File descriptor named 'ferrytest' not found/);
    // QEMU closed its copy: with ours closed too, writing finds no reader.
    closeSync(fds[0]!);
    assert.throws(() => writeSync(fds[1]!, 'x'), /EPIPE/);
    closeSync(fds[1]!);
    await client.close();
  });

  test('Ferry’s server answers the same bad requests with QEMU’s classes and words', async (t) => {
    const ferry = new QmpServer();
    t.after(() => ferry.close());
    const ferryPath = join(dir, 'ferry.sock');
    await ferry.listen(ferryPath);
    // Each line is sent to both on a fresh, unnegotiated connection, then negotiated ones.
    const beforeNegotiation = ['{"execute":"query-version"}', '{"execute":"no-such","id":5}', '[1]', '42', '{"foo":1}',
      '{"execute":1}', '{"execute":"query-version","arguments":[]}', '{"arguments":{}}'];
    const afterNegotiation = ['{"execute":"qmp_capabilities"}', '{"execute":"qmp_capabilities","id":"again"}',
      '{"execute":"no-such","id":{"a":[1]}}', '{"execute":"query-version","arguments":{"x":1}}',
      '{"execute":"getfd","arguments":{}}', '{"execute":"getfd","arguments":{"fdname":5}}',
      '{"execute":"getfd","arguments":{"fdname":"x"},"id":null}', '{"execute":"closefd","arguments":{"fdname":"nope"}}',
      '{"execute":"query-version","foo":1,"id":7}', '"str"'];
    for (const lines of [beforeNegotiation, afterNegotiation]) {
      const fromQemu = await rawExchange(path, lines);
      const fromFerry = await rawExchange(ferryPath, lines);
      lines.forEach((line, i) => assert.deepEqual(fromFerry[i], fromQemu[i], `reply to ${line}`));
    }
    await ferry.close();
  });

  test('quit: QEMU replies, announces SHUTDOWN and the connection ends', async () => {
    const client = await QmpClient.connect(path);
    const closed = new Promise((r) => client.once('close', r));
    await client.execute('quit');
    await client.waitForEvent('SHUTDOWN', undefined, 5000);
    await closed;
    await new Promise((r) => (qemu.exitCode !== null ? r(null) : qemu.once('exit', r)));
  });
});
