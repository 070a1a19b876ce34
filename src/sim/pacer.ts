// The token bucket that paces the sim workload to a pages-per-second rate. Credit
// accrues continuously and is spent in small batches, so the average rate holds from
// a few pages per second up to millions without a timer per page.

/** At or above this many pages per second the workload is not paced at all. */
export const SIM_UNLIMITED_RATE = 1_000_000_000;

/** How much credit may pile up (in seconds of rate): absorbs scheduling hiccups without long bursts. */
const BURST_SECONDS = 0.05;

export class TokenBucket {
  readonly rate: number;
  private tokens = 0;
  private last = 0;

  /** `rate` in pages per second, > 0. */
  constructor(rate: number) {
    this.rate = rate;
  }

  get unlimited(): boolean {
    return this.rate >= SIM_UNLIMITED_RATE;
  }

  /** Start over with no credit (after a pause the workload must not catch up in a burst). */
  reset(nowMs: number): void {
    this.tokens = 0;
    this.last = nowMs;
  }

  /** Whole pages that may be written now, at most `max`; the caller writes exactly that many. */
  take(nowMs: number, max: number): number {
    if (this.unlimited) return max;
    const elapsed = nowMs - this.last;
    this.last = nowMs;
    if (elapsed > 0) {
      // Never less than one page of burst, so a rate below 1/BURST_SECONDS still advances.
      this.tokens = Math.min(this.tokens + (elapsed * this.rate) / 1000, Math.max(1, this.rate * BURST_SECONDS));
    }
    const n = Math.min(Math.floor(this.tokens), max);
    this.tokens -= n;
    return n;
  }

  /** Milliseconds until at least one page of credit is available (0 when there is some). */
  waitMs(): number {
    if (this.unlimited || this.tokens >= 1) return 0;
    return ((1 - this.tokens) * 1000) / this.rate;
  }
}
