import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import { channelFromBytes, createCollectingChannel } from '../stream/memory-channel.js';
import { RamChunkWriter } from '../stream/ram-codec.js';
import { StreamReader } from '../stream/reader.js';
import { StreamWriter } from '../stream/writer.js';
import { FakeDirtyLog, FakeVm } from './fake-vm.js';
import { RamHandler, isZeroPage } from './ram.js';
import { RateLimiter } from './rate-limiter.js';

const now = (): number => performance.now();

function handler(vm: FakeVm, limiter = new RateLimiter(now, 0)): RamHandler {
  return new RamHandler(vm, { now, limiter });
}

test('isZeroPage finds a single non-zero byte anywhere in the page, and nothing outside it', () => {
  const words = new Uint32Array((3 * PAGE_SIZE) / 4);
  const bytes = new Uint8Array(words.buffer);
  assert.equal(isZeroPage(words, 1024), true);
  for (const at of [0, 1, 2047, 4095]) {
    bytes[PAGE_SIZE + at] = 0x80;
    assert.equal(isZeroPage(words, 1024), false, `byte ${at}`);
    bytes[PAGE_SIZE + at] = 0;
  }
  bytes[PAGE_SIZE - 1] = 1; // last byte of the page before
  bytes[2 * PAGE_SIZE] = 1; // first byte of the page after
  assert.equal(isZeroPage(words, 1024), true);
});

/** Run setup and complete into a collecting channel; returns the bytes and the handler. */
async function saveAll(vm: FakeVm): Promise<{ bytes: Uint8Array; ram: RamHandler }> {
  const sink = createCollectingChannel();
  const w = new StreamWriter(sink);
  const ram = handler(vm);
  await ram.setup(w);
  await ram.complete(w);
  await w.flush();
  ram.cleanup();
  return { bytes: sink.bytes(), ram };
}

test('every page once: zero pages as ZERO (duplicate), the rest whole (normal)', async () => {
  const src = new FakeVm({ memorySize: 64 * PAGE_SIZE });
  src.fillPages(3, 5);
  const { bytes, ram } = await saveAll(src);
  assert.equal(ram.stats.duplicate, 59);
  assert.equal(ram.stats.normal, 5);
  assert.equal(ram.stats.normalBytes, 5 * PAGE_SIZE);
  assert.equal(ram.stats.remainingPages, 0);
  assert.equal(ram.stats.transferred, bytes.byteLength);
  assert.ok(bytes.byteLength < 6 * PAGE_SIZE, `${bytes.byteLength} bytes for 5 data pages and 59 zero pages`);
  assert.equal(src.dirtyLog.active, false, 'cleanup turns dirty logging off');

  const dst = new FakeVm({ memorySize: 64 * PAGE_SIZE, incoming: true });
  dst.ram.fill(0xee, 10 * PAGE_SIZE, 11 * PAGE_SIZE); // stale data where the source has zeros
  const r = new StreamReader(channelFromBytes(bytes, { chunkSize: 1000 }));
  const load = handler(dst);
  await load.load(r, 4, 'ram'); // setup: MEM_SIZE … EOS
  await load.load(r, 4, 'ram'); // complete: pages … EOS
  assert.ok(load.memSizeSeen);
  assert.deepEqual(dst.ram, src.ram);
  assert.equal(await r.atEnd(), true);
});

test('pages dirtied after they were sent are sent again; dirty-sync-count counts syncs', async () => {
  const vm = new FakeVm({ memorySize: 32 * PAGE_SIZE });
  const sink = createCollectingChannel();
  const w = new StreamWriter(sink);
  const ram = handler(vm);
  await ram.setup(w);
  assert.equal(ram.stats.dirtySyncCount, 1);
  await ram.iterate(w);
  assert.equal(ram.pending(), 0);
  vm.write(5 * PAGE_SIZE + 7, 9);
  vm.write(6 * PAGE_SIZE, 1);
  vm.write(6 * PAGE_SIZE + 1, 2);
  assert.equal(ram.pending(), 0, 'the estimate does not sync');
  assert.equal(ram.pendingExact(), 2 * PAGE_SIZE);
  assert.equal(ram.stats.dirtySyncCount, 2);
  await ram.iterate(w);
  assert.equal(ram.stats.normal, 2);
  assert.equal(ram.stats.duplicate, 32);
  ram.cleanup();
});

