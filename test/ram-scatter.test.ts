// Pages read straight into guest RAM (src/stream/ram-scatter.ts) against the buffered
// reader's own result: the same stream, sent over a real socket in pieces of random
// sizes (so headers and pages split anywhere), must leave the same RAM — and a broken
// stream the same error, at the same offset — as when it is read from memory, where no
// scattered reads exist. Guesses go wrong on purpose: a ZERO page, an address out of
// order, pages sent twice, a new section, a corrupt or cut-off chunk.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { RamLoader } from '../src/migration/ram-load.js';
import type { MigrationVm } from '../src/migration/vm.js';
import { RamChunkWriter } from '../src/stream/ram-codec.js';
import { StreamReader } from '../src/stream/reader.js';
import { prng, readerOf, writtenBytes } from '../src/stream/testing.js';
import { HostMemory } from '../src/sys/host-memory.js';
import { listen } from '../src/transport/index.js';
import type { Channel } from '../src/transport/index.js';

const PAGE = 4096;
const RAM_BYTES = 8 * 1024 * 1024;

/** A page of bytes that depend on `seed` (never all zero). */
function pageOf(seed: number): Uint8Array {
  const page = new Uint8Array(PAGE);
  const next = prng(seed + 1);
  for (let i = 0; i < PAGE; i++) page[i] = Math.floor(next() * 256);
  page[0] = (seed & 0x7f) | 0x80;
  return page;
}

type Step = { kind: 'pages'; from: number; count: number; seed: number } | { kind: 'zero'; page: number } | { kind: 'eos' };

/** RAM chunks of one block "pc.ram": MEM_SIZE, then `steps`, each "eos" ending a section part. */
async function streamOf(steps: readonly Step[]): Promise<Uint8Array> {
  return writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.memSize([{ idstr: 'pc.ram', size: RAM_BYTES }]);
    for (const step of steps) {
      if (step.kind === 'pages') for (let i = 0; i < step.count; i++) c.page('pc.ram', (step.from + i) * PAGE, pageOf(step.seed + i));
      else if (step.kind === 'zero') c.zero('pc.ram', step.page * PAGE);
      else c.eos();
    }
    c.eos();
  });
}

interface Loaded { ram: Uint8Array | null; error: string | null; scattered: number }

/** Load RAM sections from `r` until `sections` EOS are read, into fresh destination memory. */
async function load(r: StreamReader, sections: number): Promise<Loaded> {
  const host = HostMemory.allocate(RAM_BYTES);
  const vm = { memory: [host.block('pc.ram', 0, { freshZero: true })] } as unknown as MigrationVm;
  const loader = new RamLoader(vm);
  try {
    for (let i = 0; i < sections; i++) await loader.load(r, 4, 'ram');
    return { ram: host.bytes.slice(), error: null, scattered: 0 };
  } catch (err) {
    return { ram: null, error: `${(err as Error).name}: ${(err as Error).message}`, scattered: 0 };
  } finally {
    host.unmap();
  }
}

