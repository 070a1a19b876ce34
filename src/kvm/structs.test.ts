// Struct layouts against offsetof()/sizeof() printed by src/kvm/golden/kvm-golden.c
// from the kernel headers: each codec writes a distinctive value per field and the test
// finds it at the golden offset.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SIZEOF } from './ioctls.js';
import {
  KVM_RUN_OFFSETS, KvmRunView, REG_NAMES, SEGMENT_NAMES, cpuid2Buffer, decodeCpuid2, decodeMsrList, decodeMsrs,
  decodeDebugRegs, decodeRegs, decodeSregs, decodeVcpuEvents, decodeXcrs, encodeClearDirtyLog, encodeCpuid2, encodeDebugRegs, encodeDirtyLog,
  encodeEnableCap, encodeMemoryRegion, encodeMsrs, encodeRegs, encodeSregs, encodeVcpuEvents, encodeXcrs, zeroRegs,
} from './structs.js';
import type { KvmSegment, KvmSregs, KvmVcpuEvents } from './structs.js';

const GOLDEN_SIZES: Record<string, number> = {
  kvm_regs: 144, kvm_segment: 24, kvm_dtable: 16, kvm_sregs: 312, kvm_fpu: 416, kvm_xsave: 4096,
  kvm_xcrs: 392, kvm_xcr: 16, kvm_msrs: 8, kvm_msr_entry: 16, kvm_msr_list: 4, kvm_vcpu_events: 64,
  kvm_mp_state: 4, kvm_lapic_state: 1024, kvm_debugregs: 128, kvm_userspace_memory_region: 32,
  kvm_dirty_log: 16, kvm_clear_dirty_log: 24, kvm_cpuid2: 8, kvm_cpuid_entry2: 40, kvm_enable_cap: 104,
};

const GOLDEN_RUN: Record<string, number> = {
  request_interrupt_window: 0, immediate_exit: 1, exit_reason: 8, ready_for_interrupt_injection: 12,
  if_flag: 13, flags: 14, cr8: 16, apic_base: 24, exit: 32, io_direction: 32, io_size: 33, io_port: 34,
  io_count: 36, io_data_offset: 40, mmio_phys_addr: 32, mmio_data: 40, mmio_len: 48, mmio_is_write: 52,
  fail_entry_reason: 32, fail_entry_cpu: 40, internal_suberror: 32, internal_ndata: 36, internal_data: 40,
  system_event_type: 32,
};

const dv = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

test('struct sizes equal sizeof() from the kernel headers', () => {
  assert.deepEqual({ ...SIZEOF }, GOLDEN_SIZES);
});

test('kvm_run offsets equal offsetof() from the kernel headers', () => {
  assert.deepEqual({ ...KVM_RUN_OFFSETS }, GOLDEN_RUN);
});

test('kvm_regs: rax at 0, rsp at 48, r8 at 64, rip at 128, rflags at 136; round trip', () => {
  const regs = zeroRegs();
  REG_NAMES.forEach((n, i) => { regs[n] = BigInt(i + 1) * 0x0101010101010101n; });
  const bytes = encodeRegs(regs);
  const v = dv(bytes);
  assert.equal(bytes.byteLength, 144);
  assert.equal(v.getBigUint64(0, true), regs.rax);
  assert.equal(v.getBigUint64(48, true), regs.rsp);
  assert.equal(v.getBigUint64(64, true), regs.r8);
  assert.equal(v.getBigUint64(128, true), regs.rip);
  assert.equal(v.getBigUint64(136, true), regs.rflags);
  assert.deepEqual(decodeRegs(bytes), regs);
});

function segment(seed: number): KvmSegment {
  return {
    base: 0x1122334455667788n + BigInt(seed), limit: 0xfffff000 + seed, selector: 0x08 * seed, type: 0xb,
    present: 1, dpl: seed & 3, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: seed & 1,
  };
}

function sampleSregs(): KvmSregs {
  const s: Record<string, unknown> = {};
  SEGMENT_NAMES.forEach((n, i) => { s[n] = segment(i + 1); });
  return {
    ...(s as Pick<KvmSregs, (typeof SEGMENT_NAMES)[number]>),
    gdt: { base: 0x1000n, limit: 0x17 }, idt: { base: 0x2000n, limit: 0xfff },
    cr0: 0x80050033n, cr2: 0xdeadn, cr3: 0x2000n, cr4: 0x20n, cr8: 0n, efer: 0x500n, apic_base: 0xfee00900n,
    interrupt_bitmap: [1n, 2n, 3n, 1n << 63n],
  };
}

