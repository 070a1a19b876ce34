import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CODE_ADDR, GDT_ADDR, PARAMS_ADDR, PARAMS_MAGIC, PD_ADDR, PDPT_ADDR, PML4_ADDR, STACK_TOP } from './layout.js';
import {
  GDT_CODE64, LONG_MODE_TABLES_END, longModeEntryRegisters, longModeSpecialRegisters, segmentFromDescriptor,
  writeLongModeTables,
} from './long-mode.js';
import { loadBuiltinGuest } from './builtin.js';

const dv = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

test('RAM above 4 GiB: PDPT[4..] map it as 1 GiB pages, up to its end; the first 4 GiB as before', () => {
  const GiB = 2 ** 30;
  const ram = new Uint8Array(1 << 20).fill(0xee);
  writeLongModeTables(ram, 6 * GiB + 4096);
  const v = dv(ram);
  assert.equal(v.getBigUint64(PDPT_ADDR + 3 * 8, true), BigInt(PD_ADDR + 3 * 0x1000) | 3n);
  assert.equal(v.getBigUint64(PDPT_ADDR + 4 * 8, true), BigInt(4 * GiB) | 0x83n, '4 GiB: P | RW | PS');
  assert.equal(v.getBigUint64(PDPT_ADDR + 6 * 8, true), BigInt(6 * GiB) | 0x83n, 'the partial last GiB');
  assert.equal(v.getBigUint64(PDPT_ADDR + 7 * 8, true), 0n, 'nothing past the end');
  assert.throws(() => writeLongModeTables(ram, 513 * GiB), /reach 512 GiB/);
});

test('GDT golden bytes: null, 64-bit code, data, busy TSS', () => {
  const ram = new Uint8Array(1 << 20);
  writeLongModeTables(ram);
  assert.deepEqual([...ram.subarray(GDT_ADDR, GDT_ADDR + 32)], [
    0, 0, 0, 0, 0, 0, 0, 0, // null descriptor
    0xff, 0xff, 0, 0, 0, 0x9b, 0xaf, 0, // 0x08 code: limit 0xfffff, access 0x9b, flags G|L
    0xff, 0xff, 0, 0, 0, 0x93, 0xcf, 0, // 0x10 data: access 0x93, flags G|D/B
    0xff, 0xff, 0, 0, 0, 0x8b, 0x8f, 0, // 0x18 TSS: access 0x8b (present, busy 64-bit TSS), flags G
  ]);
});

test('page tables: PML4[0] → PDPT, PDPT[0..3] → PDs, PDs map 2 MiB pages identity over 4 GiB', () => {
  const ram = new Uint8Array(1 << 20).fill(0xee);
  writeLongModeTables(ram);
  const v = dv(ram);
  assert.deepEqual([...ram.subarray(PML4_ADDR, PML4_ADDR + 8)], [0x03, 0x30, 0, 0, 0, 0, 0, 0]); // 0x3000 | P | RW
  assert.equal(v.getBigUint64(PML4_ADDR + 8, true), 0n, 'PML4[1] empty');
  assert.deepEqual([...ram.subarray(PDPT_ADDR, PDPT_ADDR + 32)], [
    0x03, 0x40, 0, 0, 0, 0, 0, 0, // → PD at 0x4000
    0x03, 0x50, 0, 0, 0, 0, 0, 0, // → 0x5000
    0x03, 0x60, 0, 0, 0, 0, 0, 0, // → 0x6000
    0x03, 0x70, 0, 0, 0, 0, 0, 0, // → 0x7000
  ]);
  assert.equal(v.getBigUint64(PDPT_ADDR + 32, true), 0n, 'PDPT[4] empty');
  assert.deepEqual([...ram.subarray(PD_ADDR, PD_ADDR + 16)], [
    0x83, 0, 0, 0, 0, 0, 0, 0, // 0 MiB | P | RW | PS
    0x83, 0, 0x20, 0, 0, 0, 0, 0, // 2 MiB
  ]);
  // The last entry of the last directory maps 4 GiB - 2 MiB.
  assert.equal(v.getBigUint64(LONG_MODE_TABLES_END - 8, true), 0xffe00000n | 0x83n);
  assert.equal(ram[LONG_MODE_TABLES_END], 0xee, 'nothing written past the tables');
});

