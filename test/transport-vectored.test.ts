// Vectored writes (guest RAM by reference, writev straight to the socket) over real tcp and
// unix sockets: byte-exact order with plain writes around them, the wait for room when the
// peer reads slowly, end() after them, and a peer or a channel that goes away meanwhile.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TransportError } from '../src/errors.js';
import { StreamWriter } from '../src/stream/writer.js';
import { addressOf } from '../src/sys/libc.js';
import { connect, listen, type Channel } from '../src/transport/index.js';
import { MIGRATION_SOCKET_BUFFER } from '../src/transport/socket-buffers.js';
import { StreamChannel } from '../src/transport/stream-channel.js';
import { randomPayload, receiveAll, sha256 } from '../src/transport/testing.js';

const PAGE = 4096;

async function pair(kind: 'tcp' | 'unix', dir: string): Promise<{ src: Channel; dst: Channel; close(): Promise<void> }> {
  const listener = await listen(kind === 'tcp' ? 'tcp:127.0.0.1:0' : `unix:${join(dir, 'v.sock')}`);
  const [src, dst] = await Promise.all([connect(listener.address), listener.accept()]);
  return { src, dst, close: () => listener.close() };
}

/**
 * The stream a migration source writes: chunk headers and small records between guest
 * pages, here `pages` pages of `ram` in a scattered order, every 97th as a plain copy, with
 * runs of copied bytes now and then (plain writes between vectored ones).
 */
function fillStream(w: StreamWriter, ram: Uint8Array, address: number | undefined, pages: number): void {
  for (let i = 0; i < pages; i++) {
    const page = (i * 7919) % (ram.byteLength / PAGE);
    w.be64(page * PAGE + 0x28);
    if (i % 97 === 0) w.bytesFrom(ram, page * PAGE, PAGE);
    else w.byReference(ram, page * PAGE, PAGE, address);
    if (i % 1000 === 999) w.u8(i & 0xff);
    // Now and then more than a buffer of copied bytes: whole buffers without references go
    // as plain writes, between vectored ones.
    if (i % 2000 === 1999) w.bytes(ram.subarray(i, i + 200 * 1024));
  }
}

/** The bytes fillStream() writes, made with copies only (a channel that collects them). */
async function expectedStream(ram: Uint8Array, pages: number): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  const collect: Channel = { description: 'expected', read: async () => null, write: async (d) => { chunks.push(d.slice()); }, end: async () => {}, destroy: () => {} };
  const w = new StreamWriter(collect, { bufferSize: 64 * 1024 });
  fillStream(w, ram, undefined, pages);
  await w.flush();
  return Buffer.concat(chunks);
}

/** Run `body` over a connected tcp or unix pair, then tear both ends and the listener down. */
async function withPair(kind: 'tcp' | 'unix', body: (src: Channel, dst: Channel) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-vectored-'));
  const { src, dst, close } = await pair(kind, dir);
  try {
    await body(src, dst);
  } finally {
    src.destroy();
    dst.destroy();
    await close();
    rmSync(dir, { recursive: true, force: true });
  }
}

for (const kind of ['tcp', 'unix'] as const) {
  test(`vectored writes over ${kind}: every byte in order, through waits for a slow reader, then end()`, async () => {
    await withPair(kind, async (src, dst) => {
      assert.ok(src.vectored, 'a socket channel writes vectored');
      const ram = randomPayload(8 * 1024 * 1024);
      // Far more than both sockets' buffers hold (socket-buffers.ts; doubled, as the kernel counts them).
      const pages = (2 * 2 * MIGRATION_SOCKET_BUFFER + 32 * 1024 * 1024) / PAGE;
      const want = await expectedStream(ram, pages);
      const w = new StreamWriter(src, { bufferSize: 64 * 1024 });
      assert.equal(w.writesByReference, true);
      const received = (async () => {
        await sleep(300); // let the sender fill the socket first
        return receiveAll(dst);
      })();
      fillStream(w, ram, Number(addressOf(ram)), pages);
      assert.equal(w.bytesWritten, want.byteLength);
      await w.close();
      const got = await received;
      assert.equal(got.bytes, want.byteLength);
      assert.equal(got.sha256, sha256(want));
      assert.ok((src as StreamChannel).directWaits > 0, 'the socket filled up and the rest waited for room');
    });
  });
}

test('vectored writes: a peer that goes away fails the pending write with a TransportError, and later writes too', async () => {
  await withPair('tcp', async (src, dst) => {
    const ram = randomPayload(4 * 1024 * 1024);
    const w = new StreamWriter(src, { bufferSize: 64 * 1024 });
    // The peer reads a little, then disappears.
    void (async () => {
      const chunk = await dst.read();
      if (chunk) dst.release?.(chunk);
      dst.destroy();
    })();
    await assert.rejects(
      (async () => {
        for (let round = 0; round < 100; round++) {
          fillStream(w, ram, Number(addressOf(ram)), 1000);
          await w.flush();
        }
      })(),
      (err: unknown) => err instanceof TransportError && /tcp:127\.0\.0\.1:\d+/.test(err.message),
    );
    await assert.rejects(src.write(new Uint8Array(10)), TransportError);
  });
});

test('vectored writes: destroy() while one waits for room rejects it, and nothing is written after', async () => {
  await withPair('unix', async (src) => {
    const ram = randomPayload(4 * 1024 * 1024);
    const address = Number(addressOf(ram));
    const at = new Uint32Array(500);
    const addresses = new Float64Array(500).map((_, i) => address + (i % 1024) * PAGE);
    const bytes = new Uint32Array(500).fill(PAGE);
    // Nobody reads: batches of ~2 MiB fill the socket's buffer, and the rest are left waiting.
    const writes: Promise<void>[] = [];
    const batches = Math.ceil((2 * MIGRATION_SOCKET_BUFFER) / (500 * PAGE)) + 8;
    for (let i = 0; i < batches; i++) {
      // Undefined for a batch the socket took at once.
      writes.push(Promise.resolve(src.vectored!.write({ buffer: new Uint8Array(16), length: 0, count: 500, at, address: addresses, bytes })));
    }
    const settled = writes.map((p) => p.then(() => 'ok', (err: unknown) => err));
    await sleep(100);
    src.destroy(new TransportError('cancelled by the test'));
    const outcomes = await Promise.all(settled);
    assert.ok(outcomes.some((o) => o instanceof TransportError && /cancelled by the test/.test(o.message)), String(outcomes));
    assert.equal(outcomes.at(-1) instanceof TransportError, true);
  });
});

test('vectored writes: a batch with a reference outside its buffer is refused with a TransportError', async () => {
  await withPair('tcp', async (src) => {
    const one = (n: number) => new Uint32Array([n]);
    await assert.rejects(
      Promise.resolve(src.vectored!.write({ buffer: new Uint8Array(8), length: 8, count: 1, at: one(9), address: new Float64Array([0]), bytes: one(0) })),
      /reference 0 goes at byte 9, outside 0\.\.8/,
    );
  });
});

test('vectored writes into exec:cat > FILE: the file holds every byte in order', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-vectored-'));
  const file = join(dir, 'stream');
  try {
    const src = await connect(`exec:cat > ${file}`);
    assert.ok(src.vectored, "an exec channel writes vectored to the command's stdin");
    const ram = randomPayload(8 * 1024 * 1024);
    const w = new StreamWriter(src, { bufferSize: 64 * 1024 });
    fillStream(w, ram, Number(addressOf(ram)), 6000);
    await w.close();
    assert.equal(sha256(readFileSync(file)), sha256(await expectedStream(ram, 6000)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
