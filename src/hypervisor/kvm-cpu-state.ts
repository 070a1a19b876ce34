// The "cpu" section of a KVM guest: the state description (in QEMU's field vocabulary)
// of everything KvmVcpu.getState() captures, and the conversions between that plain
// state object and the kvm structs, checking every value on the way in.

import { VmStateError } from '../errors.js';
import { CONTROL_NAMES, REG_NAMES, SEGMENT_NAMES } from '../kvm/structs.js';
import type { KvmSegment, KvmSregs, KvmVcpuEvents } from '../kvm/structs.js';
import type { KvmCpuState } from '../kvm/vcpu.js';
import type { VmStateDescription, VmStateField, VmStateValue } from '../migration/vmstate-types.js';

export const CPU_SECTION_IDSTR = 'cpu';
/** Generous caps for hostile input: the largest XSAVE areas are ~11 KiB, MSR lists a few hundred. */
export const MAX_XSAVE_BYTES = 64 * 1024;
export const MAX_MSRS = 4096;
export const MAX_XCRS = 16;

const SEGMENT: VmStateDescription = {
  name: 'segment',
  version: 1,
  minimumVersion: 1,
  fields: [
    { name: 'base', type: 'uint64' },
    { name: 'limit', type: 'uint32' },
    { name: 'selector', type: 'uint16' },
    { name: 'type', type: 'uint8' },
    { name: 'present', type: 'uint8' },
    { name: 'dpl', type: 'uint8' },
    { name: 'db', type: 'uint8' },
    { name: 's', type: 'uint8' },
    { name: 'l', type: 'uint8' },
    { name: 'g', type: 'uint8' },
    { name: 'avl', type: 'uint8' },
    { name: 'unusable', type: 'uint8' },
  ],
};

const DTABLE: VmStateDescription = {
  name: 'dtable',
  version: 1,
  minimumVersion: 1,
  fields: [{ name: 'base', type: 'uint64' }, { name: 'limit', type: 'uint16' }],
};

const XCR: VmStateDescription = {
  name: 'xcr',
  version: 1,
  minimumVersion: 1,
  fields: [{ name: 'xcr', type: 'uint32' }, { name: 'value', type: 'uint64' }],
};

const MSR: VmStateDescription = {
  name: 'msr',
  version: 1,
  minimumVersion: 1,
  fields: [{ name: 'index', type: 'uint32' }, { name: 'data', type: 'uint64' }],
};

/** kvm_vcpu_events flattened, with QEMU's names where QEMU has them (exception_*, nmi_*, …). */
const EVENT_FIELDS = [
  'exception_injected', 'exception_nr', 'exception_has_error_code', 'exception_pending',
  'interrupt_injected', 'interrupt_nr', 'interrupt_soft', 'interrupt_shadow',
  'nmi_injected', 'nmi_pending', 'nmi_masked',
  'smi_smm', 'smi_pending', 'smi_smm_inside_nmi', 'smi_latched_init',
  'triple_fault_pending', 'exception_has_payload',
] as const;

const VCPU_EVENTS: VmStateDescription = {
  name: 'vcpu_events',
  version: 1,
  minimumVersion: 1,
  fields: [
    ...EVENT_FIELDS.map((name): VmStateField => ({ name, type: 'uint8' })),
    { name: 'exception_error_code', type: 'uint32' },
    { name: 'sipi_vector', type: 'uint32' },
    { name: 'flags', type: 'uint32' },
    { name: 'exception_payload', type: 'uint64' },
  ],
};

export const CPU_STATE_DESCRIPTION: VmStateDescription = {
  name: CPU_SECTION_IDSTR,
  version: 1,
  minimumVersion: 1,
  fields: [
    ...REG_NAMES.map((name): VmStateField => ({ name, type: 'uint64' })),
    ...SEGMENT_NAMES.map((name): VmStateField => ({ name, type: 'struct', struct: SEGMENT })),
    { name: 'gdt', type: 'struct', struct: DTABLE },
    { name: 'idt', type: 'struct', struct: DTABLE },
    ...CONTROL_NAMES.map((name): VmStateField => ({ name, type: 'uint64' })),
    { name: 'interrupt_bitmap', type: 'uint64', count: 4 },
    { name: 'xsave_len', type: 'uint32' },
    { name: 'xsave', type: 'buffer', lengthField: 'xsave_len', maxLength: MAX_XSAVE_BYTES },
    { name: 'xcr_count', type: 'uint32' },
    { name: 'xcrs', type: 'struct', struct: XCR, countField: 'xcr_count', maxLength: MAX_XCRS },
    { name: 'msr_count', type: 'uint32' },
    { name: 'msrs', type: 'struct', struct: MSR, countField: 'msr_count', maxLength: MAX_MSRS },
    { name: 'events', type: 'struct', struct: VCPU_EVENTS },
    { name: 'mp_state', type: 'uint32' },
    { name: 'dr', type: 'uint64', count: 4 },
    { name: 'dr6', type: 'uint64' },
    { name: 'dr7', type: 'uint64' },
  ],
};

