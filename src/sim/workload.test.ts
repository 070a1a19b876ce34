import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkSweepCounters, readGuestParams, writeGuestParams } from '../guests/params.js';
import { PARAMS_ADDR } from '../guests/layout.js';
import {
  CPU_STATE_BYTES, WORKLOAD_HOT, WORKLOAD_RANDOM, WORKLOAD_SWEEP, WorkloadModel, readCpuState, seedPrng, writeCpuState,
} from './workload.js';
import type { WorkloadCpuState } from './workload.js';

const MiB = 1024 * 1024;

function setup(memorySize: number, state: Partial<WorkloadCpuState>) {
  const ram = new Uint8Array(new SharedArrayBuffer(memorySize));
  const dirty = new Uint32Array(new SharedArrayBuffer(Math.ceil(memorySize / 4096 / 32) * 4));
  let text = '';
  const full: WorkloadCpuState = {
    kind: WORKLOAD_SWEEP, from: MiB, to: 2 * MiB, cursor: MiB, pass: 0, rate: 1000, steps: 0, prng: seedPrng(1), ...state,
  };
  const model = new WorkloadModel({ ram, dirty, output: (t) => { text += t; } }, full);
  return { ram, dirty, model, text: () => text };
}

function dirtyPages(dirty: Uint32Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < dirty.length * 32; i++) if ((dirty[i >>> 5]! >>> (i & 31)) & 1) out.push(i);
  return out;
}

test('sweep: counters, pass number in the parameter block, and "pass N" lines', () => {
  const { ram, model, text } = setup(4 * MiB, {});
  writeGuestParams(ram, { kind: 'sweep', from: MiB, to: 2 * MiB, rate: undefined }, 4 * MiB);
  const pagesPerPass = 256;
  model.run(pagesPerPass * 2 + 10);
  assert.equal(model.state.pass, 2);
  assert.equal(model.state.cursor, MiB + 10 * 4096);
  assert.equal(readGuestParams(ram)?.pass, 2);
  assert.equal(text(), 'pass 1\npass 2\n');
  const check = checkSweepCounters(ram);
  assert.ok(check.ok, check.problem);
  assert.equal(check.ahead, 10);
});

test('sweep: the pass is reported only every N passes when the parameter block says so', () => {
  const { ram, model, text } = setup(4 * MiB, {});
  writeGuestParams(ram, { kind: 'sweep', from: MiB, to: 2 * MiB, rate: undefined }, 4 * MiB, 3);
  model.run(256 * 7);
  assert.equal(text(), 'pass 3\npass 6\n');
});

test('sweep: every written page and the parameter page are marked dirty, nothing else', () => {
  const { ram, dirty, model } = setup(4 * MiB, {});
  writeGuestParams(ram, { kind: 'sweep', from: MiB, to: 2 * MiB, rate: undefined }, 4 * MiB);
  model.run(256 + 3);
  const expected = [PARAMS_ADDR / 4096];
  for (let p = 256; p < 512; p++) expected.push(p);
  assert.deepEqual(dirtyPages(dirty), expected);
});

test('hot: stays inside its working set', () => {
  const { dirty, model } = setup(8 * MiB, { kind: WORKLOAD_HOT, from: MiB, to: 3 * MiB, cursor: MiB });
  model.run(10_000);
  const pages = dirtyPages(dirty).filter((p) => p !== PARAMS_ADDR / 4096);
  assert.equal(pages[0], 256);
  assert.equal(pages.at(-1), 767);
});

test('random: writes pages above 1 MiB only, and the same state gives the same writes', () => {
  const a = setup(8 * MiB, { kind: WORKLOAD_RANDOM, prng: seedPrng(42) });
  const b = setup(8 * MiB, { kind: WORKLOAD_RANDOM, prng: seedPrng(42) });
  a.model.run(500);
  b.model.run(200);
  // Continue b from a saved copy of its state, as a destination would.
  const cpu = new SharedArrayBuffer(CPU_STATE_BYTES);
  writeCpuState(cpu, b.model.state);
  const b2 = new WorkloadModel({ ram: b.ram, dirty: b.dirty, output: () => {} }, readCpuState(cpu));
  b2.run(300);
  assert.deepEqual(Buffer.from(a.ram), Buffer.from(b.ram));
  const pages = dirtyPages(a.dirty);
  assert.ok(pages.length > 400, `${pages.length} distinct pages`);
  assert.ok(pages.every((p) => p >= 256 && p < 2048));
  let total = 0;
  const dv = new DataView(a.ram.buffer);
  for (const p of pages) total += dv.getUint32(p * 4096, true);
  assert.equal(total, 500);
  assert.equal(a.model.state.steps, 500);
});

test('random: the page choice is roughly uniform', () => {
  const { ram, model } = setup(2 * MiB, { kind: WORKLOAD_RANDOM, prng: seedPrng(7) });
  model.run(256 * 200);
  const dv = new DataView(ram.buffer);
  for (let p = 256; p < 512; p++) {
    const n = dv.getUint32(p * 4096, true);
    assert.ok(n > 120 && n < 280, `page ${p} written ${n} times, expected about 200`);
  }
});

test('cpu state survives the shared-memory round trip', () => {
  const cpu = new SharedArrayBuffer(CPU_STATE_BYTES);
  const s: WorkloadCpuState = { kind: WORKLOAD_RANDOM, from: MiB, to: 2 ** 40, cursor: 2 ** 40 - 4096, pass: 2 ** 52, rate: 123_456, steps: 99, prng: [1, 0xffffffff, 3, 0x80000000] };
  writeCpuState(cpu, s);
  assert.deepEqual(readCpuState(cpu), s);
});
