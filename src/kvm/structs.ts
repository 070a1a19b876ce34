// Codecs for the x86_64 KVM structs Ferry passes through ioctls: plain TypeScript values
// on one side, the kernel's byte layout (<linux/kvm.h>, <asm/kvm.h>) on the other. Every
// offset here is checked against the C compiler's offsetof() in structs.test.ts.

import { SIZEOF } from './ioctls.js';

function dv(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function need(bytes: Uint8Array, size: number, what: string): void {
  if (bytes.byteLength < size) throw new RangeError(`${what} needs ${size} bytes, got ${bytes.byteLength}`);
}

// ---- kvm_regs ----------------------------------------------------------------------

export const REG_NAMES = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export type KvmRegs = Record<RegName, bigint>;

export function zeroRegs(): KvmRegs {
  return Object.fromEntries(REG_NAMES.map((n) => [n, 0n])) as KvmRegs;
}

export function encodeRegs(regs: KvmRegs, out = new Uint8Array(SIZEOF.kvm_regs)): Uint8Array {
  need(out, SIZEOF.kvm_regs, 'kvm_regs');
  const v = dv(out);
  REG_NAMES.forEach((name, i) => v.setBigUint64(i * 8, regs[name], true));
  return out;
}

export function decodeRegs(bytes: Uint8Array): KvmRegs {
  need(bytes, SIZEOF.kvm_regs, 'kvm_regs');
  const v = dv(bytes);
  return Object.fromEntries(REG_NAMES.map((n, i) => [n, v.getBigUint64(i * 8, true)])) as KvmRegs;
}

// ---- kvm_sregs ---------------------------------------------------------------------

export interface KvmSegment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

export interface KvmDtable {
  base: bigint;
  limit: number;
}

export const SEGMENT_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
export type SegmentName = (typeof SEGMENT_NAMES)[number];
export const CONTROL_NAMES = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apic_base'] as const;
export type ControlName = (typeof CONTROL_NAMES)[number];

export type KvmSregs = Record<SegmentName, KvmSegment> & Record<ControlName, bigint> & {
  gdt: KvmDtable;
  idt: KvmDtable;
  /** 256 bits, one per pending external interrupt vector (4 × u64). */
  interrupt_bitmap: bigint[];
};

const SEG_OFFSETS = { base: 0, limit: 8, selector: 12, type: 14, present: 15, dpl: 16, db: 17, s: 18, l: 19, g: 20, avl: 21, unusable: 22 } as const;
const SREGS_GDT = 192;
const SREGS_IDT = 208;
const SREGS_CR0 = 224;
const SREGS_INTERRUPT_BITMAP = 280;

export function encodeSegment(seg: KvmSegment, v: DataView, at: number): void {
  v.setBigUint64(at + SEG_OFFSETS.base, seg.base, true);
  v.setUint32(at + SEG_OFFSETS.limit, seg.limit >>> 0, true);
  v.setUint16(at + SEG_OFFSETS.selector, seg.selector, true);
  v.setUint8(at + SEG_OFFSETS.type, seg.type);
  v.setUint8(at + SEG_OFFSETS.present, seg.present);
  v.setUint8(at + SEG_OFFSETS.dpl, seg.dpl);
  v.setUint8(at + SEG_OFFSETS.db, seg.db);
  v.setUint8(at + SEG_OFFSETS.s, seg.s);
  v.setUint8(at + SEG_OFFSETS.l, seg.l);
  v.setUint8(at + SEG_OFFSETS.g, seg.g);
  v.setUint8(at + SEG_OFFSETS.avl, seg.avl);
  v.setUint8(at + SEG_OFFSETS.unusable, seg.unusable);
  v.setUint8(at + 23, 0); // padding
}

export function decodeSegment(v: DataView, at: number): KvmSegment {
  return {
    base: v.getBigUint64(at + SEG_OFFSETS.base, true),
    limit: v.getUint32(at + SEG_OFFSETS.limit, true),
    selector: v.getUint16(at + SEG_OFFSETS.selector, true),
    type: v.getUint8(at + SEG_OFFSETS.type),
    present: v.getUint8(at + SEG_OFFSETS.present),
    dpl: v.getUint8(at + SEG_OFFSETS.dpl),
    db: v.getUint8(at + SEG_OFFSETS.db),
    s: v.getUint8(at + SEG_OFFSETS.s),
    l: v.getUint8(at + SEG_OFFSETS.l),
    g: v.getUint8(at + SEG_OFFSETS.g),
    avl: v.getUint8(at + SEG_OFFSETS.avl),
    unusable: v.getUint8(at + SEG_OFFSETS.unusable),
  };
}

export function encodeSregs(sregs: KvmSregs, out = new Uint8Array(SIZEOF.kvm_sregs)): Uint8Array {
  need(out, SIZEOF.kvm_sregs, 'kvm_sregs');
  const v = dv(out);
  SEGMENT_NAMES.forEach((name, i) => encodeSegment(sregs[name], v, i * SIZEOF.kvm_segment));
  for (const [name, at] of [['gdt', SREGS_GDT], ['idt', SREGS_IDT]] as const) {
    v.setBigUint64(at, sregs[name].base, true);
    v.setUint16(at + 8, sregs[name].limit, true);
    v.setUint16(at + 10, 0, true); // padding[3]
    v.setUint32(at + 12, 0, true);
  }
  CONTROL_NAMES.forEach((name, i) => v.setBigUint64(SREGS_CR0 + i * 8, sregs[name], true));
  if (sregs.interrupt_bitmap.length !== 4) throw new RangeError(`kvm_sregs.interrupt_bitmap needs 4 words, got ${sregs.interrupt_bitmap.length}`);
  sregs.interrupt_bitmap.forEach((w, i) => v.setBigUint64(SREGS_INTERRUPT_BITMAP + i * 8, w, true));
  return out;
}

export function decodeSregs(bytes: Uint8Array): KvmSregs {
  need(bytes, SIZEOF.kvm_sregs, 'kvm_sregs');
  const v = dv(bytes);
  const out: Record<string, unknown> = {};
  SEGMENT_NAMES.forEach((name, i) => { out[name] = decodeSegment(v, i * SIZEOF.kvm_segment); });
  out['gdt'] = { base: v.getBigUint64(SREGS_GDT, true), limit: v.getUint16(SREGS_GDT + 8, true) };
  out['idt'] = { base: v.getBigUint64(SREGS_IDT, true), limit: v.getUint16(SREGS_IDT + 8, true) };
  CONTROL_NAMES.forEach((name, i) => { out[name] = v.getBigUint64(SREGS_CR0 + i * 8, true); });
  out['interrupt_bitmap'] = [0, 1, 2, 3].map((i) => v.getBigUint64(SREGS_INTERRUPT_BITMAP + i * 8, true));
  return out as KvmSregs;
}

// ---- kvm_xcrs ----------------------------------------------------------------------

export interface KvmXcr {
  xcr: number;
  value: bigint;
}
export const KVM_MAX_XCRS = 16;

export function encodeXcrs(xcrs: readonly KvmXcr[], flags = 0): Uint8Array {
  if (xcrs.length > KVM_MAX_XCRS) throw new RangeError(`kvm_xcrs holds at most ${KVM_MAX_XCRS} entries, got ${xcrs.length}`);
  const out = new Uint8Array(SIZEOF.kvm_xcrs);
  const v = dv(out);
  v.setUint32(0, xcrs.length, true);
  v.setUint32(4, flags, true);
  xcrs.forEach((x, i) => {
    v.setUint32(8 + i * SIZEOF.kvm_xcr, x.xcr, true);
    v.setBigUint64(8 + i * SIZEOF.kvm_xcr + 8, x.value, true);
  });
  return out;
}

export function decodeXcrs(bytes: Uint8Array): KvmXcr[] {
  need(bytes, SIZEOF.kvm_xcrs, 'kvm_xcrs');
  const v = dv(bytes);
  const n = v.getUint32(0, true);
  if (n > KVM_MAX_XCRS) throw new RangeError(`kvm_xcrs.nr_xcrs ${n} exceeds ${KVM_MAX_XCRS}`);
  const out: KvmXcr[] = [];
  for (let i = 0; i < n; i++) {
    out.push({ xcr: v.getUint32(8 + i * SIZEOF.kvm_xcr, true), value: v.getBigUint64(8 + i * SIZEOF.kvm_xcr + 8, true) });
  }
  return out;
}

// ---- kvm_msrs, kvm_msr_list --------------------------------------------------------

export interface KvmMsrEntry {
  index: number;
  data: bigint;
}

export function encodeMsrs(entries: readonly KvmMsrEntry[]): Uint8Array {
  const out = new Uint8Array(SIZEOF.kvm_msrs + entries.length * SIZEOF.kvm_msr_entry);
  const v = dv(out);
  v.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const at = SIZEOF.kvm_msrs + i * SIZEOF.kvm_msr_entry;
    v.setUint32(at, e.index >>> 0, true);
    v.setBigUint64(at + 8, e.data, true);
  });
  return out;
}

