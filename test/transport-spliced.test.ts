// Vectored writes to unix sockets through a pipe (spliced-writes.ts): pages go by reference,
// the bytes around them are copied into a ring that is written again only once the peer has
// read what was sent from it, and a channel over a unix socket takes this path.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TransportError } from '../src/errors.js';
import { addressOf, setSocketBufferSize } from '../src/sys/libc.js';
import { socketFd } from '../src/transport/socket.js';
import { SplicedWrites } from '../src/transport/spliced-writes.js';
import { connect, listen } from '../src/transport/index.js';
import { StreamChannel } from '../src/transport/stream-channel.js';
import { randomPayload } from '../src/transport/testing.js';
import type { VectoredBatch } from '../src/transport/channel.js';

const PAGE = 4096;

/** A connected pair of plain unix sockets; the sender's descriptor for SplicedWrites. */
async function unixPair(): Promise<{ sender: net.Socket; receiver: net.Socket; close(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-spliced-'));
  const path = join(dir, 's.sock');
  const server = net.createServer();
  server.listen(path);
  await once(server, 'listening');
  const accepted = once(server, 'connection');
  const sender = net.connect({ path });
  await once(sender, 'connect');
  const [receiver] = (await accepted) as [net.Socket];
  return {
    sender,
    receiver,
    close: async () => {
      sender.destroy();
      receiver.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Read everything until the end, pausing `pauseMs` after each read so that the sender fills the socket. */
async function readSlowly(socket: net.Socket, pauseMs: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  socket.pause();
  await sleep(pauseMs * 4);
  for await (const chunk of socket) {
    chunks.push(chunk as Buffer);
    socket.pause();
    await sleep(pauseMs);
    socket.resume();
  }
  return Buffer.concat(chunks);
}

test('spliced writes: headers rewritten in the caller\'s buffer after each batch still arrive as they were, through a ring far smaller than what is in flight', async () => {
  const { sender, receiver, close } = await unixPair();
  try {
    const ram = randomPayload(4 * 1024 * 1024);
    const ramAddress = Number(addressOf(ram));
    // 64 pages a batch (264 KiB), each after an 8-byte header: 512 bytes of the ring a
    // batch, and a ring of 1 KiB, so it comes round every 2 batches while the socket holds
    // megabytes the peer has not read.
    const fd = socketFd(sender)!;
    if (setSocketBufferSize(fd, 'send', 4 * 1024 * 1024, true) !== 0) setSocketBufferSize(fd, 'send', 4 * 1024 * 1024);
    const writes = SplicedWrites.open('unix:test', () => socketFd(sender), 1024);
    assert.ok(writes instanceof SplicedWrites, String(writes));
    const perBatch = 64;
    const batches = 400;
    const buffer = new Uint8Array(perBatch * 8);
    const view = new DataView(buffer.buffer);
    const at = new Uint32Array(perBatch);
    const address = new Float64Array(perBatch);
    const bytes = new Uint32Array(perBatch).fill(PAGE);
    const expected: Uint8Array[] = [];
    const received = readSlowly(receiver, 5);
    for (let b = 0; b < batches; b++) {
      for (let i = 0; i < perBatch; i++) {
        const page = (b * perBatch + i) * 7 % (ram.byteLength / PAGE);
        view.setUint32(i * 8, b, false);
        view.setUint32(i * 8 + 4, i, false);
        at[i] = (i + 1) * 8;
        address[i] = ramAddress + page * PAGE;
        expected.push(buffer.slice(i * 8, i * 8 + 8), ram.subarray(page * PAGE, (page + 1) * PAGE));
      }
      const batch: VectoredBatch = { buffer, length: buffer.byteLength, count: perBatch, at, address, bytes };
      const rest = writes.write(batch, () => null);
      if (rest) await rest;
      // The caller writes its buffer again at once, as the stream writer does.
      buffer.fill(0xee);
    }
    sender.end();
    const got = await received;
    const want = Buffer.concat(expected);
    assert.equal(got.byteLength, want.byteLength);
    assert.ok(got.equals(want), 'every header and page as it was written');
    assert.equal(writes.referencedBytes, batches * perBatch * PAGE, 'every page went by reference');
    assert.ok(writes.waits > 0, 'a batch waited for the ring or the socket');
    writes.close();
  } finally {
    await close();
  }
});

test('spliced writes: a page changed after the write returned and before the peer read it arrives changed (it went by reference, as a running guest\'s pages do)', async () => {
  const { sender, receiver, close } = await unixPair();
  try {
    const ram = new Uint8Array(PAGE * 4).fill(0x11);
    const writes = SplicedWrites.open('unix:test', () => socketFd(sender));
    assert.ok(writes instanceof SplicedWrites);
    receiver.pause();
    const header = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
    const rest = writes.write(
      { buffer: header, length: 8, count: 1, at: new Uint32Array([8]), address: new Float64Array([Number(addressOf(ram))]), bytes: new Uint32Array([PAGE]) },
      () => null,
    );
    assert.equal(rest, null, 'one page fits in the socket at once');
    ram.fill(0x22, 0, PAGE);
    header.fill(0);
    sender.end();
    const chunks: Buffer[] = [];
    receiver.resume();
    for await (const chunk of receiver) chunks.push(chunk as Buffer);
    const got = Buffer.concat(chunks);
    assert.deepEqual([...got.subarray(0, 8)], [1, 2, 3, 4, 5, 6, 7, 8], 'the header was copied');
    assert.equal(got.byteLength, 8 + PAGE);
    assert.ok(got.subarray(8).every((v) => v === 0x22), 'the page holds what it held when the peer read it');
    writes.close();
  } finally {
    await close();
  }
});

test('spliced writes: a unix: channel sends guest pages through the pipe, a tcp: channel with writev', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-spliced-'));
  try {
    for (const uri of [`unix:${join(dir, 'c.sock')}`, 'tcp:127.0.0.1:0']) {
      const listener = await listen(uri);
      const [src, dst] = await Promise.all([connect(listener.address), listener.accept()]);
      const ram = randomPayload(64 * PAGE);
      const count = 64;
      const batch: VectoredBatch = {
        buffer: new Uint8Array(count * 8).fill(7), length: count * 8, count,
        at: new Uint32Array(count).map((_, i) => (i + 1) * 8),
        address: new Float64Array(count).map((_, i) => Number(addressOf(ram)) + i * PAGE),
        bytes: new Uint32Array(count).fill(PAGE),
      };
      const reading = (async () => {
        let n = 0;
        for (;;) {
          const chunk = await dst.read();
          if (chunk === null) return n;
          n += chunk.byteLength;
          dst.release?.(chunk);
        }
      })();
      await src.vectored!.write(batch);
      await src.end();
      assert.equal(await reading, count * (8 + PAGE));
      const spliced = (src as StreamChannel).splicedBytes;
      assert.equal(spliced, uri.startsWith('unix:') ? count * PAGE : 0, uri);
      src.destroy();
      dst.destroy();
      await listener.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('spliced writes: a peer that goes away fails the pending write with a TransportError naming the socket, and the pipe is let go', async () => {
  const { sender, receiver, close } = await unixPair();
  try {
    const ram = randomPayload(4 * 1024 * 1024);
    const writes = SplicedWrites.open('unix:/the/test.sock', () => socketFd(sender));
    assert.ok(writes instanceof SplicedWrites);
    const count = 500;
    const batch: VectoredBatch = {
      buffer: new Uint8Array(8), length: 0, count, at: new Uint32Array(count),
      address: new Float64Array(count).map((_, i) => Number(addressOf(ram)) + (i % 1024) * PAGE),
      bytes: new Uint32Array(count).fill(PAGE),
    };
    sender.on('error', () => {}); // the socket's own report of the reset; the write's is what is tested
    setTimeout(() => receiver.destroy(), 50);
    await assert.rejects(
      (async () => {
        for (let i = 0; i < 1000; i++) {
          const rest = writes.write(batch, () => null);
          if (rest) await rest;
        }
      })(),
      (err: unknown) => err instanceof TransportError && /unix:\/the\/test\.sock/.test(err.message),
    );
    writes.close();
    assert.throws(() => writes.write(batch, () => null), /the socket was closed/);
  } finally {
    await close();
  }
});
