// tcp: end to end — data both ways with a hash check, IPv6 loopback, connection refused,
// backpressure with a slow reader, a peer process killed mid-stream, destroy().

import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { lookup } from 'node:dns/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { ConfigError, TransportError } from '../src/errors.js';
import { connect, listen } from '../src/transport/index.js';
import { MIGRATION_RECEIVE_BUFFER, MIGRATION_SOCKET_BUFFER } from '../src/transport/socket-buffers.js';
import { StreamChannel } from '../src/transport/stream-channel.js';
import { childResult, randomPayload, receiveAll, sendAll, sha256, spawnNodeChild } from '../src/transport/testing.js';

const MiB = 1024 * 1024;

async function pair(uri: string): Promise<{ source: Awaited<ReturnType<typeof connect>>; destination: Awaited<ReturnType<typeof connect>>; close(): Promise<void>; address: string }> {
  const listener = await listen(uri);
  const accepted = listener.accept();
  const source = await connect(listener.address);
  const destination = await accepted;
  return { source, destination, address: listener.address, close: () => listener.close() };
}

test('tcp: port 0 listens on a real port, and 8 MiB arrive intact from source to destination', async () => {
  const listener = await listen('tcp:127.0.0.1:0');
  assert.match(listener.address, /^tcp:127\.0\.0\.1:\d+$/);
  assert.notEqual(listener.address, 'tcp:127.0.0.1:0');
  const accepted = listener.accept();
  const source = await connect(listener.address);
  const destination = await accepted;
  const data = randomPayload(8 * MiB + 123);
  const [, received] = await Promise.all([sendAll(source, data), receiveAll(destination)]);
  assert.equal(received.bytes, data.byteLength);
  assert.equal(received.sha256, sha256(data));
  // The destination's own end() after the source's end of stream resolves instead of hanging.
  await destination.end();
  assert.equal(await source.read(), null);
  destination.destroy();
  source.destroy();
  await listener.close();
});

test('tcp: a listener hands out several connections in arrival order (multifd-style)', async () => {
  const listener = await listen('tcp:127.0.0.1:0');
  const first = await connect(listener.address);
  await first.write(new Uint8Array([1]));
  const second = await connect(listener.address);
  await second.write(new Uint8Array([2]));
  await sleep(50);
  const a = await listener.accept();
  const b = await listener.accept();
  assert.deepEqual([...(await a.read())!], [1]);
  assert.deepEqual([...(await b.read())!], [2]);
  for (const channel of [first, second, a, b]) channel.destroy();
  await listener.close();
});

test('tcp: the destination can send back to the source (return path direction)', async () => {
  const { source, destination, close } = await pair('tcp:127.0.0.1:0');
  const data = randomPayload(4 * MiB);
  const [, received] = await Promise.all([sendAll(destination, data, 1 * MiB), receiveAll(source)]);
  assert.equal(received.sha256, sha256(data));
  source.destroy();
  destination.destroy();
  await close();
});

test('tcp: a host name (localhost) and IPv6 loopback [::1] both work', async (t) => {
  for (const uri of ['tcp:localhost:0', 'tcp:[::1]:0']) {
    let listener;
    try {
      listener = await listen(uri);
    } catch (err) {
      if (uri.includes('::1') && err instanceof TransportError && /EADDRNOTAVAIL|EAFNOSUPPORT/.test(String((err.cause as Error)?.message))) {
        t.skip('this machine has no IPv6 loopback');
        continue;
      }
      throw err;
    }
    if (uri.includes('::1')) assert.match(listener.address, /^tcp:\[::1\]:\d+$/);
    const accepted = listener.accept();
    const source = await connect(listener.address);
    const destination = await accepted;
    const data = randomPayload(2 * MiB);
    const [, received] = await Promise.all([sendAll(source, data), receiveAll(destination)]);
    assert.equal(received.sha256, sha256(data), `hash over ${uri}`);
    source.destroy();
    destination.destroy();
    await listener.close();
  }
});