/** The first `count` entries of a kvm_msrs buffer (KVM_GET_MSRS returns how many it filled). */
export function decodeMsrs(bytes: Uint8Array, count: number): KvmMsrEntry[] {
  need(bytes, SIZEOF.kvm_msrs + count * SIZEOF.kvm_msr_entry, 'kvm_msrs');
  const v = dv(bytes);
  const out: KvmMsrEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = SIZEOF.kvm_msrs + i * SIZEOF.kvm_msr_entry;
    out.push({ index: v.getUint32(at, true), data: v.getBigUint64(at + 8, true) });
  }
  return out;
}

export function encodeMsrList(capacity: number): Uint8Array {
  const out = new Uint8Array(SIZEOF.kvm_msr_list + capacity * 4);
  dv(out).setUint32(0, capacity, true);
  return out;
}

export function decodeMsrList(bytes: Uint8Array): number[] {
  need(bytes, SIZEOF.kvm_msr_list, 'kvm_msr_list');
  const v = dv(bytes);
  const n = v.getUint32(0, true);
  need(bytes, SIZEOF.kvm_msr_list + n * 4, 'kvm_msr_list');
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(v.getUint32(4 + i * 4, true));
  return out;
}

// ---- kvm_vcpu_events ---------------------------------------------------------------

