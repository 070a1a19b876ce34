import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { StreamFormatError } from '../errors.js';
import type { GuestMemoryBlock } from '../hypervisor/types.js';
import { addressOf, mincore, mmapAnonymous, munmap } from '../sys/libc.js';
import { PostcopyIncoming } from './postcopy-incoming.js';
import type { MigrationVm } from './vm.js';

const PAGE = 4096;
const at = (): number => 1234;

/** 16 pages of real anonymous memory as one RAM block, and a destination's post-copy side over it. */
function setup(t: import('node:test').TestContext) {
  const mapping = mmapAnonymous(16 * PAGE);
  const block: GuestMemoryBlock = { idstr: 'pc.ram', guestAddress: 0, size: 16 * PAGE, bytes: mapping.bytes, hostAddress: Number(mapping.address) };
  const requests: string[] = [];
  const events: string[] = [];
  const postcopy = new PostcopyIncoming({
    vm: { memory: [block] } as unknown as MigrationVm,
    returnPath: { open: true, writeError: undefined, requestPages: (idstr, start, length) => requests.push(`${idstr} ${start / PAGE}+${length / PAGE}`), sendRecvBitmap: (idstr, bitmap) => requests.push(`bitmap ${idstr} ${[...bitmap].join(',')}`), sendResumeAck: () => requests.push('ack') },
    backgroundSettled: async () => { events.push('settled'); },
    placeWith: () => events.push('placeWith'),
    run: () => events.push('run'),
  });
  t.after(async () => {
    await postcopy.abort();
    munmap(mapping);
  });
  return { mapping, block, postcopy, requests, events };
}

/** A worker that reads one byte of each page given, in order, and reports them. */
function reader(address: number, pages: number[]): { worker: Worker; values: Promise<number[]> } {
  const viewUrl = new URL('../sys/view.js', import.meta.url).href;
  const worker = new Worker(`
    const { parentPort, workerData } = require('node:worker_threads');
    import(${JSON.stringify(viewUrl)}).then(({ viewAt }) => {
      const ram = viewAt(BigInt(workerData.address), 16 * 4096);
      parentPort.postMessage(workerData.pages.map((p) => ram[p * 4096 + 5]));
    });
  `, { eval: true, workerData: { address, pages } });
  return { worker, values: new Promise((resolve) => worker.once('message', resolve)) };
}