test('an iteration stops when the rate limiter says the window is spent', async () => {
  const vm = new FakeVm({ memorySize: 1024 * PAGE_SIZE });
  vm.fillPages(0, 1024);
  const limiter = new RateLimiter(now, 10 * 100 * PAGE_SIZE); // ~100 pages per 100 ms window
  const ram = handler(vm, limiter);
  const w = new StreamWriter(createCollectingChannel());
  await ram.setup(w);
  await ram.iterate(w);
  const sent = ram.stats.normal;
  assert.ok(sent >= 64 && sent < 300, `sent ${sent} pages in one window`);
  assert.equal(ram.stats.remainingPages, 1024 - sent);
  ram.cleanup();
});

test('destination refuses a MEM_SIZE that does not match its RAM, naming the block and sizes', async () => {
  const sink = createCollectingChannel();
  const w = new StreamWriter(sink);
  const chunks = new RamChunkWriter(w);
  chunks.memSize([{ idstr: 'pc.ram', size: 8 * PAGE_SIZE }]);
  chunks.eos();
  await w.flush();
  const dst = new FakeVm({ memorySize: 16 * PAGE_SIZE, incoming: true });
  const r = new StreamReader(channelFromBytes(sink.bytes()));
  await assert.rejects(handler(dst).load(r, 4, 'ram'), (err: unknown) => {
    assert.ok(err instanceof StreamFormatError);
    assert.match(err.message, /"pc\.ram": length 32768 differs from the local 65536/);
    assert.equal(err.section, 'ram');
    return true;
  });
});

test('destination refuses pages of unknown blocks and pages past the end of a block', async () => {
  for (const [idstr, offset, pattern] of [['vga.vram', 0, /unknown block "vga\.vram"/], ['pc.ram', 16 * PAGE_SIZE, /offset 65536 of block "pc\.ram"/]] as const) {
    const sink = createCollectingChannel();
    const w = new StreamWriter(sink);
    const chunks = new RamChunkWriter(w);
    chunks.page(idstr, offset, new Uint8Array(PAGE_SIZE).fill(1));
    chunks.eos();
    await w.flush();
    const dst = new FakeVm({ memorySize: 16 * PAGE_SIZE, incoming: true });
    await assert.rejects(handler(dst).load(new StreamReader(channelFromBytes(sink.bytes())), 4, 'ram'), pattern);
  }
});

test('a RAM section of another version is refused', async () => {
  const dst = new FakeVm({ memorySize: 16 * PAGE_SIZE, incoming: true });
  await assert.rejects(handler(dst).load(new StreamReader(channelFromBytes(new Uint8Array(8))), 5, 'ram'), /RAM version 5 is not 4/);
});

test('dirty-pages-rate: pages dirtied per second, measured over periods of at least a second', async () => {
  let t = 0;
  const clock = (): number => t;
  const vm = new FakeVm({ memorySize: 64 * PAGE_SIZE });
  const ram = new RamHandler(vm, { now: clock, limiter: new RateLimiter(clock, 0) });
  await ram.setup(new StreamWriter(createCollectingChannel()));
  for (let p = 0; p < 10; p++) vm.write(p * PAGE_SIZE, 1);
  t = 500;
  ram.pendingExact();
  assert.equal(ram.stats.dirtyPagesRate, 0, 'half a second is not a period yet');
  for (let p = 0; p < 30; p++) vm.write(p * PAGE_SIZE, 2);
  t = 2000;
  ram.pendingExact();
  assert.equal(ram.stats.dirtyPagesRate, 20, '40 pages dirtied in 2 s');
  ram.cleanup();
});

