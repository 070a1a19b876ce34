import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, readSync, rmSync, writeSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import koffi from 'koffi';
import { ScmRightsReader, sendWithFds, scmRightsSupported } from './scm-rights.js';

const pipe = koffi.load('libc.so.6').func('int pipe(_Out_ int *fds)') as (fds: number[]) => number;

function makePipe(): [number, number] {
  const fds = [0, 0];
  assert.equal(pipe(fds), 0, 'pipe() failed');
  return [fds[0]!, fds[1]!];
}

interface Pair {
  server: net.Server;
  accepted: net.Socket;
  client: net.Socket;
}

const dir = mkdtempSync(join(tmpdir(), 'ferry-scm-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let pairs = 0;

async function socketPair(): Promise<Pair> {
  const path = join(dir, `s${++pairs}.sock`);
  let accepted: net.Socket | undefined;
  const server = net.createServer({ pauseOnConnect: true }, (s) => (accepted = s));
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const client = net.connect(path);
  await new Promise<void>((resolve) => client.once('connect', resolve));
  while (!accepted) await new Promise((r) => setTimeout(r, 5));
  return { server, accepted, client };
}

function fdOf(socket: net.Socket): number {
  return (socket as unknown as { _handle: { fd: number } })._handle.fd;
}

test('SCM_RIGHTS is available on this machine', () => {
  assert.equal(scmRightsSupported(), true);
});

test('a pipe fd sent with sendWithFds arrives through ScmRightsReader and reads the pipe', async () => {
  const { server, accepted, client } = await socketPair();
  const [readEnd, writeEnd] = makePipe();
  const chunks: string[] = [];
  const received: number[] = [];
  let ended = false;
  const reader = new ScmRightsReader(fdOf(accepted), {
    data: (chunk, fds) => {
      chunks.push(Buffer.from(chunk).toString());
      received.push(...fds);
    },
    end: () => (ended = true),
    error: (err) => assert.fail(err),
  });
  assert.equal(sendWithFds(fdOf(client), Buffer.from('hello'), [readEnd]), 5);
  closeSync(readEnd); // the receiver holds its own copy now
  client.write(' world');
  while (chunks.join('') !== 'hello world') await new Promise((r) => setTimeout(r, 5));
  assert.equal(received.length, 1);

  writeSync(writeEnd, 'through the pipe');
  closeSync(writeEnd);
  const buf = Buffer.alloc(64);
  const n = readSync(received[0]!, buf);
  assert.equal(buf.subarray(0, n).toString(), 'through the pipe');
  closeSync(received[0]!);

  client.end();
  while (!ended) await new Promise((r) => setTimeout(r, 5));
  reader.close();
  reader.close(); // idempotent
  accepted.destroy();
  server.close();
});

test('libuv can still write through the original socket while the reader owns receiving', async () => {
  const { server, accepted, client } = await socketPair();
  const reader = new ScmRightsReader(fdOf(accepted), { data: () => {}, end: () => {}, error: () => {} });
  const got = new Promise<string>((resolve) => client.once('data', (d) => resolve(d.toString())));
  accepted.write('pong');
  assert.equal(await got, 'pong');
  reader.close();
  accepted.destroy();
  client.destroy();
  server.close();
});

test('sendWithFds refuses empty data and bad fd counts', () => {
  assert.throws(() => sendWithFds(0, new Uint8Array(0), [1]), RangeError);
  assert.throws(() => sendWithFds(0, Uint8Array.of(1), []), RangeError);
});

test('sendWithFds on a non-socket fd throws a SystemCallError naming sendmsg', () => {
  const [r, w] = makePipe();
  assert.throws(() => sendWithFds(w, Uint8Array.of(1), [r]), (err: Error & { syscall?: string }) => {
    assert.equal(err.syscall, 'sendmsg');
    assert.match(err.message, /ENOTSOCK/);
    return true;
  });
  closeSync(r);
  closeSync(w);
});
