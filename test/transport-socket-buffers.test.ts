// Migration sockets to this host get large kernel buffers (src/transport/socket-buffers.ts): both sides
// of tcp ones, the sending side of unix ones, listeners too (accepted sockets inherit them).
// With CAP_NET_ADMIN the size is exactly what was asked; without, the sysctl caps decide.
// Loopback tcp ones also leave a pacing congestion control (bbr) for a loss-based one
// (src/transport/loopback-congestion.ts); over a real network the system's choice stands.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setSocketBufferSize, setTcpCongestion, socketBufferSize, tcpCongestion, type SocketBuffer } from '../src/sys/libc.js';
import { LOOPBACK_CONGESTION, loopbackCongestionChoices } from '../src/transport/loopback-congestion.js';
import { fallbackBufferRequest, isLoopbackAddress, MIGRATION_RECEIVE_BUFFER, MIGRATION_SOCKET_BUFFER } from '../src/transport/socket-buffers.js';
import { socketChannel, socketFd } from '../src/transport/socket.js';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'ferry-sockbuf-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('fallbackBufferRequest: without the privileged option, ask only for what beats the kernel\'s own sizing', () => {
  // unix: nothing grows by itself, so as much as the cap allows.
  assert.equal(fallbackBufferRequest(32 * MiB, { cap: 212992, autotuneMax: undefined }), 212992);
  assert.equal(fallbackBufferRequest(32 * MiB, { cap: 64 * MiB, autotuneMax: undefined }), 32 * MiB);
  // tcp: a hand-set size turns autotuning off; Debian's caps (208 KiB; 4 MiB on these
  // machines) are below what tcp reaches by itself (4 MiB to send, 6-32 MiB to receive).
  assert.equal(fallbackBufferRequest(32 * MiB, { cap: 212992, autotuneMax: 4 * MiB }), undefined);
  assert.equal(fallbackBufferRequest(32 * MiB, { cap: 4 * MiB, autotuneMax: 32 * MiB }), undefined);
  assert.equal(fallbackBufferRequest(32 * MiB, { cap: 2 * MiB, autotuneMax: 4 * MiB }), undefined);
  // An administrator who raised the cap past it gets the buffer (the kernel doubles a request).
  assert.equal(fallbackBufferRequest(32 * MiB, { cap: 16 * MiB, autotuneMax: 6 * MiB }), 16 * MiB);
  assert.equal(fallbackBufferRequest(32 * MiB, { cap: 128 * MiB, autotuneMax: 6 * MiB }), 32 * MiB);
});

/** Whether this process may set buffers past the caps (CAP_NET_ADMIN): try on a scratch socket. */
async function forcePermitted(): Promise<boolean> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    return setSocketBufferSize(serverFd(server), 'send', 3 * MiB, true) === 0;
  } finally {
    server.close();
  }
}

function serverFd(server: net.Server): number {
  return (server as unknown as { _handle: { fd: number } })._handle.fd;
}

function sysctl(name: string, index = 0): number {
  return Number(readFileSync(`/proc/sys/${name}`, 'utf8').trim().split(/\s+/)[index]);
}

/** What a migration socket's buffer must report now, or undefined where the kernel sizes it itself. */
function expected(which: SocketBuffer, tcp: boolean, forced: boolean): number | undefined {
  const send = which === 'send';
  // The receiving side is set, not enlarged: to its size, or as much of it as rmem_max allows.
  if (!send) return 2 * (forced ? MIGRATION_RECEIVE_BUFFER : Math.min(MIGRATION_RECEIVE_BUFFER, sysctl('net/core/rmem_max')));
  if (forced) return 2 * MIGRATION_SOCKET_BUFFER;
  const request = fallbackBufferRequest(MIGRATION_SOCKET_BUFFER, {
    cap: sysctl(send ? 'net/core/wmem_max' : 'net/core/rmem_max'),
    autotuneMax: tcp ? sysctl(send ? 'net/ipv4/tcp_wmem' : 'net/ipv4/tcp_rmem', 2) : undefined,
  });
  return request === undefined ? undefined : 2 * request;
}

async function socketPair(listenOptions: net.ListenOptions): Promise<{ a: net.Socket; b: net.Socket; close(): void }> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(listenOptions, resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const address = server.address();
  const a = typeof address === 'string' ? net.connect(address) : net.connect(address!.port, '127.0.0.1');
  await new Promise((resolve) => a.once('connect', resolve));
  const b = await accepted;
  return { a, b, close: () => { a.destroy(); b.destroy(); server.close(); } };
}

test('tcp over loopback: both ends of a migration socket get a 32 MiB send buffer and an 8 MiB receive buffer', async (t) => {
  const forced = await forcePermitted();
  const { a, b, close } = await socketPair({ port: 0, host: '127.0.0.1' });
  t.after(close);
  const before = { send: socketBufferSize(socketFd(a)!, 'send'), receive: socketBufferSize(socketFd(a)!, 'receive') };
  socketChannel(a, 'tcp:a', {});
  socketChannel(b, 'tcp:b', {});
  for (const socket of [a, b]) {
    for (const which of ['send', 'receive'] as const) {
      const want = expected(which, true, forced);
      const got = socketBufferSize(socketFd(socket)!, which);
      if (want === undefined) assert.equal(got >= before[which], true, `${which}: ${got} < ${before[which]}`);
      else assert.equal(got, want, which);
    }
  }
  if (forced) assert.equal(socketBufferSize(socketFd(a)!, 'receive'), 16 * MiB);
  // Set, so tcp does not grow it past that by itself (what a source cannot see waits there).
  assert.ok(socketBufferSize(socketFd(b)!, 'receive') <= 16 * MiB);
});