const until = async (cond: () => boolean, what: string): Promise<void> => {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

test('post-copy destination: discarded pages are asked for on a fault and placed when they come; a page never sent is zeroed on its fault without asking', async (t) => {
  const { mapping, postcopy, requests, events } = setup(t);
  // Pages 0-3 arrived during pre-copy; 5 was sent as a zero page and never backed here.
  for (let p = 0; p < 4; p++) mapping.bytes[p * PAGE + 5] = 10 + p;
  postcopy.advise(PAGE, PAGE, 0);
  await postcopy.discard('pc.ram', [{ start: 2 * PAGE, length: 2 * PAGE }, { start: 8 * PAGE, length: 8 * PAGE }], 0);
  // Gone (reading it here would map the zero page: mincore asks without touching it).
  const resident = new Uint8Array(16);
  mincore(mapping.address, 16 * PAGE, resident);
  assert.deepEqual([...resident].map((r) => r & 1), [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(postcopy.ramArriving, true, 'from the first discard on, this process must not read guest RAM');
  assert.equal(postcopy.awaitedPages, 10);
  postcopy.listen(0);
  postcopy.run();
  assert.deepEqual(events, ['settled', 'placeWith', 'run']);

  // The guest reads page 1 (here), 5 (never sent: zero), 3 and 9 (to come: asked for).
  const { worker, values } = reader(Number(mapping.address), [1, 5, 3, 9]);
  await until(() => requests.length === 1, 'the request for page 3');
  assert.deepEqual(requests, ['pc.ram 3+1']);
  const page = new Uint8Array(PAGE).fill(33);
  postcopy.place(0, 3 * PAGE, 1, addressOf(page), at);
  await until(() => requests.length === 2, 'the request for page 9');
  assert.deepEqual(requests, ['pc.ram 3+1', 'pc.ram 9+1']);
  page.fill(99);
  postcopy.place(0, 9 * PAGE, 1, addressOf(page), at);
  assert.deepEqual(await values, [11, 0, 33, 99]);
  await worker.terminate();
  assert.equal(postcopy.figures.localZeroPages, 1, 'page 5 zeroed here');
  assert.equal(postcopy.figures.requests, 2);

  // A page that was not discarded cannot arrive again.
  assert.throws(() => postcopy.place(0, 1 * PAGE, 1, addressOf(page), at), (err: unknown) => err instanceof StreamFormatError && /offset 4096 of block "pc.ram" arrived in post-copy but was not discarded/.test(err.message) && err.offset === 1234);
  // The stream cannot end with pages still to come.
  await assert.rejects(postcopy.finish(), /ended with 8 page\(s\) of guest RAM never sent/);
  postcopy.place(0, 2 * PAGE, 1, undefined, at);
  postcopy.place(0, 8 * PAGE, 1, addressOf(page), at);
  postcopy.place(0, 10 * PAGE, 6, undefined, at);
  await postcopy.finish();
  assert.equal(postcopy.ramArriving, false);
  assert.equal(mapping.bytes[8 * PAGE + 5], 99);
  assert.equal(mapping.bytes[15 * PAGE + 5], 0);
  assert.equal(mapping.bytes[0 * PAGE + 5], 10, 'pre-copy pages kept');
});

test('post-copy destination: ADVISE and DISCARD are checked as QEMU checks them', async (t) => {
  const { postcopy } = setup(t);
  assert.throws(() => postcopy.advise(2 * 1024 * 1024, PAGE, 7), /Postcopy needs matching RAM page sizes \(s=200000 d=1000\)/);
  assert.throws(() => postcopy.advise(PAGE, 8192, 7), /Postcopy needs matching target page sizes \(s=8192 d=4096\)/);
  postcopy.advise(PAGE, PAGE, 7);
  await assert.rejects(postcopy.discard('pc.rom', [{ start: 0, length: PAGE }], 9), /offset 9: unknown RAM block "pc.rom"/);
  await assert.rejects(postcopy.discard('pc.ram', [{ start: 100, length: PAGE }], 9), /range 0x64\+0x1000 of "pc.ram" is not whole pages/);
  await assert.rejects(postcopy.discard('pc.ram', [{ start: 15 * PAGE, length: 2 * PAGE }], 9), /overruns block "pc.ram" \(0x10000 bytes\)/);
});

test('post-copy destination: without a return path, ADVISE is refused', (t) => {
  const mapping = mmapAnonymous(PAGE);
  t.after(() => munmap(mapping));
  const postcopy = new PostcopyIncoming({
    vm: { memory: [{ idstr: 'pc.ram', guestAddress: 0, size: PAGE, bytes: mapping.bytes, hostAddress: Number(mapping.address) }] } as unknown as MigrationVm,
    returnPath: { open: false, writeError: undefined, requestPages: () => {}, sendRecvBitmap: () => {}, sendResumeAck: () => {} },
    backgroundSettled: async () => {},
    placeWith: () => {},
    run: () => {},
  });
  assert.throws(() => postcopy.advise(PAGE, PAGE, 3), /post-copy needs the return path/);
});

test('post-copy destination, recovery: a broken run is dropped, faults while paused wait, RECV_BITMAP says what is here, and RESUME asks again for what faults wanted', async (t) => {
  const { mapping, postcopy, requests, events } = setup(t);
  postcopy.advise(PAGE, PAGE, 0);
  // 16 pages, all to come; pages 0-2 arrive before the break, 3-4 are half a run when it breaks.
  await postcopy.discard('pc.ram', [{ start: 0, length: 16 * PAGE }], 0);
  postcopy.listen(0);
  postcopy.run();
  const page = new Uint8Array(PAGE).fill(5);
  for (let p = 0; p < 3; p++) postcopy.sink.pageFrom('pc.ram', p * PAGE, page.buffer, 0);
  postcopy.sink.flush();
  postcopy.sink.pageFrom('pc.ram', 3 * PAGE, page.buffer, 0);
  postcopy.sink.pageFrom('pc.ram', 4 * PAGE, page.buffer, 0);
  postcopy.pause();
  postcopy.sink.flush();
  assert.equal(postcopy.awaitedPages, 13, 'the half run was not placed: pages 3 and 4 are still to come');
  // A fault while paused is noted, not sent (nobody is there to hear it).
  const { worker, values } = reader(Number(mapping.address), [9]);
  await until(() => postcopy.figures.requests === 1, 'the fault on page 9');
  assert.deepEqual(requests, []);
  // The source is back on a new connection.
  postcopy.recvBitmap('pc.ram', 0);
  assert.throws(() => postcopy.recvBitmap('pc.rom', 77), /CMD_RECV_BITMAP at offset 77: unknown RAM block "pc.rom"/);
  // Pages 0-2 are here: bits 0-2 of the first byte; 16 pages take 2 bytes, padded to 8.
  assert.deepEqual(requests, ['bitmap pc.ram 7,0,0,0,0,0,0,0']);
  postcopy.resume();
  assert.deepEqual(requests, ['bitmap pc.ram 7,0,0,0,0,0,0,0', 'ack', 'pc.ram 9+1']);
  assert.deepEqual(events.slice(-1), ['run']);
  page.fill(9);
  postcopy.place(0, 9 * PAGE, 1, addressOf(page), at);
  assert.deepEqual(await values, [9]);
  await worker.terminate();
});
