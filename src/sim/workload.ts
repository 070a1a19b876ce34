// The sim accelerator's guest: a model of the built-in guests that writes guest RAM
// with the same semantics (per-page u32 counters, the pass number in the parameter
// block, "pass N" lines) and marks each written page in a shared dirty bitmap.
// Runs in the worker; it is plain code over typed arrays so tests can drive it directly.

import {
  PAGE_COUNTER_OFFSET, PARAMS_ADDR, PARAM_PASS_OFFSET, PARAM_REPORT_EVERY_OFFSET, SWEEP_DEFAULT_FROM,
} from '../guests/layout.js';
import { GuestPhysical, type RamPiece } from '../guests/guest-physical.js';

const PAGE_SHIFT = 12;
const PAGE_SIZE = 1 << PAGE_SHIFT;

/** Workload kinds as stored in the "cpu" section (never renumber: they are in streams). */
export const WORKLOAD_SWEEP = 1;
export const WORKLOAD_HOT = 2;
export const WORKLOAD_RANDOM = 3;
export const WORKLOAD_IDLE = 4;
export type WorkloadKind = typeof WORKLOAD_SWEEP | typeof WORKLOAD_HOT | typeof WORKLOAD_RANDOM | typeof WORKLOAD_IDLE;

export function isWorkloadKind(n: number): n is WorkloadKind {
  return n === WORKLOAD_SWEEP || n === WORKLOAD_HOT || n === WORKLOAD_RANDOM || n === WORKLOAD_IDLE;
}

/** What a real vCPU would hold in registers: everything needed to continue exactly here. */
export interface WorkloadCpuState {
  kind: WorkloadKind;
  /** Swept range [from, to) in bytes (sweep, hot); the random range is [1 MiB, memory size). */
  from: number;
  to: number;
  /** Next page address a sweep writes. */
  cursor: number;
  /** Completed passes (sweep, hot); mirrors the u64 in the parameter block. */
  pass: number;
  /** Pages per second (>= SIM_UNLIMITED_RATE: unpaced). */
  rate: number;
  /** Pages written since boot, for statistics. */
  steps: number;
  /** xoshiro128** state (random). */
  prng: [number, number, number, number];
}

/**
 * The CPU state lives in shared memory so the main thread can save and load it while
 * the worker is paused, without a message round trip. Float64 holds every integer
 * here exactly (all are below 2^53).
 */
const CPU_F64_KIND = 0;
const CPU_F64_FROM = 1;
const CPU_F64_TO = 2;
const CPU_F64_CURSOR = 3;
const CPU_F64_PASS = 4;
const CPU_F64_RATE = 5;
const CPU_F64_STEPS = 6;
const CPU_F64_COUNT = 8;
const CPU_PRNG_OFFSET = CPU_F64_COUNT * 8;
export const CPU_STATE_BYTES = CPU_PRNG_OFFSET + 16;

export function writeCpuState(sab: SharedArrayBuffer, s: WorkloadCpuState): void {
  const f = new Float64Array(sab, 0, CPU_F64_COUNT);
  f[CPU_F64_KIND] = s.kind;
  f[CPU_F64_FROM] = s.from;
  f[CPU_F64_TO] = s.to;
  f[CPU_F64_CURSOR] = s.cursor;
  f[CPU_F64_PASS] = s.pass;
  f[CPU_F64_RATE] = s.rate;
  f[CPU_F64_STEPS] = s.steps;
  new Uint32Array(sab, CPU_PRNG_OFFSET, 4).set(s.prng);
}

export function readCpuState(sab: SharedArrayBuffer): WorkloadCpuState {
  const f = new Float64Array(sab, 0, CPU_F64_COUNT);
  const p = new Uint32Array(sab, CPU_PRNG_OFFSET, 4);
  const kind = f[CPU_F64_KIND]!;
  return {
    kind: isWorkloadKind(kind) ? kind : WORKLOAD_IDLE,
    from: f[CPU_F64_FROM]!,
    to: f[CPU_F64_TO]!,
    cursor: f[CPU_F64_CURSOR]!,
    pass: f[CPU_F64_PASS]!,
    rate: f[CPU_F64_RATE]!,
    steps: f[CPU_F64_STEPS]!,
    prng: [p[0]!, p[1]!, p[2]!, p[3]!],
  };
}

