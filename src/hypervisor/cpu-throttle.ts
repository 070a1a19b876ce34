// How an accelerator throttles its vCPUs for auto-converge, as QEMU's cpu-throttle.c: a
// vCPU runs one 10 ms timeslice, then sleeps percent / (100 − percent) of a timeslice, so
// it runs (100 − percent) % of the time. Shared by every accelerator that can throttle.

/** QEMU's CPU_THROTTLE_TIMESLICE_NS: the running part of one throttle cycle. */
export const THROTTLE_TIMESLICE_MS = 10;
/** cpu_throttle_set's range; 0 means not throttled. */
export const THROTTLE_MAX_PERCENT = 99;

/** How long a throttled vCPU sleeps after each timeslice (cpu_throttle_thread). */
export function throttleSleepMs(percent: number): number {
  if (!(percent > 0)) return 0;
  const pct = Math.min(percent, THROTTLE_MAX_PERCENT) / 100;
  return (pct / (1 - pct)) * THROTTLE_TIMESLICE_MS;
}

/** One throttle cycle, the timeslice and the sleep together (cpu_throttle_timer_tick's period). */
export function throttlePeriodMs(percent: number): number {
  return THROTTLE_TIMESLICE_MS + throttleSleepMs(percent);
}

/** A percentage an accelerator can carry out, or a RangeError naming `what`. */
export function checkThrottlePercent(percent: number, what: string): void {
  if (!Number.isInteger(percent) || percent < 0 || percent > THROTTLE_MAX_PERCENT) {
    throw new RangeError(`Cannot throttle ${what} to ${percent} %: expected an integer from 0 to ${THROTTLE_MAX_PERCENT}`);
  }
}
