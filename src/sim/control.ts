// The handshake between the sim accelerator (main thread) and its workload worker,
// through one shared Int32Array: the main thread posts numbered commands, the worker
// acknowledges each pause by number, so pause() knows when writing has stopped.

export const CMD_RUN = 1;
export const CMD_PAUSE = 2;
export const CMD_EXIT = 3;
export type SimCommand = typeof CMD_RUN | typeof CMD_PAUSE | typeof CMD_EXIT;

/** Int32 index: (sequence << 2) | command, written by the main thread. */
export const CTRL_REQUEST = 0;
/** Int32 index: the sequence number of the last command the worker has carried out. */
export const CTRL_ACK = 1;
/** Int32 index: auto-converge's throttle in percent (0: none), written by the main thread. */
export const CTRL_THROTTLE = 2;
export const CTRL_WORDS = 4;
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
  /** Guest RAM: an mmap'd region of this process (src/sys/host-memory.ts), seen by address. */
  readonly ramAddress: bigint;
  readonly ramSize: number;
  readonly dirty: SharedArrayBuffer;
  readonly control: SharedArrayBuffer;
  readonly cpu: SharedArrayBuffer;
}

/** Messages from the worker, in the order it sent them. */
export type SimWorkerMessage =
  | { readonly type: 'ready' }
  | { readonly type: 'output'; readonly text: string }
  | { readonly type: 'paused'; readonly seq: number }
  | { readonly type: 'exited' };
