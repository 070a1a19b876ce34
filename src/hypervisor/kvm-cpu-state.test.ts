// The "cpu" section description and its state object, round-tripped through a small
// hand-written encoder that follows the description the way QEMU's vmstate does
// (big-endian scalars, structs inline, buffers raw, counted arrays after their count),
// so this test does not depend on the migration engine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError, VmStateError } from '../errors.js';
import { REG_NAMES, SEGMENT_NAMES } from '../kvm/structs.js';
import type { KvmSregs } from '../kvm/structs.js';
import type { KvmCpuState } from '../kvm/vcpu.js';
import type { VmStateDescription, VmStateField, VmStateValue } from '../migration/vmstate-types.js';
import { vmstateLoad, vmstateSave } from '../migration/vmstate.js';
import { prng, readerOf, writtenBytes } from '../stream/testing.js';
import { CPU_STATE_DESCRIPTION, cpuStateFromValue, cpuStateToValue } from './kvm-cpu-state.js';

const SIZES: Record<string, number> = { uint8: 1, uint16: 2, uint32: 4, uint64: 8 };

function encode(desc: VmStateDescription, value: VmStateValue, out: number[]): void {
  for (const f of desc.fields) {
    const v = value[f.name];
    const n = f.count ?? (f.countField ? (value[f.countField] as number) : undefined);
    if (n !== undefined) (v as unknown[]).forEach((e) => encodeOne(f, e, value, out));
    else encodeOne(f, v, value, out);
  }
}

function encodeOne(f: VmStateField, v: unknown, parent: VmStateValue, out: number[]): void {
  if (f.type === 'struct') return encode(f.struct!, v as VmStateValue, out);
  if (f.type === 'buffer') {
    const bytes = v as Uint8Array;
    assert.equal(bytes.byteLength, f.size ?? parent[f.lengthField!]);
    out.push(...bytes);
    return;
  }
  const size = SIZES[f.type]!;
  let x = typeof v === 'bigint' ? v : BigInt(v as number);
  const bytes: number[] = [];
  for (let i = 0; i < size; i++) { bytes.unshift(Number(x & 0xffn)); x >>= 8n; }
  out.push(...bytes);
}

function decode(desc: VmStateDescription, bytes: Uint8Array, at: { pos: number }): VmStateValue {
  const value: VmStateValue = {};
  for (const f of desc.fields) {
    const n = f.count ?? (f.countField ? (value[f.countField] as number) : undefined);
    if (n !== undefined) {
      if (f.maxLength !== undefined) assert.ok(n <= f.maxLength);
      value[f.name] = Array.from({ length: n }, () => decodeOne(f, bytes, at, value));
    } else {
      value[f.name] = decodeOne(f, bytes, at, value);
    }
  }
  return value;
}

function decodeOne(f: VmStateField, bytes: Uint8Array, at: { pos: number }, parent: VmStateValue): unknown {
  if (f.type === 'struct') return decode(f.struct!, bytes, at);
  if (f.type === 'buffer') {
    const len = f.size ?? (parent[f.lengthField!] as number);
    const out = bytes.slice(at.pos, at.pos + len);
    at.pos += len;
    return out;
  }
  const size = SIZES[f.type]!;
  let x = 0n;
  for (let i = 0; i < size; i++) x = (x << 8n) | BigInt(bytes[at.pos++]!);
  return f.type === 'uint64' ? x : Number(x);
}

function sampleState(): KvmCpuState {
  const regs = Object.fromEntries(REG_NAMES.map((n, i) => [n, 0x1000000000n * BigInt(i) + BigInt(i)])) as KvmCpuState['regs'];
  const sregs: Record<string, unknown> = {};
  SEGMENT_NAMES.forEach((n, i) => {
    sregs[n] = { base: BigInt(i) << 32n, limit: 0xffffffff, selector: i * 8, type: 3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0 };
  });
  Object.assign(sregs, {
    gdt: { base: 0x1000n, limit: 31 }, idt: { base: 0n, limit: 0 },
    cr0: 0x80010033n, cr2: 0n, cr3: 0x2000n, cr4: 0x620n, cr8: 0n, efer: 0x500n, apic_base: 0xfee00900n,
    interrupt_bitmap: [0n, 1n << 32n, 0n, 0n],
  });
  const xsave = new Uint8Array(4096).map((_, i) => i & 0xff);
  return {
    regs, sregs: sregs as KvmSregs, xsave,
    xcrs: [{ xcr: 0, value: 7n }],
    msrs: [{ index: 0x10, data: 0x123456789n }, { index: 0xc0000080, data: 0x500n }, { index: 0x174, data: 0n }],
    events: {
      exception: { injected: 0, nr: 0, has_error_code: 0, pending: 0, error_code: 0 },
      interrupt: { injected: 0, nr: 0, soft: 0, shadow: 1 },
      nmi: { injected: 0, pending: 0, masked: 1 },
      sipi_vector: 0, flags: 0x4,
      smi: { smm: 0, pending: 0, smm_inside_nmi: 0, latched_init: 0 },
      triple_fault: { pending: 0 }, exception_has_payload: 0, exception_payload: 0n,
    },
    mpState: 0,
    debugRegs: { db: [0n, 0x401000n, 0n, 0n], dr6: 0xffff0ff0n, dr7: 0x400n },
  };
}