test('kvm_sregs: segments at 24-byte strides with kvm_segment field offsets; dtables, control registers', () => {
  const sregs = sampleSregs();
  const bytes = encodeSregs(sregs);
  const v = dv(bytes);
  // kvm_segment fields of ss (index 5, at 120): base 0, limit 8, selector 12, type 14, present 15,
  // dpl 16, db 17, s 18, l 19, g 20, avl 21, unusable 22.
  const ss = 120;
  assert.equal(v.getBigUint64(ss + 0, true), sregs.ss.base);
  assert.equal(v.getUint32(ss + 8, true), sregs.ss.limit);
  assert.equal(v.getUint16(ss + 12, true), sregs.ss.selector);
  assert.deepEqual([...bytes.subarray(ss + 14, ss + 23)], [0xb, 1, 6 & 3, 0, 1, 1, 1, 0, 0]);
  assert.equal(v.getUint16(144 + 12, true), sregs.tr.selector, 'tr at 144');
  assert.equal(v.getUint16(168 + 12, true), sregs.ldt.selector, 'ldt at 168');
  assert.equal(v.getBigUint64(192, true), 0x1000n, 'gdt.base at 192');
  assert.equal(v.getUint16(200, true), 0x17, 'gdt.limit at 200');
  assert.equal(v.getBigUint64(208, true), 0x2000n, 'idt.base at 208');
  assert.equal(v.getBigUint64(224, true), sregs.cr0, 'cr0 at 224');
  assert.equal(v.getBigUint64(232, true), sregs.cr2, 'cr2 at 232');
  assert.equal(v.getBigUint64(240, true), sregs.cr3, 'cr3 at 240');
  assert.equal(v.getBigUint64(248, true), sregs.cr4, 'cr4 at 248');
  assert.equal(v.getBigUint64(264, true), sregs.efer, 'efer at 264');
  assert.equal(v.getBigUint64(272, true), sregs.apic_base, 'apic_base at 272');
  assert.equal(v.getBigUint64(280 + 24, true), 1n << 63n, 'interrupt_bitmap at 280');
  assert.deepEqual(decodeSregs(bytes), sregs);
  assert.throws(() => decodeSregs(bytes.subarray(0, 311)), RangeError);
});

test('kvm_xcrs: nr_xcrs at 0, flags at 4, entries {xcr, value at +8} from 8', () => {
  const bytes = encodeXcrs([{ xcr: 0, value: 0x7n }, { xcr: 1, value: 0xabcn }]);
  const v = dv(bytes);
  assert.equal(bytes.byteLength, 392);
  assert.equal(v.getUint32(0, true), 2);
  assert.equal(v.getUint32(8 + 16, true), 1);
  assert.equal(v.getBigUint64(8 + 16 + 8, true), 0xabcn);
  assert.deepEqual(decodeXcrs(bytes), [{ xcr: 0, value: 0x7n }, { xcr: 1, value: 0xabcn }]);
  v.setUint32(0, 17, true);
  assert.throws(() => decodeXcrs(bytes), /exceeds 16/);
});

test('kvm_msrs: nmsrs then 16-byte entries {index, reserved, data at +8}; msr list', () => {
  const entries = [{ index: 0xc0000080, data: 0xd01n }, { index: 0x10, data: 0x123456789abcdefn }];
  const bytes = encodeMsrs(entries);
  const v = dv(bytes);
  assert.equal(bytes.byteLength, 8 + 2 * 16);
  assert.equal(v.getUint32(0, true), 2);
  assert.equal(v.getUint32(8, true), 0xc0000080);
  assert.equal(v.getBigUint64(16, true), 0xd01n);
  assert.equal(v.getUint32(24, true), 0x10);
  assert.deepEqual(decodeMsrs(bytes, 2), entries);
  const list = new Uint8Array(4 + 3 * 4);
  dv(list).setUint32(0, 3, true);
  [0x10, 0x174, 0xc0000080].forEach((x, i) => dv(list).setUint32(4 + i * 4, x, true));
  assert.deepEqual(decodeMsrList(list), [0x10, 0x174, 0xc0000080]);
  dv(list).setUint32(0, 4, true);
  assert.throws(() => decodeMsrList(list), RangeError);
});

test('kvm_vcpu_events: golden bytes and round trip', () => {
  const e: KvmVcpuEvents = {
    exception: { injected: 1, nr: 14, has_error_code: 1, pending: 0, error_code: 0x12345678 },
    interrupt: { injected: 1, nr: 0x20, soft: 0, shadow: 1 },
    nmi: { injected: 0, pending: 1, masked: 1 },
    sipi_vector: 0x9a, flags: 0xf,
    smi: { smm: 0, pending: 0, smm_inside_nmi: 0, latched_init: 1 },
    triple_fault: { pending: 1 },
    exception_has_payload: 1, exception_payload: 0xfeedn,
  };
  const bytes = encodeVcpuEvents(e);
  assert.deepEqual([...bytes.subarray(0, 29)], [
    1, 14, 1, 0, 0x78, 0x56, 0x34, 0x12, // exception
    1, 0x20, 0, 1, // interrupt
    0, 1, 1, 0, // nmi
    0x9a, 0, 0, 0, // sipi_vector at 16
    0xf, 0, 0, 0, // flags at 20
    0, 0, 0, 1, // smi at 24
    1, // triple_fault at 28
  ]);
  assert.equal(bytes[55], 1, 'exception_has_payload at 55');
  assert.equal(dv(bytes).getBigUint64(56, true), 0xfeedn, 'exception_payload at 56');
  assert.deepEqual(decodeVcpuEvents(bytes), e);
});

