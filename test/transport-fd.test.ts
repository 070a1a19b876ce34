// fd: end to end — a socketpair and real pipes handed to a child as descriptor 3, a regular
// file, fd:NAME through the getfd resolver, and descriptors that cannot be used.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { fstatSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ConfigError, TransportError } from '../src/errors.js';
import { connect, listen } from '../src/transport/index.js';
import {
  childResult,
  randomPayload,
  receiveAll,
  sendAll,
  sha256,
  spawnNodeChild,
  TRANSPORT_MODULE_URL,
} from '../src/transport/testing.js';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'ferry-fd-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Child code that sends 6 MiB of random data over transport.connect(URI) and prints its hash. */
const SEND_SCRIPT = (uri: string): string => `
  const data = crypto.randomBytes(6 * 1048576 + 1);
  const channel = await transport.connect(${JSON.stringify(uri)});
  for (let i = 0; i < data.length; i += 1048576) await channel.write(data.subarray(i, i + 1048576));
  await channel.end();
  channel.destroy();
  console.log(crypto.createHash('sha256').update(data).digest('hex'));
`;

/** Child code that receives over transport.listen(URI) and prints the byte count and hash. */
const RECEIVE_SCRIPT = (uri: string): string => `
  const listener = await transport.listen(${JSON.stringify(uri)});
  const channel = await listener.accept();
  const hash = crypto.createHash('sha256');
  let bytes = 0;
  for (let chunk; (chunk = await channel.read()) !== null; ) { hash.update(chunk); bytes += chunk.length; }
  channel.destroy();
  console.log(bytes, hash.digest('hex'));
`;

function readSocketAll(socket: net.Socket): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  return new Promise((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.byteLength;
    });
    socket.on('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    socket.on('error', reject);
  });
}

test('fd:3 — a socketpair inherited by a child carries its stream to this process', async () => {
  const child = spawnNodeChild(SEND_SCRIPT('fd:3'), ['ignore', 'pipe', 'pipe', 'pipe']);
  const done = childResult(child);
  const received = await readSocketAll(child.stdio[3] as net.Socket);
  const result = await done;
  assert.equal(result.code, 0, result.stderr);
  assert.equal(received.bytes, 6 * MiB + 1);
  assert.equal(received.sha256, result.stdout.trim());
});

test('fd:3 — a child reads a stream from an inherited socketpair', async () => {
  const child = spawnNodeChild(RECEIVE_SCRIPT('fd:3'), ['ignore', 'pipe', 'pipe', 'pipe']);
  const done = childResult(child);
  const data = randomPayload(6 * MiB);
  const socket = child.stdio[3] as net.Socket;
  socket.end(data);
  const result = await done;
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), `${6 * MiB} ${sha256(data)}`);
});

function shellWithScript(name: string, script: string, shell: (scriptPath: string) => string) {
  const path = join(dir, `${name}.mjs`);
  writeFileSync(
    path,
    `import * as transport from ${JSON.stringify(TRANSPORT_MODULE_URL)};\nimport * as crypto from 'node:crypto';\n` +
      `import { fstatSync } from 'node:fs';\n` +
      `if (!fstatSync(3).isFIFO()) throw new Error('descriptor 3 should be a pipe');\n${script}`,
  );
  return spawn('sh', ['-c', shell(`'${process.execPath}' '${path}'`)], { stdio: ['pipe', 'pipe', 'pipe'] });
}

test('fd:3 — a real pipe (shell |) as the source side', async () => {
  // The child's descriptor 3 is the write end of a pipe to cat; its own stdout goes to stderr.
  const child = shellWithScript('pipe-send', SEND_SCRIPT('fd:3'), (node) => `${node} 3>&1 1>&2 | cat`);
  child.stdin.end();
  const hash = createHash('sha256');
  let bytes = 0;
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    bytes += chunk.byteLength;
  });
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const [code] = (await once(child, 'close')) as [number | null];
  assert.equal(code, 0, stderr);
  assert.equal(bytes, 6 * MiB + 1);
  assert.equal(hash.digest('hex'), stderr.trim());
});

test('fd:3 — a real pipe (shell |) as the destination side', async () => {
  const child = shellWithScript('pipe-receive', RECEIVE_SCRIPT('fd:3'), (node) => `cat | ${node} 3<&0 </dev/null`);
  const done = childResult(child);
  const data = randomPayload(6 * MiB);
  child.stdin.end(data);
  const result = await done;
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), `${6 * MiB} ${sha256(data)}`);
});

test('fd:N — a regular file: written by the source, read back by the destination, descriptor closed after', async () => {
  const path = join(dir, 'stream.bin');
  const data = randomPayload(5 * MiB + 7);
  const writeFd = openSync(path, 'w');
  const source = await connect(`fd:${writeFd}`);
  assert.equal(source.description, `fd:${writeFd}`);
  await sendAll(source, data, 1 * MiB);
  assert.throws(() => fstatSync(writeFd), /EBADF/, 'end() closes the descriptor the channel owns');

  const readFd = openSync(path, 'r');
  const listener = await listen(`fd:${readFd}`);
  const destination = await listener.accept();
  await assert.rejects(listener.accept(), /only one connection/);
  const received = await receiveAll(destination);
  assert.equal(received.bytes, data.byteLength);
  assert.equal(received.sha256, sha256(data));
  destination.destroy();
  await listener.close();
});

test('fd:NAME — resolved through the getfd callback; unknown names and a missing resolver are ConfigErrors', async () => {
  const path = join(dir, 'named.bin');
  const data = randomPayload(1 * MiB);
  const fds = new Map<string, number>([['migfile', openSync(path, 'w')]]);
  const resolveFdName = (name: string): number => {
    const fd = fds.get(name);
    if (fd === undefined) throw new Error(`No file descriptor named "${name}"`);
    fds.delete(name);
    return fd;
  };
  const source = await connect('fd:migfile', { resolveFdName });
  assert.match(source.description, /^fd:migfile \(descriptor \d+\)$/);
  await sendAll(source, data);
  const reader = await listen('fd:again', { resolveFdName: () => openSync(path, 'r') });
  assert.equal((await receiveAll(await reader.accept())).sha256, sha256(data));
  await reader.close();

  await assert.rejects(connect('fd:migfile', { resolveFdName }), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.equal(err.message, 'Cannot use fd:migfile: No file descriptor named "migfile"');
    return true;
  });
  await assert.rejects(connect('fd:other'), /no descriptor named "other" was passed with getfd/);
  await assert.rejects(connect('fd:neg', { resolveFdName: () => -1 }), /resolved to -1, not a descriptor/);
});

test('fd:N — a descriptor that is not open, or is a directory, is refused by name', async () => {
  await assert.rejects(connect('fd:987654'), (err: unknown) => {
    assert.ok(err instanceof TransportError);
    assert.match(err.message, /^Failed opening fd:987654: .*EBADF/);
    return true;
  });
  const dirFd = openSync(dir, 'r');
  await assert.rejects(listen(`fd:${dirFd}`), /neither a socket, a pipe, a file nor a character device/);
});