test('memory whose buffer is replaced mid-migration (grown WebAssembly memory) is read from the new buffer, never as zeros', async () => {
  const vm = new FakeVm({ memorySize: 16 * PAGE_SIZE });
  let current = new Uint8Array(16 * PAGE_SIZE);
  for (let p = 0; p < 16; p++) current[p * PAGE_SIZE + 1] = p + 1;
  // A block whose `bytes` getter must be fetched anew, as v86's is.
  const block = { idstr: 'pc.ram', guestAddress: 0, size: 16 * PAGE_SIZE, get bytes() { return current; } };
  (vm.memory as unknown[])[0] = block;
  const sink = createCollectingChannel();
  const w = new StreamWriter(sink);
  const ram = handler(vm);
  await ram.setup(w);
  // "Grow": the contents move to a new buffer and the old one is detached.
  const moved = new Uint8Array(16 * PAGE_SIZE);
  moved.set(current);
  structuredClone(current.buffer, { transfer: [current.buffer] });
  current = moved;
  await ram.complete(w);
  await w.flush();
  ram.cleanup();
  assert.equal(ram.stats.normal, 16, 'every page read as data from the new buffer');
  assert.equal(ram.stats.duplicate, 0);

  const dst = new FakeVm({ memorySize: 16 * PAGE_SIZE, incoming: true });
  const r = new StreamReader(channelFromBytes(sink.bytes()));
  const load = handler(dst);
  await load.load(r, 4, 'ram');
  await load.load(r, 4, 'ram');
  assert.deepEqual(dst.ram, moved);
});

test('several RAM blocks: each listed in MEM_SIZE, dirty pages of each resent, all equal after loading', async () => {
  const blocks = [{ idstr: 'vga.vram', size: 8 * PAGE_SIZE }, { idstr: 'pc.bios', size: 40 * PAGE_SIZE }];
  const src = new FakeVm({ memorySize: 16 * PAGE_SIZE, extraBlocks: blocks });
  for (const b of src.memory) for (let i = 0; i < b.size; i += 512) b.bytes[i] = (i >>> 9) | 1;
  src.memory[1]!.bytes.fill(0, 0, 2 * PAGE_SIZE); // two zero pages in the middle block
  const sink = createCollectingChannel();
  const w = new StreamWriter(sink);
  const ram = handler(src);
  await ram.setup(w);
  await ram.iterate(w);
  src.memory[1]!.bytes[3 * PAGE_SIZE] = 0x55;
  src.dirtyLog.mark(1, 3);
  src.memory[2]!.bytes[39 * PAGE_SIZE + 9] = 0x66;
  src.dirtyLog.mark(2, 39);
  await ram.complete(w);
  await w.flush();
  ram.cleanup();
  assert.equal(ram.stats.duplicate, 2);
  assert.equal(ram.stats.normal, 16 + 8 + 40 - 2 + 2);

  const dst = new FakeVm({ memorySize: 16 * PAGE_SIZE, extraBlocks: blocks, incoming: true });
  const r = new StreamReader(channelFromBytes(sink.bytes(), { chunkSize: 333 }));
  const load = handler(dst);
  for (let section = 0; section < 3; section++) await load.load(r, 4, 'ram');
  for (let b = 0; b < 3; b++) assert.deepEqual(dst.memory[b]!.bytes, src.memory[b]!.bytes, src.memory[b]!.idstr);

  // A destination without one of the blocks refuses the block list.
  const short = new FakeVm({ memorySize: 16 * PAGE_SIZE, extraBlocks: blocks.slice(0, 1), incoming: true });
  await assert.rejects(handler(short).load(new StreamReader(channelFromBytes(sink.bytes())), 4, 'ram'), /unknown block "pc\.bios"/);
});

test('dirty bits past the end of a block (a rounded-up bitmap) are ignored', async () => {
  const vm = new FakeVm({ memorySize: 40 * PAGE_SIZE }); // 40 pages: the second bitmap word is partial
  const ram = handler(vm);
  const w = new StreamWriter(createCollectingChannel());
  await ram.setup(w);
  await ram.iterate(w);
  assert.equal(ram.pending(), 0);
  vm.dirtyLog.mark(0, 39);
  vm.dirtyLog.mark(0, 45); // no such page
  assert.equal(ram.pendingExact(), PAGE_SIZE);
  await ram.complete(w);
  assert.equal(ram.stats.pagesSent, 41);
  ram.cleanup();
});

