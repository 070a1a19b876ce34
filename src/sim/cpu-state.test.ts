import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VmStateError } from '../errors.js';
import { SIM_CPU_MAGIC, SIM_CPU_STATE_DESCRIPTION, loadCpuState, saveCpuState } from './cpu-state.js';
import { WORKLOAD_SWEEP } from './workload.js';
import type { WorkloadCpuState } from './workload.js';

const state: WorkloadCpuState = {
  kind: WORKLOAD_SWEEP, from: 0x100000, to: 0x400000, cursor: 0x200000, pass: 17, rate: 250_000, steps: 4000, prng: [1, 2, 3, 4],
};

test('cpu section: the field list is what streams carry (change it with a version bump)', () => {
  assert.equal(SIM_CPU_STATE_DESCRIPTION.name, 'cpu');
  assert.equal(SIM_CPU_STATE_DESCRIPTION.version, 1);
  assert.deepEqual(SIM_CPU_STATE_DESCRIPTION.fields.map((f) => `${f.name}:${f.type}${f.count ? `[${f.count}]` : ''}`), [
    'x-ferry-sim-magic:uint32', 'kind:uint32', 'from:uint64', 'to:uint64', 'cursor:uint64', 'pass:uint64',
    'rate:uint64', 'steps:uint64', 'prng:uint32[4]',
  ]);
});

test('cpu section: save then load gives the same state', () => {
  const saved = saveCpuState(state);
  assert.equal(saved['x-ferry-sim-magic'], SIM_CPU_MAGIC);
  assert.equal(saved['pass'], 17n);
  assert.deepEqual(loadCpuState(saved, 0x400000), state);
});

test('cpu section: refuses a section from another accelerator, an unknown kind, a range beyond RAM', () => {
  const saved = saveCpuState(state);
  assert.throws(() => loadCpuState({ ...saved, 'x-ferry-sim-magic': 0 }, 0x400000), (e: unknown) => e instanceof VmStateError && /not saved by the sim accelerator/.test(e.message));
  assert.throws(() => loadCpuState({ ...saved, kind: 9 }, 0x400000), /unknown workload kind 9/);
  assert.throws(() => loadCpuState(saved, 0x200000), /does not fit 2097152 bytes/);
  assert.throws(() => loadCpuState({ ...saved, prng: [1, 2, 3] }, 0x400000), /prng/);
  assert.throws(() => loadCpuState({ ...saved, rate: 0n }, 0x400000), /rate is 0/);
});