test('kvm_userspace_memory_region, kvm_dirty_log, kvm_clear_dirty_log, kvm_enable_cap: golden bytes', () => {
  const r = encodeMemoryRegion({ slot: 2, flags: 1, guestPhysAddr: 0x100000n, memorySize: 0x8000000n, userspaceAddr: 0x7f0000000000n });
  assert.deepEqual([...r], [
    2, 0, 0, 0, 1, 0, 0, 0, // slot, flags
    0, 0, 0x10, 0, 0, 0, 0, 0, // guest_phys_addr
    0, 0, 0, 8, 0, 0, 0, 0, // memory_size
    0, 0, 0, 0, 0, 0x7f, 0, 0, // userspace_addr
  ]);
  const d = encodeDirtyLog(3, 0x1122334455n);
  assert.deepEqual([...d], [3, 0, 0, 0, 0, 0, 0, 0, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0, 0]);
  const c = encodeClearDirtyLog(1, 64n, 128, 0xaan);
  assert.deepEqual([...c], [1, 0, 0, 0, 128, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0, 0, 0, 0, 0, 0, 0]);
  const cap = encodeEnableCap(168, [3n]);
  assert.equal(cap.byteLength, 104);
  assert.equal(dv(cap).getUint32(0, true), 168);
  assert.equal(dv(cap).getBigUint64(8, true), 3n);
});

test('kvm_debugregs: db[4] at 0, dr6 at 32, dr7 at 40, flags at 48 left zero', () => {
  const d = { db: [1n, 2n, 3n, 4n], dr6: 0xffff0ff0n, dr7: 0x400n };
  const bytes = encodeDebugRegs(d);
  const v = dv(bytes);
  assert.equal(bytes.byteLength, 128);
  assert.equal(v.getBigUint64(24, true), 4n);
  assert.equal(v.getBigUint64(32, true), 0xffff0ff0n);
  assert.equal(v.getBigUint64(40, true), 0x400n);
  assert.equal(v.getBigUint64(48, true), 0n);
  assert.deepEqual(decodeDebugRegs(bytes), d);
});

test('kvm_cpuid2: nent, padding, 40-byte entries; decode rejects nent beyond the buffer', () => {
  const entries = [{ function: 1, index: 0, flags: 0, eax: 0x806f0, ebx: 0x800, ecx: 0x80000000, edx: 0xffffffff }];
  const bytes = encodeCpuid2(entries);
  assert.equal(bytes.byteLength, 8 + 40);
  assert.equal(dv(bytes).getUint32(8 + 20, true), 0x80000000, 'ecx at 20');
  assert.equal(dv(bytes).getUint32(8 + 24, true), 0xffffffff, 'edx at 24');
  assert.deepEqual(decodeCpuid2(bytes), entries);
  const buf = cpuid2Buffer(4);
  assert.equal(dv(buf).getUint32(0, true), 4);
  dv(bytes).setUint32(0, 2, true);
  assert.throws(() => decodeCpuid2(bytes), RangeError);
});

test('KvmRunView reads exits and writes immediate_exit in place', () => {
  const page = new Uint8Array(4096);
  const v = dv(page);
  const run = new KvmRunView(page);
  run.immediateExit = 1;
  assert.equal(page[1], 1);
  v.setUint32(8, 2, true); // KVM_EXIT_IO
  page[32] = 1; page[33] = 1; v.setUint16(34, 0x3f8, true); v.setUint32(36, 1, true); v.setBigUint64(40, 4096n - 8n, true);
  page[4096 - 8] = 0x41;
  assert.equal(run.exitReason, 2);
  assert.deepEqual(run.io, { direction: 1, size: 1, port: 0x3f8, count: 1, dataOffset: 4088 });
  assert.equal(run.readIoData(4088, 1), 0x41);
  run.writeIoData(4088, 2, 0xbeef);
  assert.equal(v.getUint16(4088, true), 0xbeef);
  assert.throws(() => run.readIoData(4095, 4), RangeError);
  v.setBigUint64(32, 0xfee00000n, true); v.setUint32(48, 4, true); page[52] = 1;
  run.writeMmioData(4, 0xdeadbeef);
  assert.deepEqual(run.mmio, { physAddr: 0xfee00000n, len: 4, isWrite: true });
  assert.equal(run.readMmioData(4), 0xdeadbeef);
  v.setUint32(32, 1, true); v.setUint32(36, 2, true); v.setBigUint64(40, 7n, true); v.setBigUint64(48, 9n, true);
  assert.deepEqual(run.internal, { suberror: 1, data: [7n, 9n] });
});
