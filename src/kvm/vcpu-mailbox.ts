// The SharedArrayBuffer protocol between a vCPU's worker (which sits in KVM_RUN) and the
// main thread (which owns the IoBus and the run state). Both sides import these offsets.
//
// Words of the Int32Array:
//   CONTROL   main → worker: RUN, PAUSE or STOP
//   WAKE      main bumps it (and notifies) on every CONTROL change or kick; the worker
//             sleeps on it while paused or halted, so no wake-up is lost
//   STATE     worker → main: what the worker is doing (STATE_*), notified on change; the
//             main thread may take a HALTED vCPU as PAUSED with a compare-and-swap (a
//             halted worker sleeps outside KVM_RUN), and the worker leaves HALTED with one
//   TID       the worker's kernel thread id, for tgkill
//   DOORBELL  worker bumps it (and notifies) after queuing an entry or a request
//   HEAD/TAIL ring of posted entries (writes, exits): the worker writes at TAIL, the
//             main thread consumes at HEAD and notifies HEAD so a full ring drains
//   REQ_*     one synchronous request (port or MMIO read); the main thread answers only
//             after draining the ring, so reads never overtake earlier writes
//   THROTTLE  main → worker: auto-converge's throttle in percent (0: none)
//   THROTTLE_DUE  main sets it (then signals the worker) at the end of each timeslice; the
//             worker clears it and sleeps out the throttled share before running again
// Ring entries are ENTRY_WORDS words: kind, a (address low / exit reason), b (address
// high / exit detail), size, value low, value high.

export const CONTROL = 0;
export const WAKE = 1;
export const STATE = 2;
export const TID = 3;
export const DOORBELL = 4;
export const HEAD = 5;
export const TAIL = 6;
export const REQ_STATE = 7;
export const REQ_KIND = 8;
export const REQ_ADDR_LO = 9;
export const REQ_ADDR_HI = 10;
export const REQ_SIZE = 11;
export const REQ_VALUE_LO = 12;
export const REQ_VALUE_HI = 13;
export const THROTTLE = 14;
export const THROTTLE_DUE = 15;
export const RING_BASE = 16;
export const RING_ENTRIES = 256;
export const ENTRY_WORDS = 6;
export const MAILBOX_WORDS = RING_BASE + RING_ENTRIES * ENTRY_WORDS;

export const CONTROL_RUN = 0;
export const CONTROL_PAUSE = 1;
export const CONTROL_STOP = 2;

export const STATE_STARTING = 0;
export const STATE_RUNNING = 1;
export const STATE_PAUSED = 2;
export const STATE_HALTED = 3;
/** The guest stopped on its own (shutdown, failed entry…); an EXIT entry says why. */
export const STATE_EXITED = 4;
/** The worker left its loop (after STOP): the vCPU fd is free. */
export const STATE_STOPPED = 5;

export const REQ_NONE = 0;
export const REQ_PENDING = 1;
export const REQ_DONE = 2;

export const KIND_PIO_WRITE = 1;
export const KIND_MMIO_WRITE = 2;
export const KIND_PIO_READ = 3;
export const KIND_MMIO_READ = 4;
/** a = KVM exit reason (or EXIT_RUN_FAILED), b = detail (suberror, errno, event type), value = hardware reason. */
export const KIND_EXIT = 5;
/** a = the exit reason the worker did not expect. */
export const EXIT_RUN_FAILED = -1;

export interface RingEntry {
  kind: number;
  a: number;
  b: number;
  size: number;
  valueLo: number;
  valueHi: number;
}

export function createMailbox(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(MAILBOX_WORDS * 4));
}

/** Split a value of up to 64 bits (a JS number, exact below 2^53) into two 32-bit words. */
export function splitValue(value: number): [number, number] {
  const lo = value % 0x100000000;
  return [lo | 0, Math.floor(value / 0x100000000) | 0];
}

export function joinValue(lo: number, hi: number): number {
  return (hi >>> 0) * 0x100000000 + (lo >>> 0);
}