test('segmentFromDescriptor decodes the 64-bit code descriptor as the CPU caches it', () => {
  assert.deepEqual(segmentFromDescriptor(GDT_CODE64, 0x08), {
    base: 0n, limit: 0xffffffff, selector: 0x08, type: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0,
  });
  // A descriptor with a base and byte granularity.
  const d = segmentFromDescriptor(0x12409a345678abcdn, 0x20);
  assert.equal(d.base, 0x12345678n);
  assert.equal(d.limit, 0xabcd);
  assert.equal(d.g, 0);
  assert.equal(d.db, 1);
  assert.equal(segmentFromDescriptor(0n, 0).unusable, 1);
});

test('long-mode special registers: PE|PG, CR3 = PML4, PAE, EFER LME|LMA, TR a busy TSS', () => {
  const s = longModeSpecialRegisters();
  assert.equal(s.cr0 & 0x80000001n, 0x80000001n);
  assert.equal(s.cr3, BigInt(PML4_ADDR));
  assert.equal(s.cr4 & 0x20n, 0x20n);
  assert.equal(s.efer, 0x500n);
  assert.equal(s.cs.l, 1);
  assert.equal(s.cs.db, 0, 'L and D/B together are reserved');
  assert.equal(s.ss.selector, 0x10);
  assert.equal(s.tr.type, 11);
  assert.equal(s.tr.s, 0);
  assert.deepEqual(s.gdt, { base: BigInt(GDT_ADDR), limit: 31 });
  assert.deepEqual(longModeEntryRegisters(), { rip: BigInt(CODE_ADDR), rsp: BigInt(STACK_TOP), rflags: 2n });
});

test('loadBuiltinGuest writes tables, parameters and code; rejects a too-small RAM and sim-only guests', () => {
  const ram = new Uint8Array(4 << 20);
  const image = Uint8Array.of(0xbb, 0x00, 0x90, 0x00, 0x00);
  loadBuiltinGuest(ram, { kind: 'sweep', from: 0x100000, to: undefined, rate: undefined }, ram.byteLength, image);
  assert.deepEqual([...ram.subarray(CODE_ADDR, CODE_ADDR + 5)], [...image]);
  assert.equal(dv(ram).getUint32(PARAMS_ADDR, true), PARAMS_MAGIC);
  assert.equal(ram[PML4_ADDR], 0x03);
  assert.throws(() => writeLongModeTables(new Uint8Array(0x1000)), /too small/);
  assert.throws(() => loadBuiltinGuest(ram, { kind: 'random', rate: undefined }, ram.byteLength, image), /sim accelerator/);
});

test('loadBuiltinGuest with RAM above 4 GiB: maps it where the CPU has 1 GiB pages, and otherwise refuses a sweep there', () => {
  const ram = new Uint8Array(4 << 20);
  const image = Uint8Array.of(0xf4);
  const size = 2 ** 32 + 2 ** 30; // 3.5 GiB below the hole, 1.5 GiB from 4 GiB
  const high = { lowRamLimit: 0xe0000000, end: 2 ** 32 + 2 ** 30 + 2 ** 29 };
  const above = { kind: 'sweep', from: 2 ** 32, to: 2 ** 32 + (2 << 20), rate: undefined } as const;
  loadBuiltinGuest(ram, above, size, image, undefined, { ...high, pages1G: true });
  assert.equal(dv(ram).getBigUint64(PDPT_ADDR + 5 * 8, true), BigInt(5 * 2 ** 30) | 0x83n);
  assert.equal(dv(ram).getBigUint64(PARAMS_ADDR + 8, true), 2n ** 32n, 'the sweep starts at 4 GiB');
  assert.throws(() => loadBuiltinGuest(ram, above, size, image, undefined, { ...high, pages1G: false }), /cannot sweep RAM above 4 GiB on this CPU.*pdpe1gb/);
  // Below the hole it needs no 1 GiB pages.
  loadBuiltinGuest(ram, { ...above, from: 0x100000, to: undefined }, size, image, undefined, { ...high, pages1G: false });
  assert.equal(dv(ram).getBigUint64(PARAMS_ADDR + 16, true), 0xe0000000n, 'the default sweep ends at the hole');
  assert.equal(dv(ram).getBigUint64(PDPT_ADDR + 4 * 8, true), 0n);
});