test('the pass history: pass 1 is every page, later passes what the dirty log reported and what was sent', async () => {
  const size = 64 * 4096;
  const bytes = new Uint8Array(size);
  for (let p = 0; p < 64; p += 2) bytes[p * 4096] = 1;
  const memory = [{ idstr: 'pc.ram', guestAddress: 0, size, bytes }];
  const dirtyLog = new FakeDirtyLog(memory);
  let clock = 0;
  const now = () => clock;
  const ram = new RamHandler({ memory, dirtyLog } as never, { now, limiter: new RateLimiter(now, 0) });
  const w = new StreamWriter(createCollectingChannel());
  await ram.setup(w);
  clock = 10;
  while (ram.pending() > 0) await ram.iterate(w);
  for (const page of [3, 5, 7]) {
    bytes[page * 4096] = 9;
    dirtyLog.mark(0, page);
  }
  clock = 20;
  ram.pendingExact();
  while (ram.pending() > 0) await ram.iterate(w);
  clock = 30;
  ram.finishPasses();
  const passes = ram.passHistory();
  assert.equal(passes.length, 2);
  assert.deepEqual({ ...passes[0] }, { pass: 1, startMs: 0, endMs: 20, dirtyPages: 64, pagesSent: 64, zeroPages: 32, bytesSent: passes[0]!.bytesSent });
  assert.ok(passes[0]!.bytesSent > 32 * 4096);
  assert.equal(passes[1]!.dirtyPages, 3);
  assert.equal(passes[1]!.pagesSent, 3);
  assert.equal(passes[1]!.zeroPages, 0);
  assert.equal(passes[1]!.endMs, 30);
});

test('a never-backed page written after setup and synced before the first pass reaches it is sent with its data', async () => {
  const pages = 64;
  const src = new FakeVm({ memorySize: pages * PAGE_SIZE });
  // The host says no page was ever backed (fresh anonymous memory, as mincore reports it).
  src.memory[0]!.residency = () => new Uint8Array(pages);
  const sink = createCollectingChannel();
  const w = new StreamWriter(sink);
  const ram = handler(src);
  await ram.setup(w);
  // The guest writes page 40 before pass 1 gets there, and a sync folds its dirty bit into
  // the to-send bit that is still pending (QEMU syncs when pending drops under the threshold).
  src.write(40 * PAGE_SIZE + 8, 0x5a);
  ram.pendingExact();
  await ram.iterate(w);
  await ram.complete(w);
  await w.flush();
  ram.cleanup();
  assert.equal(ram.stats.normal, 1, 'page 40 goes whole');

  const dst = new FakeVm({ memorySize: pages * PAGE_SIZE, incoming: true });
  const r = new StreamReader(channelFromBytes(sink.bytes()));
  const load = handler(dst);
  for (let i = 0; i < 3; i++) await load.load(r, 4, 'ram');
  assert.equal(dst.ram[40 * PAGE_SIZE + 8], 0x5a);
  assert.deepEqual(dst.ram, src.ram);
});

test('destination: dense pages back the next regions in the background, sparse pages do not, each region once', async () => {
  const REGION = 2 * 1024 * 1024;
  const regionPages = REGION / PAGE_SIZE;
  const src = new FakeVm({ memorySize: 16 * REGION });
  // Regions 0-1 dense (every page), then one page in each of regions 8 and 12 (sparse).
  src.fillPages(0, 2 * regionPages);
  src.fillPages(8 * regionPages, 1);
  src.fillPages(12 * regionPages, 1);
  const { bytes } = await saveAll(src);

  const dst = new FakeVm({ memorySize: 16 * REGION, incoming: true });
  const block = dst.memory[0]!;
  const foreground: number[] = [];
  const background: number[] = [];
  let running = 0;
  let mostAtOnce = 0;
  Object.assign(block, {
    populate: (offset: number) => { foreground.push(offset / REGION); },
    populateInBackground: async (offset: number) => {
      background.push(offset / REGION);
      mostAtOnce = Math.max(mostAtOnce, ++running);
      await new Promise((resolve) => setTimeout(resolve, 1));
      running--;
    },
  });
  const r = new StreamReader(channelFromBytes(bytes, { chunkSize: 64 * 1024 }));
  const load = handler(dst);
  await load.load(r, 4, 'ram');
  await load.load(r, 4, 'ram');
  assert.deepEqual(dst.ram, src.ram);
  // Region 0 is backed where its first page lands; its 64th page starts regions 1 and 2 in
  // the background (two at once at most); region 1's 64th finds 2 still in flight or done.
  assert.equal(foreground[0], 0);
  assert.ok(background.includes(1), `background: ${background.join(',')}`);
  assert.ok(mostAtOnce <= 2, `${mostAtOnce} background populates at once`);
  const all = [...foreground, ...background];
  assert.equal(new Set(all).size, all.length, `a region backed twice: ${all.join(',')}`);
  // The sparse pages' regions are backed in the foreground, and nothing is backed ahead of them.
  assert.ok(foreground.includes(8) && foreground.includes(12), `foreground: ${foreground.join(',')}`);
  for (const ahead of [9, 10, 11, 13, 14, 15]) assert.ok(!all.includes(ahead), `region ${ahead} was backed for nothing`);
});