test('cpu description uses QEMU field types: uint64 registers, struct segments, xsave buffer, counted MSRs', () => {
  const byName = new Map(CPU_STATE_DESCRIPTION.fields.map((f) => [f.name, f]));
  assert.equal(CPU_STATE_DESCRIPTION.name, 'cpu');
  for (const r of REG_NAMES) assert.equal(byName.get(r)?.type, 'uint64', r);
  for (const s of SEGMENT_NAMES) assert.equal(byName.get(s)?.type, 'struct', s);
  assert.equal(byName.get('xsave')?.type, 'buffer');
  assert.equal(byName.get('xsave')?.lengthField, 'xsave_len');
  assert.equal(byName.get('msrs')?.countField, 'msr_count');
  assert.deepEqual(byName.get('msrs')?.struct?.fields.map((f) => [f.name, f.type]), [['index', 'uint32'], ['data', 'uint64']]);
});

test('a cpu state survives state → value → bytes → value → state', () => {
  const state = sampleState();
  const bytes: number[] = [];
  encode(CPU_STATE_DESCRIPTION, cpuStateToValue(state), bytes);
  // The exact size pins the layout: 18 regs × 8; segment = 8 + 4 + 2 + 9 × 1 = 23 bytes (no
  // padding on the wire); dtable = 10; controls 7 × 8; bitmap 32; xsave 4 + 4096;
  // xcrs 4 + 12; msrs 4 + 3 × 12; events 17 + 12 + 8 = 37; mp_state 4; dr 4 × 8, dr6, dr7.
  assert.equal(bytes.length, 144 + 8 * 23 + 2 * 10 + 56 + 32 + 4100 + 16 + 40 + 37 + 4 + 48);
  // rax is first, big-endian: regs.rax = 0.
  assert.deepEqual(bytes.slice(8, 16), [0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x01], 'rbx = 0x1000000001');
  const decoded = decode(CPU_STATE_DESCRIPTION, Uint8Array.from(bytes), { pos: 0 });
  assert.deepEqual(cpuStateFromValue(decoded), state);
});

test('loading refuses wrong types, missing fields and oversized counts, naming the field', () => {
  const good = cpuStateToValue(sampleState());
  assert.throws(() => cpuStateFromValue({ ...good, rip: 5 }), (e: unknown) => e instanceof VmStateError && /cpu\.rip/.test(e.message));
  const { cr3: _cr3, ...noCr3 } = good;
  assert.throws(() => cpuStateFromValue(noCr3), /"cpu\.cr3" is missing/);
  assert.throws(() => cpuStateFromValue({ ...good, cs: { ...(good['cs'] as object), selector: 0x10000 } }), /cpu\.cs\.selector/);
  assert.throws(() => cpuStateFromValue({ ...good, xsave_len: 10 }), /xsave/);
  assert.throws(() => cpuStateFromValue({ ...good, msr_count: 5000, msrs: [] }), /5000 MSRs/);
  assert.throws(() => cpuStateFromValue({ ...good, msr_count: 2 }), /msrs" should be an array of 2/);
});

test('mutated cpu sections decode into a state or fail with a FerryError, never a JavaScript error', async (t) => {
  // The vCPU section is the largest description a destination decodes from a stream;
  // what the decoder and cpuStateFromValue accept here is what KVM would be handed.
  const bytes = await writtenBytes((w) => {
    vmstateSave(w, CPU_STATE_DESCRIPTION, cpuStateToValue(sampleState()), { idstr: 'cpu', instanceId: 0 });
  });
  const rand = prng(0xc0ffee);
  let refused = 0;
  for (let i = 0; i < 2000; i++) {
    const out = bytes.slice();
    // Mostly outside the 4 KiB xsave area, where the counts, sizes and structure are.
    const at = rand() < 0.8 ? (rand() < 0.5 ? Math.floor(rand() * 470) : 4570 + Math.floor(rand() * (out.length - 4570))) : Math.floor(rand() * out.length);
    const cut = rand() < 0.15;
    if (!cut) out[at] = rand() < 0.5 ? out[at]! ^ (1 << Math.floor(rand() * 8)) : [0, 0x7f, 0x80, 0xff][Math.floor(rand() * 4)]!;
    const input = cut ? out.subarray(0, at) : out;
    try {
      cpuStateFromValue(await vmstateLoad(readerOf(input, 509), CPU_STATE_DESCRIPTION, 1, 'cpu'));
    } catch (err) {
      assert.ok(err instanceof FerryError, `case ${i} (${cut ? `cut at ${at}` : `byte ${at} = 0x${out[at]!.toString(16)}`}): ${String(err)}`);
      refused++;
    }
  }
  t.diagnostic(`${refused} of 2000 mutated sections refused, the rest decoded`);
  assert.ok(refused > 200, `only ${refused} of 2000 mutated sections were refused`);
});