function eventsToValue(e: KvmVcpuEvents): VmStateValue {
  return {
    exception_injected: e.exception.injected, exception_nr: e.exception.nr,
    exception_has_error_code: e.exception.has_error_code, exception_pending: e.exception.pending,
    interrupt_injected: e.interrupt.injected, interrupt_nr: e.interrupt.nr, interrupt_soft: e.interrupt.soft, interrupt_shadow: e.interrupt.shadow,
    nmi_injected: e.nmi.injected, nmi_pending: e.nmi.pending, nmi_masked: e.nmi.masked,
    smi_smm: e.smi.smm, smi_pending: e.smi.pending, smi_smm_inside_nmi: e.smi.smm_inside_nmi, smi_latched_init: e.smi.latched_init,
    triple_fault_pending: e.triple_fault.pending, exception_has_payload: e.exception_has_payload,
    exception_error_code: e.exception.error_code, sipi_vector: e.sipi_vector, flags: e.flags, exception_payload: e.exception_payload,
  };
}

/** The plain state object for CPU_STATE_DESCRIPTION. */
export function cpuStateToValue(s: KvmCpuState): VmStateValue {
  const value: VmStateValue = {};
  for (const name of REG_NAMES) value[name] = s.regs[name];
  for (const name of SEGMENT_NAMES) value[name] = { ...s.sregs[name] };
  value['gdt'] = { ...s.sregs.gdt };
  value['idt'] = { ...s.sregs.idt };
  for (const name of CONTROL_NAMES) value[name] = s.sregs[name];
  value['interrupt_bitmap'] = [...s.sregs.interrupt_bitmap];
  value['xsave_len'] = s.xsave.byteLength;
  value['xsave'] = s.xsave;
  value['xcr_count'] = s.xcrs.length;
  value['xcrs'] = s.xcrs.map((x) => ({ xcr: x.xcr, value: x.value }));
  value['msr_count'] = s.msrs.length;
  value['msrs'] = s.msrs.map((m) => ({ index: m.index, data: m.data }));
  value['events'] = eventsToValue(s.events);
  value['mp_state'] = s.mpState;
  value['dr'] = [...s.debugRegs.db];
  value['dr6'] = s.debugRegs.dr6;
  value['dr7'] = s.debugRegs.dr7;
  return value;
}

// ---- loading: every value checked, errors name the field --------------------------

function field(obj: unknown, name: string, path: string): unknown {
  if (typeof obj !== 'object' || obj === null) throw new VmStateError(`Cannot load CPU state: "${path}" is not an object`);
  if (!(name in obj)) throw new VmStateError(`Cannot load CPU state: "${path}.${name}" is missing`);
  return (obj as Record<string, unknown>)[name];
}

function u64(obj: unknown, name: string, path: string): bigint {
  const v = field(obj, name, path);
  if (typeof v !== 'bigint' || v < 0n || v > 0xffffffffffffffffn) throw new VmStateError(`Cannot load CPU state: "${path}.${name}" is ${String(v)}, expected a uint64 bigint`);
  return v;
}

function uint(obj: unknown, name: string, path: string, bits: 8 | 16 | 32): number {
  const v = field(obj, name, path);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= 2 ** bits) {
    throw new VmStateError(`Cannot load CPU state: "${path}.${name}" is ${String(v)}, expected a uint${bits}`);
  }
  return v;
}

function list(obj: unknown, name: string, path: string, length: number): unknown[] {
  const v = field(obj, name, path);
  if (!Array.isArray(v) || v.length !== length) throw new VmStateError(`Cannot load CPU state: "${path}.${name}" should be an array of ${length}`);
  return v;
}