export interface KvmVcpuEvents {
  exception: { injected: number; nr: number; has_error_code: number; pending: number; error_code: number };
  interrupt: { injected: number; nr: number; soft: number; shadow: number };
  nmi: { injected: number; pending: number; masked: number };
  sipi_vector: number;
  flags: number;
  smi: { smm: number; pending: number; smm_inside_nmi: number; latched_init: number };
  triple_fault: { pending: number };
  exception_has_payload: number;
  exception_payload: bigint;
}

export function encodeVcpuEvents(e: KvmVcpuEvents): Uint8Array {
  const out = new Uint8Array(SIZEOF.kvm_vcpu_events);
  const v = dv(out);
  v.setUint8(0, e.exception.injected);
  v.setUint8(1, e.exception.nr);
  v.setUint8(2, e.exception.has_error_code);
  v.setUint8(3, e.exception.pending);
  v.setUint32(4, e.exception.error_code >>> 0, true);
  v.setUint8(8, e.interrupt.injected);
  v.setUint8(9, e.interrupt.nr);
  v.setUint8(10, e.interrupt.soft);
  v.setUint8(11, e.interrupt.shadow);
  v.setUint8(12, e.nmi.injected);
  v.setUint8(13, e.nmi.pending);
  v.setUint8(14, e.nmi.masked);
  v.setUint32(16, e.sipi_vector >>> 0, true);
  v.setUint32(20, e.flags >>> 0, true);
  v.setUint8(24, e.smi.smm);
  v.setUint8(25, e.smi.pending);
  v.setUint8(26, e.smi.smm_inside_nmi);
  v.setUint8(27, e.smi.latched_init);
  v.setUint8(28, e.triple_fault.pending);
  v.setUint8(55, e.exception_has_payload);
  v.setBigUint64(56, e.exception_payload, true);
  return out;
}