/** Send `bytes` over a unix socket in pieces of random sizes (1 byte to 48 KiB, with turns of the event loop between) and load them. */
async function loadOverSocket(bytes: Uint8Array, sections: number, seed: number): Promise<Loaded> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-scatter-'));
  const listener = await listen(`unix:${join(dir, 's')}`);
  try {
    const accepted = listener.accept();
    const socket = net.connect(join(dir, 's'));
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const channel: Channel = await accepted;
    assert.ok(channel.scattered, 'a socket channel offers scattered reads');
    const io = channel.scattered!;
    let scattered = 0;
    const read = io.read.bind(io);
    (io as { read: typeof io.read }).read = async (iov, count) => {
      const n = await read(iov, count);
      scattered += n;
      return n;
    };
    const sending = (async () => {
      const next = prng(seed);
      for (let at = 0; at < bytes.byteLength; ) {
        const size = next() < 0.2 ? 1 + Math.floor(next() * 16) : 1 + Math.floor(next() * 48 * 1024);
        const piece = bytes.subarray(at, Math.min(bytes.byteLength, at + size));
        at += piece.byteLength;
        if (!socket.write(piece)) await new Promise((resolve) => socket.once('drain', resolve));
        if (next() < 0.5) await nextTurn();
      }
      socket.end();
    })();
    const loaded = await load(new StreamReader(channel), sections);
    await sending;
    channel.destroy();
    socket.destroy();
    return { ...loaded, scattered };
  } finally {
    await listener.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const SECTIONS: readonly Step[] = [
  // A first pass: long runs in order, a zero page in the middle of one, an address out of order.
  { kind: 'pages', from: 0, count: 700, seed: 1 },
  { kind: 'zero', page: 700 },
  { kind: 'pages', from: 701, count: 300, seed: 2000 },
  { kind: 'pages', from: 1500, count: 3, seed: 3000 },
  { kind: 'pages', from: 1010, count: 400, seed: 4000 },
  { kind: 'eos' },
  // A new section carries on in order, then pages sent again (not zero any more: not guessed into).
  { kind: 'pages', from: 1410, count: 90, seed: 5000 },
  { kind: 'pages', from: 600, count: 200, seed: 6000 },
  { kind: 'pages', from: 1503, count: 500, seed: 7000 },
];
const SECTION_COUNT = SECTIONS.filter((s) => s.kind === 'eos').length + 1;

test('scattered reads leave the RAM the buffered reader leaves, however the stream is split', async () => {
  const bytes = await streamOf(SECTIONS);
  const expected = await load(readerOf(bytes), SECTION_COUNT);
  assert.equal(expected.error, null);
  // What the steps say, page by page: the last data sent for each page, else zeros.
  const truth = new Uint8Array(RAM_BYTES);
  for (const step of SECTIONS) if (step.kind === 'pages') for (let i = 0; i < step.count; i++) truth.set(pageOf(step.seed + i), (step.from + i) * PAGE);
  assert.ok(Buffer.compare(expected.ram!, truth) === 0, 'the buffered reader loads what was sent');
  let scattered = 0;
  for (let seed = 1; seed <= 6; seed++) {
    const got = await loadOverSocket(bytes, SECTION_COUNT, seed);
    assert.equal(got.error, null, `seed ${seed}`);
    const differs = got.ram!.findIndex((b, i) => b !== truth[i]);
    assert.equal(differs, -1, `seed ${seed}: RAM differs at byte ${differs} (page ${Math.floor(differs / PAGE)})`);
    scattered += got.scattered;
  }
  // Most of the stream went straight into RAM (not just a read here and there).
  assert.ok(scattered > (6 * bytes.byteLength) / 2, `only ${scattered} of ${6 * bytes.byteLength} bytes came through scattered reads`);
});

test('a broken stream fails with scattered reads exactly as without them', async () => {
  const bytes = await streamOf(SECTIONS.slice(0, 3));
  const chunk = 8 + PAGE;
  // Where the 401st page chunk of the first run starts: MEM_SIZE is 8 + 1 + 6 + 8 bytes,
  // the first page chunk names its block (1 + 6 bytes more).
  const memSizeBytes = 8 + 1 + 'pc.ram'.length + 8;
  const chunkAt = (n: number): number => memSizeBytes + (n === 0 ? 0 : chunk + 1 + 'pc.ram'.length + (n - 1) * chunk);
  const cases: Array<{ what: string; bytes: Uint8Array }> = [];
  for (const cut of [chunkAt(400), chunkAt(400) + 3, chunkAt(400) + 8, chunkAt(400) + 2000, chunkAt(650) + chunk - 1]) {
    cases.push({ what: `cut at byte ${cut}`, bytes: bytes.slice(0, cut) });
  }
  const badFlags = bytes.slice();
  badFlags[chunkAt(450) + 6]! |= 0x04; // flags 0x428: an unknown flag beside PAGE|CONTINUE
  cases.push({ what: 'unknown flag in a run', bytes: badFlags });
  const outside = bytes.slice();
  new DataView(outside.buffer).setUint32(chunkAt(500), 0x10, false); // 0x10_0000_0000 + …: past the block
  cases.push({ what: 'address past the block in a run', bytes: outside });
  for (const { what, bytes: broken } of cases) {
    const expected = await load(readerOf(broken), 1);
    assert.notEqual(expected.error, null, `${what}: the buffered reader fails`);
    for (const seed of [11, 12]) {
      const got = await loadOverSocket(broken, 1, seed);
      assert.equal(got.error, expected.error, `${what}, seed ${seed}`);
    }
  }
});

test('mutated streams: scattered reads give the buffered reader\'s RAM or its error, case by case', async () => {
  const bytes = await streamOf(SECTIONS.slice(0, 3));
  const next = prng(77);
  for (let i = 0; i < 40; i++) {
    const mutated = bytes.slice(0, next() < 0.25 ? Math.floor(next() * bytes.byteLength) : bytes.byteLength);
    const flips = 1 + Math.floor(next() * 4);
    for (let f = 0; f < flips; f++) {
      // Mostly into chunk headers, where a guess is checked; else anywhere.
      const chunk = Math.floor(next() * 900);
      const at = next() < 0.7 ? 23 + 4111 + (chunk - 1) * 4104 + Math.floor(next() * 8) : Math.floor(next() * mutated.byteLength);
      if (at > 0 && at < mutated.byteLength) mutated[at] = Math.floor(next() * 256);
    }
    const expected = await load(readerOf(mutated), 1);
    const got = await loadOverSocket(mutated, 1, 100 + i);
    assert.equal(got.error, expected.error, `case ${i}`);
    if (expected.ram !== null) assert.ok(Buffer.compare(got.ram!, expected.ram) === 0, `case ${i}: RAM differs`);
  }
});
