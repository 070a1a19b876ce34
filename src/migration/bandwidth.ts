// The bandwidth the switchover decision counts on, from the bytes the destination has
// taken (QEMU's migration_update_counters): re-measured once a window closes — 100 ms
// (BUFFER_DELAY_MS), the first one sooner once it can tell (convergence.ts windowClosed) —
// and read cautiously. One window can read high (the channel's queue filling, a burst
// while the other core was free), and acting on it overruns the downtime limit, while
// erring low only costs another pass. SwitchoverCounters derives from it what the
// switchover decision and query-migrate use.

import { BUFFER_DELAY_MS, FIRST_WINDOW_MIN_MS, expectedDowntimeMs, measureBandwidth, thresholdBytes, windowClosed } from './convergence.js';
import { keepShape } from '../hot-shapes.js';

/** Windows whose median the estimate stays under. */
const RECENT_WINDOWS = 5;

/** A window just closed: what it measured, and the bandwidth to count on from now. */
export interface ClosedWindow {
  readonly bytes: number;
  readonly mbps: number;
  readonly pagesPerSecond: number;
  /** Bytes per ms to count on: at most this window, the median of the last few, any cap in force, and the average since the passes began. */
  readonly cautiousBytesPerMs: number;
}

export class BandwidthEstimate {
  #windowStart = 0;
  #windowBytes = 0;
  #windowPages = 0;
  readonly #recent: number[] = [];
  /** What a called-off switchover really got per ms: estimates stay below it until #capUntil. */
  #capBytesPerMs: number | undefined;
  #capUntil = 0;
  #activeStart = 0;
  #activeBytes = 0;

  constructor() {
    keepShape(this);
  }

  /** The passes begin at `now`, with `delivered` bytes taken by the destination so far. */
  startPasses(now: number, delivered: number, pagesSent: number): void {
    this.#activeStart = now;
    this.#activeBytes = delivered;
    this.startWindow(now, delivered, pagesSent);
  }

  /** A new window from `now` (the passes begin, or go on after a called-off switchover). */
  startWindow(now: number, delivered: number, pagesSent: number): void {
    this.#windowStart = now;
    this.#windowBytes = delivered;
    this.#windowPages = pagesSent;
  }

  /** Until `until`, count on no more than `bytesPerMs` (the lower, if a cap is in force already). */
  cap(bytesPerMs: number, now: number, until: number): void {
    const active = this.#capBytesPerMs !== undefined && now < this.#capUntil;
    this.#capBytesPerMs = active ? Math.min(this.#capBytesPerMs!, bytesPerMs) : bytesPerMs;
    this.#capUntil = until;
  }

  /**
   * The window's figures if it has closed by `now` (and a new one begun), else undefined.
   * `delivered` is asked only once the window is old enough: it costs the channel a look
   * at its queue.
   */
  close(now: number, delivered: () => number, pagesSent: number): ClosedWindow | undefined {
    const elapsed = now - this.#windowStart;
    const measured = this.#recent.length > 0;
    if (elapsed < (measured ? BUFFER_DELAY_MS : FIRST_WINDOW_MIN_MS)) return undefined;
    const taken = delivered();
    const bytes = taken - this.#windowBytes;
    if (!windowClosed(elapsed, bytes, measured)) return undefined;
    const figures = measureBandwidth({ bytes, pages: pagesSent - this.#windowPages, elapsedMs: elapsed });
    this.#recent.push(figures.bytesPerMs);
    if (this.#recent.length > RECENT_WINDOWS) this.#recent.shift();
    const sorted = [...this.#recent].sort((a, b) => a - b);
    let cautious = Math.min(figures.bytesPerMs, sorted[sorted.length >> 1]!);
    // Not above what a called-off switchover really got, for a while after it.
    if (this.#capBytesPerMs !== undefined && now < this.#capUntil) cautious = Math.min(cautious, this.#capBytesPerMs);
    // And never above the average since the passes began: windows measure what the
    // stream writer accepted, which runs ahead of what the other side takes while the
    // channel's and the kernel's buffers fill (seen: windows at 610 MB/s, 350 MB/s real).
    const activeMs = now - this.#activeStart;
    if (activeMs >= 2 * BUFFER_DELAY_MS) cautious = Math.min(cautious, (taken - this.#activeBytes) / activeMs);
    this.startWindow(now, taken, pagesSent);
    return { bytes, mbps: figures.mbps, pagesPerSecond: figures.pagesPerSecond, cautiousBytesPerMs: cautious };
  }
}

/** A tenth of the measured bandwidth held back for what the switchover costs besides pages: stopping the vCPUs, the device state, the last flush. */
const SWITCHOVER_MARGIN = 0.9;

/**
 * What the source derives from the estimate (QEMU's migration_update_counters): the
 * bandwidth counted on, the threshold the passes are held to (bandwidth × downtime-limit),
 * the expected downtime, and the rates query-migrate reports.
 */
export class SwitchoverCounters {
  readonly estimate = new BandwidthEstimate();
  /** Bytes per ms the switchover counts on. */
  bytesPerMs = 0;
  thresholdBytes = 0;
  expectedDowntimeMs = 0;
  mbps = 0;
  pagesPerSecond = 0;

  /** If a window has closed by `now`, re-derive everything from it. */
  update(now: number, delivered: () => number, pagesSent: number, remainingBytes: number, downtimeLimitMs: number): void {
    const window = this.estimate.close(now, delivered, pagesSent);
    if (window === undefined) return;
    this.bytesPerMs = window.cautiousBytesPerMs * SWITCHOVER_MARGIN;
    this.mbps = window.mbps;
    this.pagesPerSecond = Math.round(window.pagesPerSecond);
    this.thresholdBytes = thresholdBytes(this.bytesPerMs, downtimeLimitMs);
    if (window.bytes > 10000) this.expectedDowntimeMs = expectedDowntimeMs(remainingBytes, this.bytesPerMs);
  }

  /** The migration is over: its rates over all of it, as QEMU's final mbps. */
  final(bytes: number, pages: number, elapsedMs: number): void {
    const whole = measureBandwidth({ bytes, pages, elapsedMs });
    this.mbps = whole.mbps;
    this.pagesPerSecond = Math.round(whole.pagesPerSecond);
  }

  /**
   * A switchover was called off after getting `rate` bytes per ms while the guest was
   * stopped: count on no more than that (the estimate until `capUntil`, the threshold now),
   * and measure afresh from `now`.
   */
  calledOff(rate: number, now: number, capUntil: number, downtimeLimitMs: number, delivered: number, pagesSent: number): void {
    this.estimate.cap(rate, now, capUntil);
    this.bytesPerMs = Math.min(this.bytesPerMs, rate * SWITCHOVER_MARGIN);
    this.thresholdBytes = thresholdBytes(this.bytesPerMs, downtimeLimitMs);
    this.estimate.startWindow(now, delivered, pagesSent);
  }
}