export function decodeVcpuEvents(bytes: Uint8Array): KvmVcpuEvents {
  need(bytes, SIZEOF.kvm_vcpu_events, 'kvm_vcpu_events');
  const v = dv(bytes);
  return {
    exception: { injected: v.getUint8(0), nr: v.getUint8(1), has_error_code: v.getUint8(2), pending: v.getUint8(3), error_code: v.getUint32(4, true) },
    interrupt: { injected: v.getUint8(8), nr: v.getUint8(9), soft: v.getUint8(10), shadow: v.getUint8(11) },
    nmi: { injected: v.getUint8(12), pending: v.getUint8(13), masked: v.getUint8(14) },
    sipi_vector: v.getUint32(16, true),
    flags: v.getUint32(20, true),
    smi: { smm: v.getUint8(24), pending: v.getUint8(25), smm_inside_nmi: v.getUint8(26), latched_init: v.getUint8(27) },
    triple_fault: { pending: v.getUint8(28) },
    exception_has_payload: v.getUint8(55),
    exception_payload: v.getBigUint64(56, true),
  };
}

// ---- kvm_debugregs -----------------------------------------------------------------

export interface KvmDebugRegs {
  /** DR0..DR3, the breakpoint addresses. */
  db: bigint[];
  dr6: bigint;
  dr7: bigint;
}

export function encodeDebugRegs(d: KvmDebugRegs): Uint8Array {
  if (d.db.length !== 4) throw new RangeError(`kvm_debugregs.db needs 4 registers, got ${d.db.length}`);
  const out = new Uint8Array(SIZEOF.kvm_debugregs);
  const v = dv(out);
  d.db.forEach((x, i) => v.setBigUint64(i * 8, x, true));
  v.setBigUint64(32, d.dr6, true);
  v.setBigUint64(40, d.dr7, true);
  // flags (48) and reserved[9] stay zero: KVM rejects nonzero flags.
  return out;
}

export function decodeDebugRegs(bytes: Uint8Array): KvmDebugRegs {
  need(bytes, SIZEOF.kvm_debugregs, 'kvm_debugregs');
  const v = dv(bytes);
  return { db: [0, 1, 2, 3].map((i) => v.getBigUint64(i * 8, true)), dr6: v.getBigUint64(32, true), dr7: v.getBigUint64(40, true) };
}

// ---- memory slots and the dirty log -------------------------------------------------

export interface KvmUserspaceMemoryRegion {
  slot: number;
  flags: number;
  guestPhysAddr: bigint;
  memorySize: bigint;
  /** Host virtual address of the mapping backing the slot. */
  userspaceAddr: bigint;
}

export function encodeMemoryRegion(r: KvmUserspaceMemoryRegion): Uint8Array {
  const out = new Uint8Array(SIZEOF.kvm_userspace_memory_region);
  const v = dv(out);
  v.setUint32(0, r.slot, true);
  v.setUint32(4, r.flags, true);
  v.setBigUint64(8, r.guestPhysAddr, true);
  v.setBigUint64(16, r.memorySize, true);
  v.setBigUint64(24, r.userspaceAddr, true);
  return out;
}

/** kvm_dirty_log: the kernel writes the slot's bitmap to `bitmapAddr` (host address, 8-byte aligned). */
export function encodeDirtyLog(slot: number, bitmapAddr: bigint): Uint8Array {
  const out = new Uint8Array(SIZEOF.kvm_dirty_log);
  const v = dv(out);
  v.setUint32(0, slot, true);
  v.setBigUint64(8, bitmapAddr, true);
  return out;
}

/**
 * kvm_clear_dirty_log: re-protect the pages whose bits are set in the bitmap at
 * `bitmapAddr`, which covers `numPages` pages from `firstPage` (a multiple of 64).
 */
