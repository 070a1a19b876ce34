import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { SystemCallError } from '../errors.js';
import {
  ENOENT, ENOTTY, O_RDWR, SIGUSR2, closeFd, gettid, ioctlInt, ioctlIntRaw, ioctlPtr, mmapAnonymous,
  munmap, openPath, tgkill,
} from './libc.js';

const TCGETS = 0x5401; // a tty ioctl: /dev/null answers ENOTTY

test('mmapAnonymous gives zeroed memory that reads back what was written, without a copy', () => {
  const m = mmapAnonymous(1 << 20);
  try {
    assert.equal(m.bytes.byteLength, 1 << 20);
    assert.equal(m.bytes[12345], 0);
    assert.ok(m.address > 0n && (m.address & 0xfffn) === 0n, 'page aligned address');
    m.bytes[4096] = 0xab;
    const again = new Uint8Array(m.bytes.buffer);
    assert.equal(again[4096], 0xab);
  } finally {
    munmap(m);
  }
});

test('a populated mapping is zero-filled and writable', () => {
  const m = mmapAnonymous(1 << 20, { populate: true });
  try {
    assert.equal(m.bytes.every((b) => b === 0), true);
    m.bytes[(1 << 20) - 1] = 9;
    assert.equal(m.bytes[(1 << 20) - 1], 9);
  } finally {
    munmap(m);
  }
});

test('mappings beyond what koffi.view can expose are refused with an error, not a crash', () => {
  assert.throws(() => mmapAnonymous(2 ** 32 + 4096), RangeError);
  assert.throws(() => mmapAnonymous(0), RangeError);
});

test('openPath reports ENOENT with the path in the message', () => {
  assert.throws(() => openPath('/nonexistent/ferry-device', O_RDWR), (err: unknown) => {
    assert.ok(err instanceof SystemCallError);
    assert.equal(err.errno, ENOENT);
    assert.equal(err.syscall, 'open');
    assert.match(err.message, /\/nonexistent\/ferry-device/);
    return true;
  });
});

test('ioctl errors carry errno and name the request', () => {
  const fd = openPath('/dev/null', O_RDWR);
  try {
    const buf = new Uint8Array(64);
    assert.throws(() => ioctlPtr(fd, TCGETS, buf, 'TCGETS'), (err: unknown) => {
      assert.ok(err instanceof SystemCallError);
      assert.equal(err.errno, ENOTTY);
      assert.match(err.message, /TCGETS/);
      return true;
    });
    assert.throws(() => ioctlInt(fd, TCGETS, 0, 'TCGETS'), SystemCallError);
    assert.equal(ioctlIntRaw(fd, TCGETS, 0), -ENOTTY);
  } finally {
    closeFd(fd);
  }
});

test('gettid differs on a worker, and SIGUSR2 sent with tgkill interrupts it without killing the process', async () => {
  const listener = (): void => {};
  process.on('SIGUSR2', listener);
  try {
    assert.equal(gettid(), process.pid, 'main thread tid is the pid');
    const libcUrl = new URL('./libc.js', import.meta.url).href;
    const worker = new Worker(`
      const { parentPort } = require('node:worker_threads');
      import(${JSON.stringify(libcUrl)}).then((libc) => {
        const sab = new SharedArrayBuffer(8);
        const word = new Int32Array(sab);
        parentPort.postMessage({ tid: libc.gettid(), sab });
        Atomics.wait(word, 0, 0, 5000);
        parentPort.postMessage({ done: true });
      });
    `, { eval: true });
    const first = await new Promise<{ tid: number; sab: SharedArrayBuffer }>((resolve) => worker.once('message', resolve));
    assert.notEqual(first.tid, process.pid);
    tgkill(process.pid, first.tid, 0);
    tgkill(process.pid, first.tid, SIGUSR2);
    const done = new Promise((resolve) => worker.once('message', resolve));
    Atomics.store(new Int32Array(first.sab), 0, 1);
    Atomics.notify(new Int32Array(first.sab), 0);
    assert.deepEqual(await done, { done: true });
    await worker.terminate();
  } finally {
    process.off('SIGUSR2', listener);
  }
});
