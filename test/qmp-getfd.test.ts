// getfd/closefd for real: a pipe's fd crosses the QMP unix socket with SCM_RIGHTS (from
// python3's socket.send_fds, as libvirt would send it, and from QmpClient.sendFd), and
// bytes written into the pipe come out of the fd the server received.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, fstatSync, mkdtempSync, readdirSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import koffi from 'koffi';
import { QmpError } from '../src/errors.js';
import { QmpClient } from '../src/qmp/client.js';
import { FdRegistry } from '../src/qmp/fd-registry.js';
import { QmpServer } from '../src/qmp/server.js';

const dir = mkdtempSync(join(tmpdir(), 'ferry-getfd-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const pipeFn = koffi.load('libc.so.6').func('int pipe(_Out_ int *fds)') as (fds: number[]) => number;

function makePipe(): [number, number] {
  const fds = [0, 0];
  assert.equal(pipeFn(fds), 0);
  return [fds[0]!, fds[1]!];
}

function readAll(fd: number, expected: number): string {
  const buf = Buffer.alloc(expected);
  let got = 0;
  while (got < expected) {
    const n = readSync(fd, buf, got, expected - got, null);
    if (n === 0) break;
    got += n;
  }
  return buf.subarray(0, got).toString();
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

/** Runs python3 as a QMP client that passes the read end of a pipe it made itself. */
function pythonPassesPipe(socketPath: string, fdname: string, message: string, command = 'getfd'): Promise<{ replies: unknown[]; code: number }> {
  const script = String.raw`
import json, os, socket, sys
path, fdname, message, command = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
f = s.makefile('rb')
def reply():
    return json.loads(f.readline())
replies = [reply()]
s.sendall(b'{"execute":"qmp_capabilities"}\n'); replies.append(reply())
r, w = os.pipe()
args = {"fdname": fdname} if command == "getfd" else {}
cmd = json.dumps({"execute": command, "arguments": args, "id": "fd"}).encode() + b"\n"
socket.send_fds(s, [cmd], [r])
os.close(r)
replies.append(reply())
os.write(w, message.encode())
os.close(w)
if command == "getfd":
    s.sendall(b'{"execute":"getfd","arguments":{"fdname":"none"},"id":"no-fd"}\n'); replies.append(reply())
print(json.dumps(replies))
`;
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-c', script, socketPath, fdname, message, command], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ replies: JSON.parse(out || '[]') as unknown[], code: code ?? -1 }));
  });
}

describe('getfd over a unix QMP socket', () => {
  let server: QmpServer;
  let path: string;
  before(async () => {
    server = new QmpServer();
    path = join(dir, 'qmp.sock');
    await server.listen(`unix:${path}`);
  });
  after(() => server.close());

  test('a pipe fd from python3 socket.send_fds lands in the registry and carries the bytes', async () => {
    const { replies, code } = await pythonPassesPipe(path, 'migfd', 'bytes through the passed pipe');
    assert.equal(code, 0);
    assert.deepEqual(replies[1], { return: {} });
    assert.deepEqual(replies[2], { return: {}, id: 'fd' });
    assert.deepEqual(replies[3], {
      error: { class: 'GenericError', desc: 'No file descriptor supplied via SCM_RIGHTS' },
      id: 'no-fd',
    });
    assert.ok(server.fds.has('migfd'));
    const fd = server.fds.take('migfd');
    assert.equal(server.fds.has('migfd'), false);
    assert.ok(fstatSync(fd).isFIFO());
    assert.equal(readAll(fd, 64), 'bytes through the passed pipe');
    closeSync(fd);
    assert.throws(() => server.fds.take('migfd'), (e: unknown) =>
      e instanceof QmpError && e.errorClass === 'GenericError' && e.message === "File descriptor named 'migfd' has not been found");
  });

  test('QmpClient.sendFd passes a pipe; closefd closes it; a second closefd fails as in QEMU', async () => {
    const client = await QmpClient.connect(path);
    const [r, w] = makePipe();
    await client.sendFd('viaclient', r);
    closeSync(r);
    writeSync(w, 'hello from node');
    closeSync(w);
    const fd = server.fds.take('viaclient');
    assert.equal(readAll(fd, 64), 'hello from node');
    // Put it back under a name and close it over QMP.
    server.fds.add('again', fd);
    await client.execute('closefd', { fdname: 'again' });
    assert.equal(isOpen(fd), false);
    await assert.rejects(client.execute('closefd', { fdname: 'again' }), (e: unknown) =>
      e instanceof QmpError && e.message === "File descriptor named 'again' not found");
    await client.close();
  });

  test('a name starting with a digit is refused and the passed fd is not leaked', async () => {
    const client = await QmpClient.connect(path);
    const [r, w] = makePipe();
    const before = openFds();
    await assert.rejects(client.sendFd('3bad', r), (e: unknown) =>
      e instanceof QmpError && e.message === "Parameter 'fdname' expects a name not starting with a digit");
    assert.equal(openFds(), before);
    closeSync(r);
    closeSync(w);
    await client.close();
  });

  test('getfd with the same name again replaces and closes the old fd', async () => {
    const client = await QmpClient.connect(path);
    const [r1, w1] = makePipe();
    const [r2, w2] = makePipe();
    await client.sendFd('same', r1);
    const held = openFds();
    await client.sendFd('same', r2);
    assert.equal(openFds(), held, 'the first fd should have been closed when replaced');
    writeSync(w2, 'second');
    const fd = server.fds.take('same');
    assert.equal(readAll(fd, 6), 'second');
    for (const f of [fd, r1, w1, r2, w2]) closeSync(f);
    await client.close();
  });

  test('getfd without an attached fd, and on tcp, is QEMU’s error', async () => {
    const unix = await QmpClient.connect(path);
    await assert.rejects(unix.execute('getfd', { fdname: 'x' }), (e: unknown) =>
      e instanceof QmpError && e.errorClass === 'GenericError' && e.message === 'No file descriptor supplied via SCM_RIGHTS');
    await unix.close();
    const tcpAddr = await server.listen('tcp:127.0.0.1:0');
    const tcp = await QmpClient.connect(tcpAddr);
    await assert.rejects(tcp.execute('getfd', { fdname: 'x' }), /No file descriptor supplied via SCM_RIGHTS/);
    const [r, w] = makePipe();
    await assert.rejects(tcp.sendFd('x', r), /only be passed over a unix socket/);
    closeSync(r);
    closeSync(w);
    await tcp.close();
  });

  test('fds passed and never claimed are closed when the client leaves', async () => {
    const base = openFds();
    // The fd rides along with a command that does not take it.
    const { replies } = await pythonPassesPipe(path, '', 'x', 'query-commands');
    assert.ok(Array.isArray((replies[2] as { return: unknown }).return));
    for (let i = 0; i < 50 && openFds() > base; i++) await new Promise((res) => setTimeout(res, 10));
    assert.equal(openFds(), base);
  });

  test('server.close() closes fds still held', async (t) => {
    const s = new QmpServer();
    t.after(() => s.close());
    const p = join(dir, 'close.sock');
    await s.listen(p);
    const client = await QmpClient.connect(p);
    const [r, w] = makePipe();
    await client.sendFd('held', r);
    await client.close();
    const held = s.fds.take('held');
    s.fds.add('held', held);
    await s.close();
    assert.equal(isOpen(held), false);
    closeSync(r);
    closeSync(w);
  });
});

test('FdRegistry on its own: add, take, close, names, closeAll', () => {
  const reg = new FdRegistry();
  const [r, w] = makePipe();
  reg.add('a', r);
  reg.add('b', w);
  assert.deepEqual(reg.names().sort(), ['a', 'b']);
  assert.equal(reg.size, 2);
  assert.equal(reg.take('a'), r);
  assert.throws(() => reg.add('', 5), /non-empty/);
  reg.closeAll();
  assert.equal(reg.size, 0);
  assert.equal(isOpen(w), false);
  assert.equal(isOpen(r), true);
  closeSync(r);
});
