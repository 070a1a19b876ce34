// unix: end to end — data both ways between two processes, stale socket files, missing
// sockets, and the socket file's lifetime.

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { TransportError } from '../src/errors.js';
import { connect, listen } from '../src/transport/index.js';
import { childResult, randomPayload, receiveAll, sendAll, sha256, spawnNodeChild } from '../src/transport/testing.js';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'ferry-unix-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('unix: 8 MiB from a child process (source) arrive intact at this one (destination)', async () => {
  const path = join(dir, 'in.sock');
  const listener = await listen(`unix:${path}`);
  assert.equal(listener.address, `unix:${path}`);
  const accepted = listener.accept();
  const child = spawnNodeChild(`
    const data = crypto.randomBytes(8 * 1048576 + 5);
    const channel = await transport.connect(${JSON.stringify(`unix:${path}`)});
    for (let i = 0; i < data.length; i += 1048576) await channel.write(data.subarray(i, i + 1048576));
    await channel.end();
    console.log(crypto.createHash('sha256').update(data).digest('hex'));
  `);
  const done = childResult(child);
  const destination = await accepted;
  const received = await receiveAll(destination);
  const result = await done;
  assert.equal(result.code, 0, result.stderr);
  assert.equal(received.bytes, 8 * MiB + 5);
  assert.equal(received.sha256, result.stdout.trim());
  destination.destroy();
  await listener.close();
  assert.equal(existsSync(path), false, 'the socket file is removed when the listener closes');
});

test('unix: this process (source) sends 8 MiB to a child (destination) that checks the hash', async () => {
  const path = join(dir, 'out.sock');
  const child = spawnNodeChild(`
    const listener = await transport.listen(${JSON.stringify(`unix:${path}`)});
    console.log('listening');
    const channel = await listener.accept();
    const hash = crypto.createHash('sha256');
    let bytes = 0;
    for (let chunk; (chunk = await channel.read()) !== null; ) { hash.update(chunk); bytes += chunk.length; }
    console.log(bytes, hash.digest('hex'));
    channel.destroy();
    await listener.close();
  `);
  const done = childResult(child);
  await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
  const data = randomPayload(8 * MiB);
  const source = await connect(`unix:${path}`);
  await sendAll(source, data, 512 * 1024);
  source.destroy();
  const result = await done;
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, new RegExp(`${8 * MiB} ${sha256(data)}`));
});

test('unix: a stale socket file is replaced; a regular file in the way is refused', async () => {
  const stale = join(dir, 'stale.sock');
  // A process that dies without cleaning up leaves the bound socket file behind.
  const child = spawnNodeChild(`
    const net = await import('node:net');
    net.createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'));
  `);
  assert.equal((await childResult(child)).signal, 'SIGKILL');
  assert.equal(existsSync(stale), true);
  await assert.rejects(connect(`unix:${stale}`), /Connection refused at unix:/);
  const listener = await listen(`unix:${stale}`);
  const accepted = listener.accept();
  const source = await connect(`unix:${stale}`);
  (await accepted).destroy();
  source.destroy();
  await listener.close();

  const file = join(dir, 'not-a-socket');
  writeFileSync(file, 'precious');
  await assert.rejects(listen(`unix:${file}`), /exists and is not a socket/);
  assert.equal(existsSync(file), true, 'a regular file is never unlinked');
});

test('unix: connecting to a missing socket is a TransportError naming the path', async () => {
  const path = join(dir, 'nobody-here.sock');
  await assert.rejects(connect(`unix:${path}`), (err: unknown) => {
    assert.ok(err instanceof TransportError);
    assert.equal(err.message, `Failed connecting to unix:${path}: no such file or socket`);
    return true;
  });
});

test('unix and tcp: unsent() counts what the peer has not taken yet, and falls to 0 once it has', async () => {
  for (const uri of [`unix:${join(dir, 'unsent.sock')}`, 'tcp:127.0.0.1:0']) {
    const listener = await listen(uri);
    const accepted = listener.accept();
    const source = await connect(listener.address);
    const destination = await accepted;
    try {
      assert.equal(source.unsent?.(), 0, `${uri}: nothing written yet`);
      const data = randomPayload(3 * MiB);
      await source.write(data);
      // The destination has read nothing. A unix socket's queue counts the memory the
      // kernel holds for the bytes (a little more than them); tcp's, what the loopback
      // has not acknowledged (the bytes may already sit in the peer's receive queue).
      const queued = source.unsent!();
      if (uri.startsWith('unix:')) assert.ok(queued >= data.byteLength && queued < data.byteLength * 1.1, `unix: ${queued} bytes queued`);
      else assert.ok(queued >= 0 && queued <= data.byteLength, `tcp: ${queued} bytes queued`);
      let got = 0;
      while (got < data.byteLength) {
        const chunk = await destination.read();
        assert.ok(chunk, 'the stream ended early');
        got += chunk.byteLength;
        destination.release?.(chunk);
      }
      const deadline = Date.now() + 5000;
      while (source.unsent!() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      assert.equal(source.unsent!(), 0, `${uri}: all taken`);
    } finally {
      source.destroy();
      destination.destroy();
      await listener.close();
    }
  }
});
