// The pre-copy "has it converged?" decision, as a pure function of measured figures
// (QEMU's migration_iteration_run / migration_update_counters), so it can be tested as
// a table and the loop stays a loop.

/** QEMU's BUFFER_DELAY: bandwidth is measured, and the rate limit enforced, per 100 ms window. */
export const BUFFER_DELAY_MS = 100;

/**
 * The first window may close early, once it has carried this much and lasted this long: on
 * a fast channel the first pass of a small guest is over well inside 100 ms (256 MiB in
 * ~60 ms here), and with no bandwidth figure yet the loop could only go on resending what
 * the guest dirtied — at the guest's dirty rate, not the channel's — until the window
 * closed. So many bytes dwarf what the peer's socket buffer can hold (counted as taken
 * before the destination reads it: 8 MiB on a local socket), so the early figure is not
 * inflated by the buffers filling; a channel slower than ~1.3 GB/s never gets there
 * before 100 ms, and keeps QEMU's windows.
 */
export const FIRST_WINDOW_MIN_BYTES = 128 * 1024 * 1024;
export const FIRST_WINDOW_MIN_MS = 20;

/**
 * Whether a bandwidth window that began `elapsedMs` ago, during which the destination took
 * `bytes`, is over: every BUFFER_DELAY_MS (QEMU), and the first one (`measuredBefore`
 * false) as soon as it holds enough to measure by (FIRST_WINDOW_MIN_*).
 */
export function windowClosed(elapsedMs: number, bytes: number, measuredBefore: boolean): boolean {
  if (elapsedMs >= BUFFER_DELAY_MS) return true;
  return !measuredBefore && elapsedMs >= FIRST_WINDOW_MIN_MS && bytes >= FIRST_WINDOW_MIN_BYTES;
}

/**
 * Bytes that can still be sent within the downtime budget: measured bandwidth
 * (bytes per millisecond) × downtime-limit (milliseconds). Before the first
 * measurement there is no bandwidth figure and the threshold is 0, so the loop iterates.
 */
export function thresholdBytes(bandwidthBytesPerMs: number, downtimeLimitMs: number): number {
  if (!(bandwidthBytesPerMs > 0) || !Number.isFinite(bandwidthBytesPerMs)) return 0;
  return bandwidthBytesPerMs * downtimeLimitMs;
}

export type IterationDecision = 'iterate' | 'sync-and-check';

/**
 * With the cheap estimate of what is pending: keep iterating while it is at least the
 * threshold; otherwise the dirty log is synced for the exact figure (QEMU: pending
 * estimate, then pending exact). Nothing pending at all always goes to the check.
 */
export function decideIteration(pendingEstimate: number, threshold: number): IterationDecision {
  return pendingEstimate > 0 && pendingEstimate >= threshold ? 'iterate' : 'sync-and-check';
}

/**
 * After the exact sync: stop the guest and complete if what is left fits the budget.
 * `fixedCostMs` is downtime spent whatever the page count — above all the final dirty
 * sync, which runs again once the guest has stopped (one KVM ioctl, but a full compare
 * against a shadow copy for an accelerator without a dirty log). QEMU leaves it out of
 * the decision; counting it keeps the downtime within the limit where a sync is costly.
 */
export function canComplete(pendingExact: number, threshold: number, fixedCostMs = 0, bandwidthBytesPerMs = 0): boolean {
  if (fixedCostMs > 0 && bandwidthBytesPerMs > 0) threshold = Math.max(0, threshold - fixedCostMs * bandwidthBytesPerMs);
  return pendingExact === 0 || pendingExact < threshold;
}

export interface BandwidthSample {
  /** Bytes put on the stream during the window. */
  readonly bytes: number;
  /** Pages sent during the window. */
  readonly pages: number;
  /** The window's length in milliseconds. */
  readonly elapsedMs: number;
}

export interface BandwidthFigures {
  /** Bytes per millisecond (the unit the threshold multiplies by milliseconds). */
  readonly bytesPerMs: number;
  /** Megabits per second, as query-migrate's ram.mbps. */
  readonly mbps: number;
  readonly pagesPerSecond: number;
}

/** The figures QEMU's migration_update_counters derives from one window. */
export function measureBandwidth(sample: BandwidthSample): BandwidthFigures {
  if (!(sample.elapsedMs > 0)) return { bytesPerMs: 0, mbps: 0, pagesPerSecond: 0 };
  const bytesPerMs = sample.bytes / sample.elapsedMs;
  return {
    bytesPerMs,
    mbps: (sample.bytes * 8) / (sample.elapsedMs / 1000) / 1e6,
    pagesPerSecond: sample.pages / (sample.elapsedMs / 1000),
  };
}

/** Milliseconds the guest would stay stopped if it stopped now (query-migrate expected-downtime). */
export function expectedDowntimeMs(remainingBytes: number, bandwidthBytesPerMs: number): number {
  if (!(bandwidthBytesPerMs > 0)) return 0;
  return Math.round(remainingBytes / bandwidthBytesPerMs);
}
