// The handshake between the sim accelerator (main thread) and its workload worker,
// through one shared Int32Array: the main thread posts numbered commands, the worker
// acknowledges each pause by number (and notifies the word), so pause() knows when
// writing has stopped without waiting for its event loop — or, if the worker sleeps
// between batches, takes it as paused at once (CTRL_PARK). What the worker has to say
// (its output, the pause acknowledgements) goes as messages on a port of its own, which
// the main thread can read synchronously: the output a guest wrote before it stopped is
// taken, in order, before pause() returns.

import type { MessagePort } from 'node:worker_threads';

export const CMD_RUN = 1;
export const CMD_PAUSE = 2;
export const CMD_EXIT = 3;
export type SimCommand = typeof CMD_RUN | typeof CMD_PAUSE | typeof CMD_EXIT;

/** Int32 index: (sequence << 2) | command, written by the main thread. */
export const CTRL_REQUEST = 0;
/** Int32 index: the sequence number of the last pause the worker has carried out (notified on change). */
export const CTRL_ACK = 1;
/** Int32 index: auto-converge's throttle in percent (0: none), written by the main thread. */
export const CTRL_THROTTLE = 2;
/**
 * Int32 index: PARK_* — whether the worker, between two batches, sleeps "parked": with its
 * CPU state published and its output posted, so the main thread may take it as paused as
 * it stands (compare-and-swap PARKED → CLAIMED) instead of waking it and waiting for its
 * acknowledgement, which on a busy host can take milliseconds of the downtime. A worker
 * that wakes takes itself back (PARKED → ACTIVE); finding CLAIMED, it knows it was paused
 * and must not write its model's state again (the main thread may have loaded another).
 */
export const CTRL_PARK = 3;
export const PARK_ACTIVE = 0;
export const PARK_PARKED = 1;
export const PARK_CLAIMED = 2;
/** Int32 index: the worker's kernel thread id, written once as it starts (0 until then). */
export const CTRL_TID = 4;
export const CTRL_WORDS = 5;
export const CTRL_BYTES = CTRL_WORDS * 4;

/** Sequence numbers wrap well inside an int32 once shifted. */
export const SEQ_MASK = 0x1fff_ffff;

export function encodeRequest(seq: number, cmd: SimCommand): number {
  return ((seq & SEQ_MASK) << 2) | cmd;
}

export function requestCommand(req: number): number {
  return req & 3;
}

export function requestSeq(req: number): number {
  return (req >>> 2) & SEQ_MASK;
}

/** What the worker gets at start. */
export interface SimWorkerData {
  /**
   * Guest RAM: an mmap'd region of this process (src/sys/host-memory.ts), seen by address,
   * one view per block (planRamBlocks: the sim's guest addresses are the region's offsets).
   */
  readonly ramAddress: bigint;
  readonly ramSize: number;
  readonly dirty: SharedArrayBuffer;
  readonly control: SharedArrayBuffer;
  readonly cpu: SharedArrayBuffer;
  /** Where the worker posts its SimWorkerMessages (transferred to it). */
  readonly events: MessagePort;
}

/** Messages from the worker, in the order it sent them. */
export type SimWorkerMessage =
  | { readonly type: 'ready' }
  | { readonly type: 'output'; readonly text: string }
  | { readonly type: 'paused'; readonly seq: number }
  | { readonly type: 'exited' };