export function encodeClearDirtyLog(slot: number, firstPage: bigint, numPages: number, bitmapAddr: bigint): Uint8Array {
  const out = new Uint8Array(SIZEOF.kvm_clear_dirty_log);
  const v = dv(out);
  v.setUint32(0, slot, true);
  v.setUint32(4, numPages, true);
  v.setBigUint64(8, firstPage, true);
  v.setBigUint64(16, bitmapAddr, true);
  return out;
}

export function encodeEnableCap(cap: number, args: readonly bigint[], flags = 0): Uint8Array {
  if (args.length > 4) throw new RangeError(`kvm_enable_cap takes 4 args, got ${args.length}`);
  const out = new Uint8Array(SIZEOF.kvm_enable_cap);
  const v = dv(out);
  v.setUint32(0, cap, true);
  v.setUint32(4, flags, true);
  args.forEach((a, i) => v.setBigUint64(8 + i * 8, a, true));
  return out;
}

// ---- kvm_cpuid2 --------------------------------------------------------------------

export interface KvmCpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** A kvm_cpuid2 with room for `capacity` entries (nent = capacity), for KVM_GET_SUPPORTED_CPUID. */
export function cpuid2Buffer(capacity: number): Uint8Array {
  const out = new Uint8Array(SIZEOF.kvm_cpuid2 + capacity * SIZEOF.kvm_cpuid_entry2);
  dv(out).setUint32(0, capacity, true);
  return out;
}

export function encodeCpuid2(entries: readonly KvmCpuidEntry[]): Uint8Array {
  const out = cpuid2Buffer(entries.length);
  const v = dv(out);
  entries.forEach((e, i) => {
    const at = SIZEOF.kvm_cpuid2 + i * SIZEOF.kvm_cpuid_entry2;
    v.setUint32(at, e.function >>> 0, true);
    v.setUint32(at + 4, e.index >>> 0, true);
    v.setUint32(at + 8, e.flags >>> 0, true);
    v.setUint32(at + 12, e.eax >>> 0, true);
    v.setUint32(at + 16, e.ebx >>> 0, true);
    v.setUint32(at + 20, e.ecx >>> 0, true);
    v.setUint32(at + 24, e.edx >>> 0, true);
  });
  return out;
}

export function decodeCpuid2(bytes: Uint8Array): KvmCpuidEntry[] {
  need(bytes, SIZEOF.kvm_cpuid2, 'kvm_cpuid2');
  const v = dv(bytes);
  const n = v.getUint32(0, true);
  need(bytes, SIZEOF.kvm_cpuid2 + n * SIZEOF.kvm_cpuid_entry2, 'kvm_cpuid2');
  const out: KvmCpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = SIZEOF.kvm_cpuid2 + i * SIZEOF.kvm_cpuid_entry2;
    out.push({
      function: v.getUint32(at, true), index: v.getUint32(at + 4, true), flags: v.getUint32(at + 8, true),
      eax: v.getUint32(at + 12, true), ebx: v.getUint32(at + 16, true), ecx: v.getUint32(at + 20, true), edx: v.getUint32(at + 24, true),
    });
  }
  return out;
}

// ---- kvm_run (the vCPU's shared page) ----------------------------------------------

export const KVM_RUN_OFFSETS = {
  request_interrupt_window: 0,
  immediate_exit: 1,
  exit_reason: 8,
  ready_for_interrupt_injection: 12,
  if_flag: 13,
  flags: 14,
  cr8: 16,
  apic_base: 24,
  /** Start of the exit union. */
  exit: 32,
  io_direction: 32,
  io_size: 33,
  io_port: 34,
  io_count: 36,
  io_data_offset: 40,
  mmio_phys_addr: 32,
  mmio_data: 40,
  mmio_len: 48,
  mmio_is_write: 52,
  fail_entry_reason: 32,
  fail_entry_cpu: 40,
  internal_suberror: 32,
  internal_ndata: 36,
  internal_data: 40,
  system_event_type: 32,
} as const;