/** Seed xoshiro128** from one number with splitmix32, as its authors recommend (no all-zero state). */
export function seedPrng(seed: number): [number, number, number, number] {
  let x = seed >>> 0;
  const next = (): number => {
    x = (x + 0x9e3779b9) >>> 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  return [next(), next(), next(), next()];
}

/** The guest's view of its memory plus the hooks the model needs. */
export interface WorkloadEnv {
  /** Guest RAM from guest address 0: one view, or the blocks of a guest larger than 4 GiB (back to back). */
  readonly ram: Uint8Array | readonly RamPiece[];
  readonly dirty: Uint32Array;
  /** Receives "pass N\n" progress text, in order. */
  readonly output: (text: string) => void;
}

export class WorkloadModel {
  readonly state: WorkloadCpuState;
  private readonly ram: GuestPhysical;
  private readonly dirty: Uint32Array;
  private readonly output: (text: string) => void;
  private readonly randomFirstPage: number;
  private readonly randomPages: number;

  constructor(env: WorkloadEnv, state: WorkloadCpuState) {
    this.state = { ...state, prng: [...state.prng] };
    this.ram = new GuestPhysical(env.ram instanceof Uint8Array ? [{ guestAddress: 0, bytes: env.ram }] : env.ram);
    this.dirty = env.dirty;
    this.output = env.output;
    this.randomFirstPage = SWEEP_DEFAULT_FROM >>> PAGE_SHIFT;
    this.randomPages = Math.max(0, Math.floor(this.ram.size / PAGE_SIZE) - this.randomFirstPage);
  }

  /** True when running writes nothing (the worker then just waits for a command). */
  get idle(): boolean {
    return this.state.kind === WORKLOAD_IDLE || (this.state.kind === WORKLOAD_RANDOM && this.randomPages === 0);
  }

  /** Write `pages` pages (fewer only when idle). Between two calls the RAM is consistent. */
  run(pages: number): void {
    switch (this.state.kind) {
      case WORKLOAD_SWEEP:
      case WORKLOAD_HOT:
        this.sweep(pages);
        break;
      case WORKLOAD_RANDOM:
        this.random(pages);
        break;
      case WORKLOAD_IDLE:
        break;
    }
  }

  private touch(addr: number): void {
    const at = addr + PAGE_COUNTER_OFFSET;
    this.ram.setUint32(at, (this.ram.getUint32(at) + 1) >>> 0);
    // Marked after the write: a sync that clears the bit between the two sees the
    // write on its next round, never loses it. (Not `>>>`: above 4 GiB it would wrap.)
    const page = addr / PAGE_SIZE;
    Atomics.or(this.dirty, page >>> 5, 1 << (page & 31));
  }

  private sweep(pages: number): void {
    const s = this.state;
    if (s.to <= s.from) return;
    for (let i = 0; i < pages; i++) {
      if (s.cursor < s.from || s.cursor >= s.to) s.cursor = s.from;
      this.touch(s.cursor);
      s.cursor += PAGE_SIZE;
      s.steps++;
      if (s.cursor >= s.to) {
        s.cursor = s.from;
        this.completePass();
      }
    }
  }

  private completePass(): void {
    const s = this.state;
    s.pass++;
    this.ram.setBigUint64(PARAMS_ADDR + PARAM_PASS_OFFSET, BigInt(s.pass));
    const page = PARAMS_ADDR >>> PAGE_SHIFT;
    Atomics.or(this.dirty, page >>> 5, 1 << (page & 31));
    const every = this.ram.getUint32(PARAMS_ADDR + PARAM_REPORT_EVERY_OFFSET);
    if (every !== 0 && s.pass % every === 0) this.output(`pass ${s.pass}\n`);
  }

  private random(pages: number): void {
    const s = this.state;
    const n = this.randomPages;
    if (n === 0) return;
    const p = s.prng;
    for (let i = 0; i < pages; i++) {
      // xoshiro128** (Blackman & Vigna), 32-bit output
      const result = Math.imul(rotl(Math.imul(p[1], 5), 7), 9) >>> 0;
      const t = p[1] << 9;
      p[2] ^= p[0];
      p[3] ^= p[1];
      p[1] ^= p[2];
      p[0] ^= p[3];
      p[2] ^= t;
      p[3] = rotl(p[3], 11);
      const page = this.randomFirstPage + Math.floor((result / 0x1_0000_0000) * n);
      this.touch(page * PAGE_SIZE);
      s.steps++;
    }
    for (let k = 0; k < 4; k++) p[k] = p[k]! >>> 0;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
