import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostMemory } from './host-memory.js';

const scratch = mkdtempSync(join(tmpdir(), 'ferry-host-memory-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

const MiB = 1024 * 1024;
const resident = (vec: Uint8Array): number => vec.reduce((n, b) => n + (b & 1), 0);

test('host memory: fresh RAM is not backed, reads as zero, and is 2 MiB-aligned', () => {
  const host = HostMemory.allocate(8 * MiB);
  try {
    assert.equal(host.address % BigInt(2 * MiB), 0n);
    assert.equal(host.size, 8 * MiB);
    assert.equal(resident(host.residency()), 0);
    assert.equal(host.bytes[5 * MiB], 0);
  } finally {
    host.unmap();
  }
});

test('host memory: prealloc (QEMU\'s -mem-prealloc) backs every page at once, populate a range', () => {
  const pre = HostMemory.allocate(8 * MiB, { prealloc: true });
  const lazy = HostMemory.allocate(8 * MiB);
  try {
    assert.equal(resident(pre.residency()), (8 * MiB) / 4096);
    lazy.populate(2 * MiB, 2 * MiB);
    const vec = lazy.residency();
    assert.ok(resident(vec.subarray(512, 1024)) === 512, 'the populated 2 MiB are backed');
    assert.equal(resident(vec.subarray(0, 512)), 0, 'what lies before is not');
    assert.equal(pre.bytes.reduce((n, b) => n + b, 0), 0, 'and it all still reads as zero');
  } finally {
    pre.unmap();
    lazy.unmap();
  }
});

test('host memory: block() is the guest\'s view — same bytes, residency and populate', () => {
  const host = HostMemory.allocate(4 * MiB);
  try {
    const block = host.block('pc.ram');
    assert.equal(block.idstr, 'pc.ram');
    assert.equal(block.guestAddress, 0);
    assert.equal(block.size, 4 * MiB);
    block.bytes[12345] = 9;
    assert.equal(host.bytes[12345], 9);
    assert.equal(resident(block.residency!()) >= 1, true);
    assert.equal(host.regionAt(0, 4 * MiB).address, host.address);
    assert.equal(host.regionAt(0, 4 * MiB).length, 4 * MiB);
  } finally {
    host.unmap();
  }
});

test('host memory: more than 4 GiB is one mapping seen a block at a time; each block\'s bytes, residency and populate are its own', () => {
  const GiB = 1024 * MiB;
  const host = HostMemory.allocate(4 * GiB + 8 * MiB);
  try {
    assert.equal(host.size, 4 * GiB + 8 * MiB);
    assert.equal(host.bytes.byteLength, 4 * GiB, 'the first 4 GiB in one view');
    const high = host.block('pc.ram.1', 4 * GiB, { offset: 4 * GiB, size: 8 * MiB });
    assert.equal(high.size, 8 * MiB);
    assert.equal(high.hostAddress, Number(host.address) + 4 * GiB);
    assert.equal(resident(high.residency!()), 0);
    high.bytes[4096 + 7] = 42;
    assert.equal(resident(high.residency!()) >= 1, true);
    assert.equal(host.regionAt(4 * GiB, 8 * MiB).bytes[4096 + 7], 42, 'the same memory through another view');
    assert.equal(resident(host.residency(0, 4 * GiB)), 0, 'nothing below 4 GiB was touched');
    high.populate!(2 * MiB, 2 * MiB);
    assert.ok(resident(high.residency!()) >= 512, 'populate backed the range in this block');
    assert.equal(resident(host.residency(0, 4 * GiB)), 0);
    assert.throws(() => host.regionAt(4 * GiB, 16 * MiB), /Cannot view/);
    assert.throws(() => HostMemory.allocate(2 ** 41), /1 TiB/);
  } finally {
    host.unmap();
  }
});

test('host memory: populating preallocated RAM is a no-op until release() gives it back', async () => {
  const host = HostMemory.allocate(8 * MiB, { prealloc: true });
  try {
    assert.equal(resident(host.residency()), 8 * MiB / 4096);
    host.populate(0, 8 * MiB);
    await host.populateInBackground(0, 8 * MiB);
    assert.equal(resident(host.residency()), 8 * MiB / 4096);
    host.release();
    assert.equal(resident(host.residency()), 0);
    // Released, it is not all backed any more: populate backs again what it is asked to.
    host.populate(0, 2 * MiB);
    await host.populateInBackground(4 * MiB, 2 * MiB);
    assert.equal(resident(host.residency()), 4 * MiB / 4096);
  } finally {
    host.unmap();
  }
});

test('host memory from a file (memory-backend-file): share=on is one memory for every mapping of it, share=off is this mapping\'s own', () => {
  const path = join(scratch, 'ram-shared');
  const a = HostMemory.allocate(4 * MiB, { file: { path, share: true } });
  const b = HostMemory.allocate(4 * MiB, { file: { path, share: true } });
  const own = HostMemory.allocate(4 * MiB, { file: { path, share: false } });
  try {
    assert.equal(statSync(path).size, 4 * MiB, 'an empty file is grown to the size');
    a.bytes[3 * MiB + 5] = 0xab;
    assert.equal(b.bytes[3 * MiB + 5], 0xab, 'a write through one shared mapping is seen through the other');
    assert.equal(own.bytes[3 * MiB + 5], 0xab, 'a private mapping reads the file as it is');
    own.bytes[7] = 0xcd;
    assert.equal(a.bytes[7], 0, 'and keeps its own writes');
    const block = a.block('mem0');
    assert.deepEqual(block.file, { path, shared: true });
    assert.equal(block.residency, undefined, 'a file\'s page the host does not hold is not known to be zero');
    assert.equal(block.discard, undefined, 'nor does dropping one make it zero');
    assert.equal(block.takeFreshZero, undefined);
    assert.equal(own.block('mem0').file?.shared, false);
  } finally {
    a.unmap();
    b.unmap();
    own.unmap();
  }
});

test('host memory from a file: a longer file is used from its start, a shorter one refused in QEMU\'s words, a directory holds a file of this VM\'s own', () => {
  const short = join(scratch, 'short');
  writeFileSync(short, new Uint8Array(4096));
  assert.throws(() => HostMemory.allocate(4 * MiB, { file: { path: short, share: true } }), /backing store size 0x1000 does not match 'size' option 0x400000/);
  const long = join(scratch, 'long');
  writeFileSync(long, new Uint8Array(8 * MiB).fill(1));
  const fromLong = HostMemory.allocate(4 * MiB, { file: { path: long, share: false } });
  try {
    assert.equal(fromLong.bytes[4 * MiB - 1], 1);
  } finally {
    fromLong.unmap();
  }
  const inDir = HostMemory.allocate(2 * MiB, { file: { path: scratch, share: true } });
  try {
    inDir.bytes[0] = 9;
    assert.equal(inDir.bytes[0], 9);
    assert.ok(!readdirSync(scratch).some((name) => name.startsWith('ferry_back_mem.')), 'the file made in a directory is unlinked at once');
  } finally {
    inDir.unmap();
  }
  assert.throws(() => HostMemory.allocate(2 * MiB, { file: { path: join(scratch, 'no', 'such', 'dir', 'f'), share: true } }), /can't open backing store .*no\/such\/dir\/f for guest RAM: No such file or directory/);
});
