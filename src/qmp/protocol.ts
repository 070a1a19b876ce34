// The QMP wire messages shared by server and client: greeting, replies, events and
// their timestamps, as QEMU 7.2 writes them (one JSON text per line, CRLF-terminated).

import type { QmpErrorClass } from '../errors.js';
import type { QmpVersion } from './ferry-version.js';

/** QEMU ends every QMP output line with CRLF; clients accept either. */
export const QMP_LINE_END = '\r\n';
/** Default cap on one incoming QMP message. */
export const QMP_MAX_MESSAGE_BYTES = 1024 * 1024;

export interface QmpGreeting {
  readonly QMP: { readonly version: QmpVersion; readonly capabilities: readonly string[] };
}

export interface QmpTimestamp {
  readonly seconds: number;
  readonly microseconds: number;
}

export interface QmpEvent {
  readonly event: string;
  readonly data?: Record<string, unknown>;
  readonly timestamp: QmpTimestamp;
}

export interface QmpErrorBody {
  readonly class: QmpErrorClass | string;
  readonly desc: string;
}

export type QmpReply =
  | { readonly return: unknown; readonly id?: unknown }
  | { readonly error: QmpErrorBody; readonly id?: unknown };

/**
 * Wall-clock time with microseconds, as QEMU stamps events. The monotonic clock gives the
 * microseconds; if the wall clock has been stepped away from it, the wall clock wins.
 */
export function qmpTimestamp(nowMs: number = preciseWallClockMs()): QmpTimestamp {
  const micros = Math.floor(nowMs * 1000);
  return { seconds: Math.floor(micros / 1_000_000), microseconds: micros % 1_000_000 };
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function preciseWallClockMs(): number {
  const precise = performance.timeOrigin + performance.now();
  const wall = Date.now();
  return Math.abs(precise - wall) < 2 ? precise : wall;
}