test('destination: a block that says it is fresh zero skips ZERO pages without reading them, once', async () => {
  const src = new FakeVm({ memorySize: 64 * PAGE_SIZE });
  src.fillPages(3, 2);
  const { bytes } = await saveAll(src);
  const load = async (dst: FakeVm): Promise<void> => {
    const r = new StreamReader(channelFromBytes(bytes, { chunkSize: 1000 }));
    const ram = handler(dst);
    await ram.load(r, 4, 'ram');
    await ram.load(r, 4, 'ram');
  };
  const dst = new FakeVm({ memorySize: 64 * PAGE_SIZE, incoming: true });
  let asked = 0;
  let fresh = true;
  Object.assign(dst.memory[0]!, {
    takeFreshZero: () => {
      asked++;
      const was = fresh;
      fresh = false;
      return was;
    },
  });
  // Bytes where the source has zeros: the block's promise is broken on purpose, to show that
  // a fresh-zero block's ZERO pages are neither read nor written.
  dst.ram.fill(0xee, 10 * PAGE_SIZE, 11 * PAGE_SIZE);
  await load(dst);
  assert.equal(asked, 1);
  assert.deepEqual(dst.ram.subarray(3 * PAGE_SIZE, 5 * PAGE_SIZE), src.ram.subarray(3 * PAGE_SIZE, 5 * PAGE_SIZE), 'pages with data land');
  assert.equal(dst.ram[10 * PAGE_SIZE], 0xee, 'a ZERO page of a fresh-zero block is skipped');
  // A second load (a new handler) gets false: the same stream now zeroes that page.
  await load(dst);
  assert.equal(asked, 2);
  assert.deepEqual(dst.ram, src.ram);
});

test('destination: a run of ZERO pages zeroes the pages in it that were written, and skips the ones known to hold zeros', async () => {
  const bytes = await (async () => {
    const out = createCollectingChannel();
    const w = new StreamWriter(out);
    const c = new RamChunkWriter(w);
    c.memSize([{ idstr: 'pc.ram', size: 64 * PAGE_SIZE }]);
    c.page('pc.ram', 3 * PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(7));
    c.page('pc.ram', 4 * PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(8));
    // The guest zeroed them again before the next pass: one run over the whole block.
    c.zeroRun('pc.ram', 0, 64);
    c.eos();
    await w.flush();
    return out.bytes();
  })();
  const dst = new FakeVm({ memorySize: 64 * PAGE_SIZE, incoming: true });
  let fresh = true;
  Object.assign(dst.memory[0]!, { takeFreshZero: () => { const was = fresh; fresh = false; return was; } });
  // As above: a fresh-zero block's promise broken on purpose, to see which pages are touched.
  dst.ram.fill(0xee, 10 * PAGE_SIZE, 11 * PAGE_SIZE);
  await handler(dst).load(new StreamReader(channelFromBytes(bytes, { chunkSize: 64 * 1024 })), 4, 'ram');
  assert.ok(dst.ram.subarray(3 * PAGE_SIZE, 5 * PAGE_SIZE).every((b) => b === 0), 'the written pages are zero again');
  assert.equal(dst.ram[10 * PAGE_SIZE], 0xee, 'a page known to hold zeros is not touched');
});

