// Entering the built-in guest directly in 64-bit long mode, without a BIOS (as
// Firecracker does): the GDT and identity-mapped page tables the VMM writes into guest
// RAM, and the segment/control register values that go with them.

import { ConfigError } from '../errors.js';
import type { KvmSegment } from '../kvm/structs.js';
import { CODE_ADDR, GDT_ADDR, PD_ADDR, PD_COUNT, PDPT_ADDR, PML4_ADDR, STACK_TOP } from './layout.js';

/** A segment register as the CPU caches it: KVM's kvm_segment, one type for both. */
export type SegmentState = KvmSegment;

// Descriptor flag nibbles and access bytes, written as Intel SDM vol. 3 §3.4.5 lays them out.
// Code: present, DPL 0, code/data, execute/read, accessed; flags G=1, L=1 (64-bit).
export const GDT_CODE64 = 0x00af9b000000ffffn;
// Data: present, DPL 0, code/data, read/write, accessed; flags G=1, D/B=1.
export const GDT_DATA = 0x00cf93000000ffffn;
// Task state segment: present, system, type 11 (busy 64-bit TSS). VM entry requires a
// usable TR even though the guest never switches tasks.
export const GDT_TSS = 0x008f8b000000ffffn;

export const SELECTOR_CODE = 0x08;
export const SELECTOR_DATA = 0x10;
export const SELECTOR_TSS = 0x18;
const GDT_ENTRIES = [0n, GDT_CODE64, GDT_DATA, GDT_TSS] as const;

// Page-table entry bits.
const PTE_PRESENT = 0x1n;
const PTE_WRITABLE = 0x2n;
const PTE_PAGE_SIZE = 0x80n; // in a page-directory entry: a 2 MiB page
const HUGE_PAGE = 0x200000;
const ENTRIES_PER_TABLE = 512;
const GIB = 0x40000000;

export const CR0_PE = 0x1n;
export const CR0_MP = 0x2n;
export const CR0_ET = 0x10n;
export const CR0_NE = 0x20n;
export const CR0_WP = 0x10000n;
export const CR0_PG = 0x80000000n;
export const CR4_PAE = 0x20n;
export const CR4_OSFXSR = 0x200n;
export const CR4_OSXMMEXCPT = 0x400n;
export const EFER_LME = 0x100n;
export const EFER_LMA = 0x400n;

/** What the vCPU's control registers hold once in long mode with these tables. */
export const LONG_MODE_CONTROL = {
  cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
  cr3: BigInt(PML4_ADDR),
  cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
  efer: EFER_LME | EFER_LMA,
} as const;

/** Bytes of guest RAM the tables occupy: everything below the end of the last page directory. */
export const LONG_MODE_TABLES_END = PD_ADDR + PD_COUNT * 0x1000;

/** The cached segment state a CPU loads from a GDT descriptor. */
export function segmentFromDescriptor(descriptor: bigint, selector: number): SegmentState {
  const d = descriptor;
  const base = ((d >> 16n) & 0xffffffn) | (((d >> 56n) & 0xffn) << 24n);
  const rawLimit = Number((d & 0xffffn) | (((d >> 48n) & 0xfn) << 16n));
  const access = Number((d >> 40n) & 0xffn);
  const flags = Number((d >> 52n) & 0xfn);
  const g = (flags >> 3) & 1;
  return {
    base,
    // With G set the limit counts 4 KiB units: the CPU caches it scaled, low 12 bits set.
    limit: g ? ((rawLimit << 12) | 0xfff) >>> 0 : rawLimit,
    selector,
    type: access & 0xf,
    present: (access >> 7) & 1,
    dpl: (access >> 5) & 3,
    db: (flags >> 2) & 1,
    s: (access >> 4) & 1,
    l: (flags >> 1) & 1,
    g,
    avl: flags & 1,
    unusable: (access >> 7) & 1 ? 0 : 1,
  };
}

/**
 * Write the GDT at GDT_ADDR and identity-mapping page tables (PML4 → one PDPT → four
 * page directories of 2 MiB pages = the first 4 GiB) into guest RAM, which starts at
 * guest address 0. `highEnd`: RAM goes on from 4 GiB to there, mapped by the PDPT's
 * further entries as 1 GiB pages (the CPU must offer them: CPUID pdpe1gb); one PDPT
 * reaches 512 GiB.
 */
export function writeLongModeTables(ram: Uint8Array, highEnd?: number): void {
  if (ram.byteLength < LONG_MODE_TABLES_END) {
    throw new ConfigError(`Guest RAM of ${ram.byteLength} bytes is too small for the long-mode page tables (need ${LONG_MODE_TABLES_END})`);
  }
  const v = new DataView(ram.buffer, ram.byteOffset, ram.byteLength);
  GDT_ENTRIES.forEach((entry, i) => v.setBigUint64(GDT_ADDR + i * 8, entry, true));
  ram.fill(0, PML4_ADDR, LONG_MODE_TABLES_END);
  v.setBigUint64(PML4_ADDR, BigInt(PDPT_ADDR) | PTE_PRESENT | PTE_WRITABLE, true);
  for (let i = 0; i < PD_COUNT; i++) {
    v.setBigUint64(PDPT_ADDR + i * 8, BigInt(PD_ADDR + i * 0x1000) | PTE_PRESENT | PTE_WRITABLE, true);
  }
  for (let j = 0; j < PD_COUNT * ENTRIES_PER_TABLE; j++) {
    v.setBigUint64(PD_ADDR + j * 8, BigInt(j) * BigInt(HUGE_PAGE) | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE, true);
  }
  if (highEnd !== undefined) {
    const gibs = Math.ceil(highEnd / GIB);
    if (gibs > ENTRIES_PER_TABLE) throw new ConfigError(`The built-in guest's page tables reach 512 GiB; its RAM ends at ${highEnd}`);
    for (let i = PD_COUNT; i < gibs; i++) v.setBigUint64(PDPT_ADDR + i * 8, BigInt(i) * BigInt(GIB) | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE, true);
  }
}

/** The special registers for long mode with the tables above; fields not named keep the vCPU's reset values. */
export interface LongModeSpecialRegisters {
  cs: SegmentState;
  ds: SegmentState;
  es: SegmentState;
  fs: SegmentState;
  gs: SegmentState;
  ss: SegmentState;
  tr: SegmentState;
  gdt: { base: bigint; limit: number };
  /** An empty IDT: any exception becomes a triple fault, which the VMM reports as a crash. */
  idt: { base: bigint; limit: number };
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
}

export function longModeSpecialRegisters(): LongModeSpecialRegisters {
  const code = segmentFromDescriptor(GDT_CODE64, SELECTOR_CODE);
  const data = (): SegmentState => segmentFromDescriptor(GDT_DATA, SELECTOR_DATA);
  return {
    cs: code, ds: data(), es: data(), fs: data(), gs: data(), ss: data(),
    tr: segmentFromDescriptor(GDT_TSS, SELECTOR_TSS),
    gdt: { base: BigInt(GDT_ADDR), limit: GDT_ENTRIES.length * 8 - 1 },
    idt: { base: 0n, limit: 0 },
    ...LONG_MODE_CONTROL,
  };
}

/** General registers at entry: RIP at the code, RSP at the stack top, RFLAGS with only its fixed bit 1. */
export function longModeEntryRegisters(): { rip: bigint; rsp: bigint; rflags: bigint } {
  return { rip: BigInt(CODE_ADDR), rsp: BigInt(STACK_TOP), rflags: 0x2n };
}
