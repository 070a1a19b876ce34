// The sim workload's "CPU" as a state description: the section "cpu" a destination
// loads (after RAM) to continue the workload from exactly where the source paused it.

import { VmStateError } from '../errors.js';
import type { VmStateDescription, VmStateValue } from '../migration/vmstate-types.js';
import { SIM_UNLIMITED_RATE } from './pacer.js';
import { isWorkloadKind } from './workload.js';
import type { WorkloadCpuState } from './workload.js';

/**
 * "SIMC": first field of the section, so a stream from a kvm source (whose "cpu"
 * section holds x86 registers) is refused by name instead of being misread.
 */
export const SIM_CPU_MAGIC = 0x434d4953;

export const SIM_CPU_STATE_DESCRIPTION: VmStateDescription = {
  name: 'cpu',
  version: 1,
  minimumVersion: 1,
  fields: [
    { name: 'x-ferry-sim-magic', type: 'uint32' },
    { name: 'kind', type: 'uint32' },
    { name: 'from', type: 'uint64' },
    { name: 'to', type: 'uint64' },
    { name: 'cursor', type: 'uint64' },
    { name: 'pass', type: 'uint64' },
    { name: 'rate', type: 'uint64' },
    { name: 'steps', type: 'uint64' },
    { name: 'prng', type: 'uint32', count: 4 },
  ],
};

export function saveCpuState(s: WorkloadCpuState): VmStateValue {
  return {
    'x-ferry-sim-magic': SIM_CPU_MAGIC,
    kind: s.kind,
    from: BigInt(s.from),
    to: BigInt(s.to),
    cursor: BigInt(s.cursor),
    pass: BigInt(s.pass),
    rate: BigInt(Math.min(Math.round(s.rate), SIM_UNLIMITED_RATE)),
    steps: BigInt(s.steps),
    prng: [...s.prng],
  };
}

function u64(state: VmStateValue, name: string): number {
  const v = state[name];
  if (typeof v !== 'bigint' && typeof v !== 'number') throw new VmStateError(`Cannot load section "cpu" (sim): field "${name}" is ${typeof v}, expected an integer`);
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new VmStateError(`Cannot load section "cpu" (sim): field "${name}" = ${String(v)} is out of range`);
  return n;
}

/** Check a loaded value against the guest RAM size and turn it into workload state. */
export function loadCpuState(state: VmStateValue, memorySize: number): WorkloadCpuState {
  const magic = state['x-ferry-sim-magic'];
  if (magic !== SIM_CPU_MAGIC) {
    throw new VmStateError(`Cannot load section "cpu": it was not saved by the sim accelerator (magic ${String(magic)}, expected 0x${SIM_CPU_MAGIC.toString(16)})`);
  }
  const kind = u64(state, 'kind');
  if (!isWorkloadKind(kind)) throw new VmStateError(`Cannot load section "cpu" (sim): unknown workload kind ${kind}`);
  const from = u64(state, 'from');
  const to = u64(state, 'to');
  const cursor = u64(state, 'cursor');
  if (to > memorySize || from > to || cursor > memorySize || from % 4096 !== 0 || cursor % 4096 !== 0) {
    throw new VmStateError(`Cannot load section "cpu" (sim): range 0x${from.toString(16)}..0x${to.toString(16)} cursor 0x${cursor.toString(16)} does not fit ${memorySize} bytes of RAM`);
  }
  const rate = u64(state, 'rate');
  if (rate === 0) throw new VmStateError('Cannot load section "cpu" (sim): rate is 0 pages per second');
  const prng = state['prng'];
  if (!Array.isArray(prng) || prng.length !== 4 || !prng.every((w) => typeof w === 'number' && Number.isInteger(w) && w >= 0 && w <= 0xffffffff)) {
    throw new VmStateError('Cannot load section "cpu" (sim): field "prng" must be 4 uint32 words');
  }
  return {
    kind, from, to, cursor, rate,
    pass: u64(state, 'pass'),
    steps: u64(state, 'steps'),
    prng: [prng[0] as number, prng[1] as number, prng[2] as number, prng[3] as number],
  };
}
