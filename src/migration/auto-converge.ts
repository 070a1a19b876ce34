// The `auto-converge` capability (QEMU ram.c migration_trigger_throttle and
// mig_throttle_guest_down): about once a second, at a dirty-log sync, the bytes the guest
// dirtied in that period are set against the bytes sent in it. When dirtying outran
// `throttle-trigger-threshold` % of sending in two such periods, the vCPUs are throttled —
// first to `cpu-throttle-initial` %, then `cpu-throttle-increment` more each time (or, with
// `cpu-throttle-tailslow`, only as much as the last period says is needed), never past
// `max-cpu-throttle`. The accelerators carry the percentage out as QEMU's cpu-throttle.c
// does (src/hypervisor/cpu-throttle.ts).

import { THROTTLE_MAX_PERCENT } from '../hypervisor/cpu-throttle.js';
import type { MigrationParameters } from './parameters.js';

/** cpu_throttle_set clamps to this range. */
const THROTTLE_MIN = 1;
const THROTTLE_MAX = THROTTLE_MAX_PERCENT;

export type ThrottleParameters = Pick<
  MigrationParameters,
  'throttle-trigger-threshold' | 'cpu-throttle-initial' | 'cpu-throttle-increment' | 'cpu-throttle-tailslow' | 'max-cpu-throttle'
>;

/** What one period (≥ 1 s, between two dirty-log syncs) saw. */
export interface DirtyPeriod {
  /** Bytes put on the stream in the period (QEMU: ram_counters.transferred − bytes_xfer_prev). */
  readonly transferredBytes: number;
  /** Bytes of pages the period's syncs newly found dirty (QEMU: num_dirty_pages_period × page size). */
  readonly dirtiedBytes: number;
}

/**
 * The next throttle percentage once a step is due (mig_throttle_guest_down). `current` is
 * 0 when throttling has not started.
 */
export function nextThrottlePercentage(current: number, period: DirtyPeriod, params: ThrottleParameters): number {
  if (current === 0) return clamp(params['cpu-throttle-initial']);
  let increment = params['cpu-throttle-increment'];
  if (params['cpu-throttle-tailslow']) {
    // The share of CPU that would bring dirtying down to the threshold, in whole percent
    // as QEMU's integer arithmetic has it.
    const threshold = Math.floor((period.transferredBytes * params['throttle-trigger-threshold']) / 100);
    const cpuNow = 100 - current;
    const cpuIdeal = Math.floor(cpuNow * (threshold / period.dirtiedBytes));
    increment = Math.min(cpuNow - cpuIdeal, increment);
  }
  return clamp(Math.min(current + increment, params['max-cpu-throttle']));
}

function clamp(percent: number): number {
  return Math.max(THROTTLE_MIN, Math.min(THROTTLE_MAX, percent));
}

/** One outgoing migration's throttle: fed each period, it says when the percentage changes. */
export class AutoConverge {
  #percentage = 0;
  /** Periods whose dirtying outran the threshold since the last step (QEMU's dirty_rate_high_cnt: a calm period does not reset it). */
  #highPeriods = 0;

  /** The throttle in force, 0 when the vCPUs run freely (query-migrate's cpu-throttle-percentage). */
  get percentage(): number {
    return this.#percentage;
  }

  /**
   * Account one period; returns the new percentage when it changed, else undefined.
   * Parameters are read each time, so migrate-set-parameters applies to a running migration.
   */
  period(period: DirtyPeriod, params: ThrottleParameters): number | undefined {
    const threshold = Math.floor((period.transferredBytes * params['throttle-trigger-threshold']) / 100);
    if (!(period.dirtiedBytes > threshold)) return undefined;
    if (++this.#highPeriods < 2) return undefined;
    this.#highPeriods = 0;
    const next = nextThrottlePercentage(this.#percentage, period, params);
    if (next === this.#percentage) return undefined;
    this.#percentage = next;
    return next;
  }

  /** The migration ended (QEMU's cpu_throttle_stop in migration_iteration_finish). */
  stop(): void {
    this.#percentage = 0;
    this.#highPeriods = 0;
  }
}