function segmentFrom(v: unknown, path: string): KvmSegment {
  return {
    base: u64(v, 'base', path), limit: uint(v, 'limit', path, 32), selector: uint(v, 'selector', path, 16),
    type: uint(v, 'type', path, 8), present: uint(v, 'present', path, 8), dpl: uint(v, 'dpl', path, 8),
    db: uint(v, 'db', path, 8), s: uint(v, 's', path, 8), l: uint(v, 'l', path, 8), g: uint(v, 'g', path, 8),
    avl: uint(v, 'avl', path, 8), unusable: uint(v, 'unusable', path, 8),
  };
}

/** The kvm structs for a loaded "cpu" state object; throws VmStateError naming the bad field. */
export function cpuStateFromValue(v: VmStateValue): KvmCpuState {
  const p = CPU_SECTION_IDSTR;
  const regs = Object.fromEntries(REG_NAMES.map((n) => [n, u64(v, n, p)])) as KvmCpuState['regs'];
  const sregs: Record<string, unknown> = {};
  for (const n of SEGMENT_NAMES) sregs[n] = segmentFrom(field(v, n, p), `${p}.${n}`);
  for (const n of ['gdt', 'idt'] as const) {
    const t = field(v, n, p);
    sregs[n] = { base: u64(t, 'base', `${p}.${n}`), limit: uint(t, 'limit', `${p}.${n}`, 16) };
  }
  for (const n of CONTROL_NAMES) sregs[n] = u64(v, n, p);
  sregs['interrupt_bitmap'] = list(v, 'interrupt_bitmap', p, 4).map((w, i) => u64({ w }, 'w', `${p}.interrupt_bitmap[${i}]`));

  const xsaveLen = uint(v, 'xsave_len', p, 32);
  const xsave = field(v, 'xsave', p);
  if (!(xsave instanceof Uint8Array) || xsave.byteLength !== xsaveLen || xsaveLen > MAX_XSAVE_BYTES) {
    throw new VmStateError(`Cannot load CPU state: "${p}.xsave" should be ${xsaveLen} bytes (at most ${MAX_XSAVE_BYTES})`);
  }
  const xcrCount = uint(v, 'xcr_count', p, 32);
  if (xcrCount > MAX_XCRS) throw new VmStateError(`Cannot load CPU state: ${xcrCount} XCRs, at most ${MAX_XCRS}`);
  const xcrs = list(v, 'xcrs', p, xcrCount).map((x, i) => ({ xcr: uint(x, 'xcr', `${p}.xcrs[${i}]`, 32), value: u64(x, 'value', `${p}.xcrs[${i}]`) }));
  const msrCount = uint(v, 'msr_count', p, 32);
  if (msrCount > MAX_MSRS) throw new VmStateError(`Cannot load CPU state: ${msrCount} MSRs, at most ${MAX_MSRS}`);
  const msrs = list(v, 'msrs', p, msrCount).map((m, i) => ({ index: uint(m, 'index', `${p}.msrs[${i}]`, 32), data: u64(m, 'data', `${p}.msrs[${i}]`) }));

  const e = field(v, 'events', p);
  const ep = `${p}.events`;
  const u8 = (n: string): number => uint(e, n, ep, 8);
  const events: KvmVcpuEvents = {
    exception: { injected: u8('exception_injected'), nr: u8('exception_nr'), has_error_code: u8('exception_has_error_code'), pending: u8('exception_pending'), error_code: uint(e, 'exception_error_code', ep, 32) },
    interrupt: { injected: u8('interrupt_injected'), nr: u8('interrupt_nr'), soft: u8('interrupt_soft'), shadow: u8('interrupt_shadow') },
    nmi: { injected: u8('nmi_injected'), pending: u8('nmi_pending'), masked: u8('nmi_masked') },
    sipi_vector: uint(e, 'sipi_vector', ep, 32),
    flags: uint(e, 'flags', ep, 32),
    smi: { smm: u8('smi_smm'), pending: u8('smi_pending'), smm_inside_nmi: u8('smi_smm_inside_nmi'), latched_init: u8('smi_latched_init') },
    triple_fault: { pending: u8('triple_fault_pending') },
    exception_has_payload: u8('exception_has_payload'),
    exception_payload: u64(e, 'exception_payload', ep),
  };
  const debugRegs = {
    db: list(v, 'dr', p, 4).map((w, i) => u64({ w }, 'w', `${p}.dr[${i}]`)),
    dr6: u64(v, 'dr6', p),
    dr7: u64(v, 'dr7', p),
  };
  return { regs, sregs: sregs as KvmSregs, xsave: new Uint8Array(xsave), xcrs, msrs, events, mpState: uint(v, 'mp_state', p, 32), debugRegs };
}
