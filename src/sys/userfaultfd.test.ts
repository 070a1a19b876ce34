import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { addressOf, mmapAnonymous, munmap } from './libc.js';
import { Userfaultfd } from './userfaultfd.js';

const PAGE = 4096;

test('a thread touching a registered page sleeps until the page is placed, then reads what was placed', async () => {
  const ram = mmapAnonymous(16 * PAGE);
  const uffd = Userfaultfd.open();
  try {
    uffd.register(ram.address, 16 * PAGE);
    assert.deepEqual(uffd.readFaults(), [], 'nothing has faulted yet');
    const viewUrl = new URL('./view.js', import.meta.url).href;
    // The worker reads page 3 and page 9: each read sleeps in the kernel until placed.
    const worker = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads');
      import(${JSON.stringify(viewUrl)}).then(({ viewAt }) => {
        const ram = viewAt(workerData.address, workerData.length);
        parentPort.postMessage({ page3: ram[3 * 4096 + 7] });
        parentPort.postMessage({ page9: ram[9 * 4096 + 100] });
      });
    `, { eval: true, workerData: { address: ram.address, length: 16 * PAGE } });
    const messages: Array<Record<string, number>> = [];
    worker.on('message', (m: Record<string, number>) => messages.push(m));

    assert.equal(await uffd.waitForFault(10_000), true, 'the worker faulted on page 3');
    const faults = uffd.readFaults();
    assert.deepEqual(faults.map((f) => (f.address - ram.address) / BigInt(PAGE)), [3n]);
    assert.deepEqual(faults.map((f) => f.tid), [0], 'no thread ids unless asked for');
    assert.deepEqual(messages, [], 'the worker still waits');
    const page = new Uint8Array(PAGE).fill(0x5a);
    page[7] = 42;
    assert.equal(uffd.copy(ram.address + 3n * BigInt(PAGE), addressOf(page), PAGE), 0);

    assert.equal(await uffd.waitForFault(10_000), true, 'then on page 9');
    assert.deepEqual(uffd.readFaults().map((f) => (f.address - ram.address) / BigInt(PAGE)), [9n]);
    assert.equal(uffd.zeropage(ram.address + 9n * BigInt(PAGE), PAGE), 0);
    await new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    assert.deepEqual(messages, [{ page3: 42 }, { page9: 0 }]);

    // Placing over a page that is there already changes nothing and says so.
    assert.equal(uffd.copy(ram.address + 3n * BigInt(PAGE), addressOf(new Uint8Array(PAGE)), PAGE), PAGE);
    assert.equal(uffd.zeropage(ram.address + 3n * BigInt(PAGE), PAGE), PAGE);
    // A range with a page there already in the middle: the others are placed all the same.
    assert.equal(uffd.zeropage(ram.address + 2n * BigInt(PAGE), 3 * PAGE), PAGE);
    assert.equal(uffd.copy(ram.address + 8n * BigInt(PAGE), addressOf(new Uint8Array(3 * PAGE).fill(3)), 3 * PAGE), PAGE);
    assert.equal(ram.bytes[8 * PAGE], 3);
    assert.equal(ram.bytes[9 * PAGE + 100], 0, 'page 9 kept the zeros placed before');
    assert.equal(ram.bytes[10 * PAGE], 3);
    assert.equal(ram.bytes[3 * PAGE + 7], 42);
    // Several pages at once.
    const two = new Uint8Array(2 * PAGE).fill(7);
    assert.equal(uffd.copy(ram.address + 12n * BigInt(PAGE), addressOf(two), 2 * PAGE), 0);
    uffd.unregister(ram.address, 16 * PAGE);
    assert.equal(ram.bytes[12 * PAGE], 7);
    assert.equal(ram.bytes[13 * PAGE + 4095], 7);
    assert.equal(ram.bytes[0], 0, 'an unregistered page that was never placed reads as zero again');
  } finally {
    uffd.close();
    munmap(ram);
  }
});

test('registering a range that is not page-aligned fails with the request named', () => {
  const uffd = Userfaultfd.open();
  try {
    assert.throws(() => uffd.register(4097n, PAGE), /UFFDIO_REGISTER.*0x1001/);
  } finally {
    uffd.close();
  }
});

test('waitForFault says false when nothing faults before the timeout', async () => {
  const uffd = Userfaultfd.open();
  try {
    assert.equal(await uffd.waitForFault(20), false);
  } finally {
    uffd.close();
  }
});

test('asked for, a fault names the thread that faulted (UFFD_FEATURE_THREAD_ID)', async () => {
  const ram = mmapAnonymous(4 * PAGE);
  const uffd = Userfaultfd.open({ threadIds: true });
  try {
    assert.equal(uffd.threadIds, true, 'this kernel offers thread ids');
    uffd.register(ram.address, 4 * PAGE);
    const libcUrl = new URL('./libc.js', import.meta.url).href;
    const viewUrl = new URL('./view.js', import.meta.url).href;
    // The worker says who it is, then reads page 2: it sleeps there until the page is placed.
    const worker = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads');
      Promise.all([import(${JSON.stringify(libcUrl)}), import(${JSON.stringify(viewUrl)})]).then(([{ gettid }, { viewAt }]) => {
        parentPort.postMessage({ tid: gettid() });
        parentPort.postMessage({ byte: viewAt(workerData.address, workerData.length)[2 * 4096] });
      });
    `, { eval: true, workerData: { address: ram.address, length: 4 * PAGE } });
    const messages: Array<Record<string, number>> = [];
    const first = new Promise<void>((resolve) => worker.once('message', () => resolve()));
    worker.on('message', (m: Record<string, number>) => messages.push(m));
    await first;
    assert.equal(await uffd.waitForFault(10_000), true, 'the worker faulted on page 2');
    const [fault] = uffd.readFaults();
    assert.ok(fault);
    assert.equal(fault.address, ram.address + 2n * BigInt(PAGE));
    assert.equal(messages.length, 1);
    assert.equal(fault.tid, messages[0]!.tid, 'the fault names the worker\'s thread');
    assert.notEqual(fault.tid, process.pid, 'not the main thread');
    uffd.zeropage(ram.address + 2n * BigInt(PAGE), PAGE);
    await new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    assert.deepEqual(messages[1], { byte: 0 });
  } finally {
    uffd.close();
    munmap(ram);
  }
});