test('unix: both ends of a migration socket get a 32 MiB send buffer', async (t) => {
  const forced = await forcePermitted();
  const { a, b, close } = await socketPair({ path: join(dir, 'pair.sock') });
  t.after(close);
  socketChannel(a, 'unix:a', {});
  socketChannel(b, 'unix:b', {});
  const want = expected('send', false, forced)!;
  assert.equal(socketBufferSize(socketFd(a)!, 'send'), want);
  assert.equal(socketBufferSize(socketFd(b)!, 'send'), want);
});

test('holdReceived: a tcp channel\'s receive buffer is set as asked (the kernel doubles it); a unix channel has none to hold', async (t) => {
  const forced = await forcePermitted();
  const tcp = await socketPair({ port: 0, host: '127.0.0.1' });
  t.after(tcp.close);
  const channel = socketChannel(tcp.b, 'tcp:b', {});
  assert.equal(typeof channel.holdReceived, 'function');
  channel.holdReceived!(256 * 1024);
  const got = socketBufferSize(socketFd(tcp.b)!, 'receive');
  // The kernel reports twice what was set; without CAP_NET_ADMIN, at most rmem_max.
  if (forced) assert.equal(got, 512 * 1024);
  else assert.ok(got <= 512 * 1024, `receive buffer ${got}`);
  const unix = await socketPair({ path: join(dir, 'hold.sock') });
  t.after(unix.close);
  // A unix socket's unread bytes stay charged to the sender, which sees them already.
  assert.equal(socketChannel(unix.b, 'unix:b', {}).holdReceived, undefined);
});

test('isLoopbackAddress: only this host counts as local', () => {
  for (const local of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) assert.equal(isLoopbackAddress(local), true, local);
  for (const remote of ['10.0.0.1', '192.168.1.127', '::', '::ffff:10.1.1.1', 'fe80::1', '1127.0.0.1', undefined]) {
    assert.equal(isLoopbackAddress(remote), false, String(remote));
  }
});

test('tcp to a non-loopback address keeps the kernel\'s own sizing (a real network\'s bandwidth shows in the first windows)', async (t) => {
  const address = Object.values(networkInterfaces()).flat().find((a) => a !== undefined && !a.internal && a.family === 'IPv4')?.address;
  if (address === undefined) {
    t.skip('this machine has no non-loopback IPv4 address');
    return;
  }
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, address, resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const a = net.connect((server.address() as net.AddressInfo).port, address);
  await new Promise((resolve) => a.once('connect', resolve));
  const b = await accepted;
  t.after(() => {
    a.destroy();
    b.destroy();
    server.close();
  });
  const before = [socketBufferSize(socketFd(a)!, 'send'), socketBufferSize(socketFd(a)!, 'receive')];
  socketChannel(a, `tcp:${address}`, {});
  socketChannel(b, `tcp:${address}`, {});
  const congestion = tcpCongestion(socketFd(a)!);
  socketChannel(a, `tcp:${address}`, {});
  socketChannel(b, `tcp:${address}`, {});
  assert.deepEqual([socketBufferSize(socketFd(a)!, 'send'), socketBufferSize(socketFd(a)!, 'receive')], before);
  assert.notEqual(socketBufferSize(socketFd(b)!, 'send'), 2 * MIGRATION_SOCKET_BUFFER);
  assert.equal(tcpCongestion(socketFd(a)!), congestion, 'the system\'s congestion control stands over a real network');
});

test('loopbackCongestionChoices: a loss-based algorithm stays, any other is replaced by cubic, else reno', () => {
  assert.deepEqual(loopbackCongestionChoices('cubic'), []);
  assert.deepEqual(loopbackCongestionChoices('reno'), []);
  for (const pacing of ['bbr', 'bbr2', 'dctcp', 'vegas']) assert.deepEqual(loopbackCongestionChoices(pacing), ['cubic', 'reno'], pacing);
});

test('tcp over loopback: a migration socket that was set to bbr (which paces) leaves it for cubic or reno', async (t) => {
  const { a, b, close } = await socketPair({ port: 0, host: '127.0.0.1' });
  t.after(close);
  // Whatever the system's default, start both from the pacing algorithm where the kernel has it.
  const paced = [a, b].every((socket) => setTcpCongestion(socketFd(socket)!, 'bbr') === 0);
  if (paced) assert.equal(tcpCongestion(socketFd(a)!), 'bbr');
  socketChannel(a, 'tcp:a', {});
  socketChannel(b, 'tcp:b', {});
  for (const socket of [a, b]) {
    const now = tcpCongestion(socketFd(socket)!);
    assert.ok(LOOPBACK_CONGESTION.includes(now), `${now} is not one of ${LOOPBACK_CONGESTION.join(', ')}`);
  }
  // And the socket still carries bytes both ways.
  const got = new Promise<Buffer>((resolve) => b.once('data', resolve));
  a.write('ferry');
  assert.equal((await got).toString(), 'ferry');
  if (!paced) t.diagnostic('this kernel refused bbr: only checked that the socket uses cubic or reno');
});