/** A typed view over a vCPU's mmap'ed kvm_run; reads and writes go straight to the shared page. */
export class KvmRunView {
  readonly bytes: Uint8Array;
  private readonly v: DataView;
  constructor(bytes: Uint8Array) {
    need(bytes, 256, 'kvm_run');
    this.bytes = bytes;
    this.v = dv(bytes);
  }
  get immediateExit(): number { return this.v.getUint8(KVM_RUN_OFFSETS.immediate_exit); }
  set immediateExit(value: number) { this.v.setUint8(KVM_RUN_OFFSETS.immediate_exit, value); }
  get exitReason(): number { return this.v.getUint32(KVM_RUN_OFFSETS.exit_reason, true); }
  get io(): { direction: number; size: number; port: number; count: number; dataOffset: number } {
    const o = KVM_RUN_OFFSETS;
    return {
      direction: this.v.getUint8(o.io_direction),
      size: this.v.getUint8(o.io_size),
      port: this.v.getUint16(o.io_port, true),
      count: this.v.getUint32(o.io_count, true),
      dataOffset: Number(this.v.getBigUint64(o.io_data_offset, true)),
    };
  }
  get mmio(): { physAddr: bigint; len: number; isWrite: boolean } {
    const o = KVM_RUN_OFFSETS;
    return { physAddr: this.v.getBigUint64(o.mmio_phys_addr, true), len: this.v.getUint32(o.mmio_len, true), isWrite: this.v.getUint8(o.mmio_is_write) !== 0 };
  }
  /** The 8 data bytes of an MMIO exit: little-endian value of `len` bytes. */
  readMmioData(len: number): number {
    let value = 0;
    for (let i = len - 1; i >= 0; i--) value = value * 256 + this.v.getUint8(KVM_RUN_OFFSETS.mmio_data + i);
    return value;
  }
  writeMmioData(len: number, value: number): void {
    let rest = value;
    for (let i = 0; i < len; i++) {
      this.v.setUint8(KVM_RUN_OFFSETS.mmio_data + i, rest % 256);
      rest = Math.floor(rest / 256);
    }
  }
  /** One element of an IO exit's data, at data_offset + i*size in this page. */
  readIoData(offset: number, size: number): number {
    if (offset + size > this.bytes.byteLength) throw new RangeError(`kvm_run io data at ${offset}+${size} is outside the ${this.bytes.byteLength}-byte page`);
    return size === 1 ? this.v.getUint8(offset) : size === 2 ? this.v.getUint16(offset, true) : this.v.getUint32(offset, true);
  }
  writeIoData(offset: number, size: number, value: number): void {
    if (offset + size > this.bytes.byteLength) throw new RangeError(`kvm_run io data at ${offset}+${size} is outside the ${this.bytes.byteLength}-byte page`);
    if (size === 1) this.v.setUint8(offset, value & 0xff);
    else if (size === 2) this.v.setUint16(offset, value & 0xffff, true);
    else this.v.setUint32(offset, value >>> 0, true);
  }
  get failEntry(): { hardwareEntryFailureReason: bigint; cpu: number } {
    return { hardwareEntryFailureReason: this.v.getBigUint64(KVM_RUN_OFFSETS.fail_entry_reason, true), cpu: this.v.getUint32(KVM_RUN_OFFSETS.fail_entry_cpu, true) };
  }
  get internal(): { suberror: number; data: bigint[] } {
    const n = Math.min(this.v.getUint32(KVM_RUN_OFFSETS.internal_ndata, true), 16);
    const data: bigint[] = [];
    for (let i = 0; i < n; i++) data.push(this.v.getBigUint64(KVM_RUN_OFFSETS.internal_data + i * 8, true));
    return { suberror: this.v.getUint32(KVM_RUN_OFFSETS.internal_suberror, true), data };
  }
  get systemEventType(): number { return this.v.getUint32(KVM_RUN_OFFSETS.system_event_type, true); }
}