test('destination: runs of ZERO pages between pages of data cost their own length, not the rest of the block', async () => {
  // A real guest's first pass: a page of data, then three it zeroed, again and again — a
  // run of ZERO pages between every two pages. Each run once searched the known-zero map from
  // its first page to the end of the block: quadratic in the block's size (2.6 s for 1 GiB).
  const pages = 4096;
  const bytes = await (async () => {
    const out = createCollectingChannel();
    const w = new StreamWriter(out);
    const c = new RamChunkWriter(w);
    c.memSize([{ idstr: 'pc.ram', size: pages * PAGE_SIZE }]);
    for (let page = 0; page < pages; page += 4) {
      c.page('pc.ram', page * PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill((page / 4) % 255 + 1));
      c.zeroRun('pc.ram', (page + 1) * PAGE_SIZE, 3);
    }
    c.eos();
    await w.flush();
    return out.bytes();
  })();
  const dst = new FakeVm({ memorySize: pages * PAGE_SIZE, incoming: true });
  let fresh = true;
  Object.assign(dst.memory[0]!, { takeFreshZero: () => { const was = fresh; fresh = false; return was; } });
  // Count the elements every typed-array search looks at while the stream loads.
  const typedArray = Object.getPrototypeOf(Uint8Array.prototype) as { indexOf: (this: Uint8Array, value: number, from?: number) => number };
  const indexOf = typedArray.indexOf;
  let scanned = 0;
  typedArray.indexOf = function (this: Uint8Array, value: number, from = 0): number {
    const found = indexOf.call(this, value, from);
    scanned += (found < 0 ? this.length : found + 1) - from;
    return found;
  };
  try {
    await handler(dst).load(new StreamReader(channelFromBytes(bytes, { chunkSize: 64 * 1024 })), 4, 'ram');
  } finally {
    typedArray.indexOf = indexOf;
  }
  for (let page = 0; page < pages; page++) {
    const expected = page % 4 === 0 ? (page / 4) % 255 + 1 : 0;
    assert.equal(dst.ram[page * PAGE_SIZE], expected, `page ${page}`);
  }
  assert.ok(scanned <= 2 * pages, `the searches looked at ${scanned} entries of the known-zero map for ${pages} pages`);
});

test('snapshot mode (background-snapshot): no dirty log, each page once — a page the guest waits to write first — copied, and logged as sent', async () => {
  const src = new FakeVm({ memorySize: 64 * PAGE_SIZE });
  src.fillPages(0, 64);
  const sink = createCollectingChannel();
  const w = new StreamWriter(sink);
  const ram = new RamHandler(src, { now, limiter: new RateLimiter(now, 0), snapshot: true });
  await ram.setup(w);
  assert.equal(src.dirtyLog.active, false, 'no dirty log');
  ram.snapshotPoint();
  await assert.rejects(ram.complete(w), /The snapshot ended with 64 pages of RAM not sent/);
  ram.requests.queueWrite(0, 40);
  ram.requests.send(w, 2);
  assert.deepEqual(ram.requests.takeSent(), [0, 40, 0, 0, 0, 1], 'the page waited for first, then the rest in order');
  assert.deepEqual(ram.requests.takeSent(), []);
  // What the stream holds is what the page held when it went, whatever is written after.
  const page40 = src.ram.slice(40 * PAGE_SIZE, 41 * PAGE_SIZE);
  src.ram.fill(0x77, 40 * PAGE_SIZE, 41 * PAGE_SIZE);
  ram.requests.queueWrite(0, 40); // sent already: not again
  ram.requests.send(w, 100);
  assert.equal(ram.requests.takeSent().length, 2 * 61);
  assert.equal(ram.stats.remainingPages, 0);
  await ram.complete(w);
  await w.flush();
  assert.equal(ram.stats.dirtySyncCount, 0);

  const dst = new FakeVm({ memorySize: 64 * PAGE_SIZE, incoming: true });
  const r = new StreamReader(channelFromBytes(sink.bytes(), { chunkSize: 1000 }));
  const load = handler(dst);
  // setup's EOS, then the sections' pages and EOSes, as the loader reads a section each time.
  for (let i = 0; i < 4; i++) await load.load(r, 4, 'ram');
  assert.deepEqual(dst.ram.slice(40 * PAGE_SIZE, 41 * PAGE_SIZE), page40, 'page 40 as it was when sent, not as written after');
  assert.deepEqual(dst.ram.subarray(0, 40 * PAGE_SIZE), src.ram.subarray(0, 40 * PAGE_SIZE));
});