test('write-protected pages: a write sleeps until the page is let go, reads go through, and a page never touched is protected too', async () => {
  const ram = mmapAnonymous(8 * PAGE);
  ram.bytes[1 * PAGE] = 11;
  const uffd = Userfaultfd.open({ writeProtect: true, threadIds: true });
  try {
    assert.equal(uffd.protectsUnpopulated, true, 'this kernel protects unpopulated pages (UFFD_FEATURE_WP_UNPOPULATED)');
    uffd.registerWriteProtect(ram.address, 8 * PAGE);
    uffd.writeProtect(ram.address, 8 * PAGE, true);
    const viewUrl = new URL('./view.js', import.meta.url).href;
    // The worker reads page 1, then writes it, then writes page 5 (never touched before).
    const worker = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads');
      import(${JSON.stringify(viewUrl)}).then(({ viewAt }) => {
        const ram = viewAt(workerData.address, workerData.length);
        parentPort.postMessage({ read: ram[4096] });
        ram[4096] = 12;
        parentPort.postMessage({ wrote: 1 });
        ram[5 * 4096] = 55;
        parentPort.postMessage({ wrote: 5 });
      });
    `, { eval: true, workerData: { address: ram.address, length: 8 * PAGE } });
    const messages: Array<Record<string, number>> = [];
    worker.on('message', (m: Record<string, number>) => messages.push(m));
    assert.equal(await uffd.waitForFault(10_000), true, 'the write to page 1 faulted');
    const [first] = uffd.readFaults();
    assert.ok(first);
    assert.equal(first.address, ram.address + BigInt(PAGE));
    assert.equal(first.writeProtect, true);
    assert.ok(first.tid > 0);
    assert.equal(ram.bytes[PAGE], 11, 'the page still holds what it held when protected');
    uffd.writeProtect(ram.address + BigInt(PAGE), PAGE, false);
    assert.equal(await uffd.waitForFault(10_000), true, 'the write to page 5 faulted');
    const [second] = uffd.readFaults();
    assert.equal(second?.address, ram.address + 5n * BigInt(PAGE));
    assert.equal(second?.writeProtect, true);
    assert.equal(ram.bytes[5 * PAGE], 0);
    uffd.writeProtect(ram.address + 5n * BigInt(PAGE), PAGE, false);
    await new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    assert.deepEqual(messages, [{ read: 11 }, { wrote: 1 }, { wrote: 5 }]);
    assert.equal(ram.bytes[PAGE], 12);
    assert.equal(ram.bytes[5 * PAGE], 55);
    uffd.unregister(ram.address, 8 * PAGE);
  } finally {
    uffd.close();
    munmap(ram);
  }
});