test('tcp: "localhost" reaches a destination listening on any one of the addresses it names alone', async () => {
  // The source makes its loopback socket itself, for the first address the name gives; a
  // destination on another of them (::1 where localhost names both) is reached as Node would.
  const addresses = await lookup('localhost', { all: true });
  assert.ok(addresses.length > 0);
  for (const { address } of addresses) {
    const server = net.createServer();
    server.listen(0, address);
    await once(server, 'listening');
    const accepted = once(server, 'connection') as Promise<[net.Socket]>;
    const source = await connect(`tcp:localhost:${(server.address() as net.AddressInfo).port}`);
    const [peer] = await accepted;
    const data = randomPayload(1 * MiB);
    const got: Buffer[] = [];
    peer.on('data', (chunk: Buffer) => got.push(chunk));
    await sendAll(source, data);
    await once(peer, 'end');
    assert.equal(sha256(new Uint8Array(Buffer.concat(got))), sha256(data), `over ${address}`);
    source.destroy();
    peer.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
});

test('tcp: connection refused names the address', async () => {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  await assert.rejects(connect(`tcp:127.0.0.1:${port}`), (err: unknown) => {
    assert.ok(err instanceof TransportError);
    assert.equal(err.message, `Connection refused at tcp:127.0.0.1:${port}`);
    assert.equal(err.code, 'FERRY_ERR_TRANSPORT');
    return true;
  });
});

test('tcp: connecting to port 0 is a ConfigError; listening twice on one port is a TransportError', async () => {
  await assert.rejects(connect('tcp:127.0.0.1:0'), ConfigError);
  const listener = await listen('tcp:127.0.0.1:0');
  await assert.rejects(listen(listener.address), /address is already in use/);
  await listener.close();
  await assert.rejects(listener.accept(), /was closed/);
});

test('tcp: a slow reader holds the writer back (write waits, the read queue stays bounded)', async () => {
  const listener = await listen('tcp:127.0.0.1:0', { readHighWaterMark: 1 * MiB, writeHighWaterMark: 1 * MiB });
  const accepted = listener.accept();
  const source = await connect(listener.address, { writeHighWaterMark: 1 * MiB });
  const destination = await accepted;
  assert.ok(destination instanceof StreamChannel);
  // The kernel holds up to both sockets' buffers (socket-buffers.ts; as it reports them,
  // doubled): the writer may get that far ahead, and no farther.
  const kernelHolds = 2 * (MIGRATION_SOCKET_BUFFER + MIGRATION_RECEIVE_BUFFER);
  const total = kernelHolds + 64 * MiB;
  const chunk = new Uint8Array(256 * 1024).fill(7);
  let sent = 0;
  let waitedWrites = 0;
  const writer = (async () => {
    while (sent < total) {
      const before = performance.now();
      await source.write(chunk);
      if (performance.now() - before > 20) waitedWrites++;
      sent += chunk.byteLength;
    }
    await source.end();
  })();
  // The reader takes one chunk and then sleeps: everything past the buffers must wait.
  const first = await destination.read();
  assert.ok(first);
  await sleep(500);
  const sentWhileStalled = sent;
  assert.ok(sentWhileStalled < kernelHolds + 4 * MiB, `the writer got ${sentWhileStalled / MiB} MiB ahead of a stalled reader`);
  assert.ok(destination.queuedReadBytes <= 2 * MiB, `read queue grew to ${destination.queuedReadBytes} bytes`);
  let received = first.byteLength;
  for (;;) {
    const next = await destination.read();
    if (next === null) break;
    received += next.byteLength;
    assert.ok(destination.queuedReadBytes <= 2 * MiB, `read queue grew to ${destination.queuedReadBytes} bytes`);
  }
  await writer;
  assert.equal(received, total);
  assert.ok(waitedWrites > 0, 'some write must have waited for the reader');
  source.destroy();
  destination.destroy();
  await listener.close();
});

test('tcp: a destination process killed mid-stream fails the source with a TransportError', async () => {
  const listener = await listen('tcp:127.0.0.1:0');
  const accepted = listener.accept();
  // The child reads 1 MiB and then dies hard, leaving the source writing into a dead socket.
  const child = spawnNodeChild(`
    const net = await import('node:net');
    const socket = net.connect({ host: '127.0.0.1', port: ${listener.address.split(':')[2]} });
    let seen = 0;
    socket.on('data', (chunk) => { seen += chunk.length; if (seen >= 1048576) process.kill(process.pid, 'SIGKILL'); });
  `);
  const done = childResult(child);
  const source = await accepted;
  const chunk = new Uint8Array(1 * MiB);
  const error = await (async () => {
    try {
      for (let i = 0; i < 1024; i++) await source.write(chunk);
      await source.end();
    } catch (err) {
      return err;
    }
    return null;
  })();
  assert.ok(error instanceof TransportError, `expected a TransportError, got ${String(error)}`);
  assert.match(error.message, /(reset by the peer|closed the connection) while writing to tcp:127\.0\.0\.1:\d+/);
  // Later calls report the same failure instead of hanging.
  await assert.rejects(source.write(chunk), (err: unknown) => err === error);
  assert.equal((await done).signal, 'SIGKILL');
  source.destroy();
  await listener.close();
});

test('tcp: a source process killed mid-stream with unread data resets the destination, which fails, not hangs', async () => {
  const listener = await listen('tcp:127.0.0.1:0');
  const accepted = listener.accept();
  // The child never reads what the destination sends; that unread data makes its kernel
  // answer the death with a reset instead of an orderly end of stream.
  const child = spawnNodeChild(`
    const net = await import('node:net');
    const socket = net.connect({ host: '127.0.0.1', port: ${listener.address.split(':')[2]} });
    socket.pause();
    socket.write(new Uint8Array(2 * 1048576).fill(1));
    setTimeout(() => process.kill(process.pid, 'SIGKILL'), 300);
  `);
  const done = childResult(child);
  const destination = await accepted;
  await destination.write(new Uint8Array(256 * 1024));
  let received = 0;
  let failure: unknown = null;
  try {
    for (;;) {
      const chunk = await destination.read();
      if (chunk === null) break;
      received += chunk.byteLength;
    }
  } catch (err) {
    failure = err;
  }
  assert.equal((await done).signal, 'SIGKILL');
  assert.ok(failure instanceof TransportError, `expected a reset, got ${String(failure)} after ${received} bytes`);
  assert.match(failure.message, /Connection reset by the peer while (reading from|writing to) tcp:/);
  destination.destroy();
  await listener.close();
});

test('tcp: destroy() rejects a pending read, and write after end() is refused', async () => {
  const { source, destination, close } = await pair('tcp:127.0.0.1:0');
  const pending = destination.read();
  destination.destroy(new Error('cancelled by the test'));
  await assert.rejects(pending, /cancelled by the test/);
  await assert.rejects(destination.write(new Uint8Array(1)), /cancelled by the test/);
  await source.end();
  await assert.rejects(source.write(new Uint8Array(1)), /sending side is closed/);
  source.destroy();
  await assert.rejects(source.read(), /was closed/);
  await close();
});

test('tcp: a destination that closes early (cleanly) fails the source writes instead of hanging them', async () => {
  const { source, destination, close } = await pair('tcp:127.0.0.1:0');
  const chunk = new Uint8Array(1 * MiB);
  await source.write(chunk);
  assert.ok(await destination.read());
  destination.destroy();
  const failure = await (async () => {
    for (let i = 0; i < 256; i++) await source.write(chunk);
    return null;
  })().catch((err: unknown) => err);
  assert.ok(failure instanceof TransportError, `expected a TransportError, got ${String(failure)}`);
  assert.match(failure.message, /peer closed the connection|reset by the peer/);
  assert.match(failure.message, /tcp:127\.0\.0\.1:\d+/);
  source.destroy();
  await close();
});

test('tcp: writes of views over a SharedArrayBuffer (guest RAM shared with a worker) arrive intact', async () => {
  const { source, destination, close } = await pair('tcp:127.0.0.1:0');
  const shared = new Uint8Array(new SharedArrayBuffer(4 * MiB));
  shared.set(randomPayload(4 * MiB));
  const expected = sha256(shared.slice());
  const [, received] = await Promise.all([sendAll(source, shared, 1 * MiB), receiveAll(destination)]);
  assert.equal(received.sha256, expected);
  source.destroy();
  destination.destroy();
  await close();
});

test('tcp: the ,ipv4 option restricts a host name to IPv4', async () => {
  const listener = await listen('tcp:127.0.0.1:0');
  const port = listener.address.split(':')[2];
  const accepted = listener.accept();
  const source = await connect(`tcp:localhost:${port},ipv4`);
  assert.equal(source.description, `tcp:localhost:${port},ipv4`);
  const destination = await accepted;
  assert.match(destination.description, /from 127\.0\.0\.1:\d+$/);
  source.destroy();
  destination.destroy();
  await listener.close();
});

test('tcp: destroy() rejects a write that is waiting for the reader to drain', async () => {
  const { source, destination, close } = await pair('tcp:127.0.0.1:0');
  const chunk = new Uint8Array(1 * MiB);
  let blocked: Promise<void> | null = null;
  // Nobody reads the destination, so the socket buffers fill and a write has to wait.
  for (let i = 0; i < 512 && blocked === null; i++) {
    const write = source.write(chunk);
    const settled = await Promise.race([write.then(() => true), sleep(100).then(() => false)]);
    if (!settled) blocked = write;
  }
  assert.ok(blocked, 'a write should have waited for the unread destination');
  source.destroy(new Error('migrate_cancel'));
  await assert.rejects(blocked, /migrate_cancel/);
  destination.destroy();
  await close();
});

test('tcp: a write the kernel takes at once gives its buffer back before write() returns, exactly once', async (t) => {
  // A sender that only awaits promises never reaches Node's process.nextTick queue, where
  // the socket's own write callback waits; the buffer must come back without it, or the
  // stream writer takes a fresh one (a page fault per 4 KiB) for every write.
  const { source, destination, close } = await pair('tcp:127.0.0.1:0');
  t.after(async () => {
    source.destroy();
    destination.destroy();
    await close();
  });
  let given = 0;
  await source.write(new Uint8Array(4096).fill(7), () => given++);
  assert.equal(given, 1, 'given back at once');
  await sleep(20); // the socket's deferred callback has run by now
  assert.equal(given, 1, 'and not a second time');
  const received = await destination.read();
  assert.equal(received?.byteLength, 4096);
});
