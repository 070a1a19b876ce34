// max-bandwidth enforced as QEMU does: a budget of max-bandwidth / 10 bytes per 100 ms
// window; once it is spent the sender waits for the next window. 0 means no limit
// (QEMU 7.2's qemu_file_rate_limit does not enforce a rate_limit_max of 0).

import { BUFFER_DELAY_MS } from './convergence.js';
import { keepShape } from '../hot-shapes.js';

const WINDOWS_PER_SECOND = 1000 / BUFFER_DELAY_MS;

export class RateLimiter {
  readonly #now: () => number;
  #bytesPerSecond: number;
  #windowStart: number;
  #used = 0;

  constructor(now: () => number, bytesPerSecond: number) {
    keepShape(this);
    this.#now = now;
    this.#bytesPerSecond = bytesPerSecond;
    this.#windowStart = now();
  }

  /** Change the limit at once (migrate-set-parameters during a migration). */
  setLimit(bytesPerSecond: number): void {
    this.#bytesPerSecond = bytesPerSecond;
  }

  get limit(): number {
    return this.#bytesPerSecond;
  }

  /** Bytes one window may carry, or Infinity without a limit. */
  get windowBudget(): number {
    return this.#bytesPerSecond > 0 ? this.#bytesPerSecond / WINDOWS_PER_SECOND : Infinity;
  }

  account(bytes: number): void {
    this.#roll();
    this.#used += bytes;
  }

  /** True when this window's budget is spent: the sender should wait `waitMs()`. */
  exceeded(): boolean {
    this.#roll();
    return this.#used >= this.windowBudget;
  }

  /** Milliseconds until the current window ends (0 if it already has). */
  waitMs(): number {
    return Math.max(0, this.#windowStart + BUFFER_DELAY_MS - this.#now());
  }

  #roll(): void {
    const now = this.#now();
    if (now - this.#windowStart >= BUFFER_DELAY_MS) {
      // Unused budget does not carry over: a burst after an idle spell stays one window's worth.
      this.#windowStart = now;
      this.#used = 0;
    }
  }
}
