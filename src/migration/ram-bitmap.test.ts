import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MigrationError } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import { FakeVm } from './fake-vm.js';
import { RamBitmaps } from './ram-bitmap.js';

/** Bitmaps over a VM of `pages` pages in pc.ram and 5 in a second block. */
function bitmaps(pages: number): { bm: RamBitmaps; vm: FakeVm } {
  const vm = new FakeVm({ memorySize: pages * PAGE_SIZE, extraBlocks: [{ idstr: 'vga.vram', size: 5 * PAGE_SIZE }] });
  const bm = new RamBitmaps();
  assert.equal(bm.setup(vm.memory), pages + 5);
  return { bm, vm };
}

const ranges = (bm: RamBitmaps, b: number, toSend: boolean): Array<[number, number]> =>
  [...bm.runs(b, toSend)].map((r) => [r.start / PAGE_SIZE, r.length / PAGE_SIZE]);

test('setup: every page is to send, and no bit past a block\'s last page', () => {
  const { bm } = bitmaps(70);
  assert.deepEqual([...bm.toSend[0]!], [0xffffffff, 0xffffffff, 0b111111]);
  assert.deepEqual([...bm.toSend[1]!], [0b11111]);
  assert.deepEqual(bm.blockBasePage, [0, 70]);
  assert.deepEqual(ranges(bm, 0, true), [[0, 70]]);
  assert.deepEqual(ranges(bm, 0, false), []);
});

test('take, fold and runs: pages sent, pages dirtied again, both kinds of runs', () => {
  const { bm } = bitmaps(70);
  for (let page = 0; page < 70; page++) assert.equal(bm.take(0, page), true);
  assert.equal(bm.take(0, 3), false, 'a page sent is not to send twice');
  const log = [new Uint32Array(3), new Uint32Array(1)];
  log[0]![0] = 0b1010; // pages 1 and 3
  log[0]![2] = 0xffffffff; // pages 64..69, and bits past the block's end
  log[1]![0] = 1; // vga.vram page 0, still to send
  assert.deepEqual(bm.fold(log), { dirtied: 2 + 6 + 1, added: 8 });
  assert.deepEqual(ranges(bm, 0, true), [[1, 1], [3, 1], [64, 6]]);
  assert.deepEqual(ranges(bm, 0, false), [[0, 1], [2, 1], [4, 60]]);
  assert.equal(bm.toSend[0]![2], 0b111111, 'the bits past the end stay clear');
});

test('residency: a page never backed is used once; one the log reports written is backed', () => {
  const { bm, vm } = bitmaps(64);
  vm.memory[0]!.residency = () => new Uint8Array(64); // nothing backed
  bm.takeResidency();
  assert.equal(bm.neverBacked32(0, 1), true);
  assert.equal(bm.neverBacked32(0, 1), false, 'marked used');
  const log = [new Uint32Array(2), undefined];
  log[0]![0] = 1 << 5;
  bm.fold(log);
  assert.equal(bm.firstUse(0, 5), false, 'written since setup: read for real');
  assert.equal(bm.firstUse(0, 6), true);
  assert.equal(bm.firstUse(0, 6), false);
  assert.equal(bm.neverBacked32(0, 0), false, 'word 0 holds pages used');
  assert.equal(bm.firstUse(1, 0), false, 'a block without residency reads every page');
});

test('reload: the destination\'s received bitmap, pages missing to send again, sizes checked', () => {
  const { bm } = bitmaps(70);
  bm.cursorBlock = 1;
  bm.cursorWord = 1;
  const received = new Uint8Array(16); // 70 pages: 9 bytes, padded to 16
  received.fill(0xff, 0, 9);
  received[0] = 0b11111101; // page 1 missing
  assert.equal(bm.reload(0, received), 1 + 5, 'page 1 and vga.vram\'s five');
  assert.deepEqual(ranges(bm, 0, true), [[1, 1]]);
  assert.deepEqual([bm.cursorBlock, bm.cursorWord], [0, 0]);
  assert.throws(() => bm.reload(0, new Uint8Array(8)), (e: unknown) => e instanceof MigrationError && /ramblock 'pc.ram' bitmap size mismatch \(0x8 != 0x10\)/.test(e.message));
});
