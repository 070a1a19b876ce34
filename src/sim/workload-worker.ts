// The sim accelerator's "vCPU thread": runs the workload model, paced by a token bucket,
// until the main thread asks it to pause or exit (see control.ts for the handshake).

import { readlinkSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import {
  CMD_EXIT, CMD_PAUSE, CTRL_ACK, CTRL_TID, CTRL_PARK, CTRL_REQUEST, CTRL_THROTTLE, PARK_ACTIVE, PARK_CLAIMED, PARK_PARKED,
  requestCommand, requestSeq,
} from './control.js';
import { THROTTLE_TIMESLICE_MS, throttleSleepMs } from '../hypervisor/cpu-throttle.js';
import type { SimWorkerData, SimWorkerMessage } from './control.js';
import { workerInput } from '../sys/early-worker.js';
import { TokenBucket } from './pacer.js';
import { WorkloadModel, readCpuState, writeCpuState } from './workload.js';
import { viewAt } from '../sys/view.js';
import { planRamBlocks } from '../hypervisor/ram-layout.js';

/**
 * Pages written between two looks at the command word. Small enough that a batch stays
 * a few milliseconds even when every page is a first touch (~15 µs a fault on this
 * host), large enough that the look costs nothing next to the writes.
 */
const MAX_BATCH = 256;

// A worker started ahead of its VM (src/sys/early-worker.ts) has its modules loaded already and
// learns its memory and control words from the first message.
const data = await workerInput<SimWorkerData>();
const control = new Int32Array(data.control);
// Who this thread is, for a post-copy destination telling whose page faults it sees:
// /proc/thread-self links to "PID/task/TID" (no FFI needed for that).
Atomics.store(control, CTRL_TID, Number(readlinkSync('/proc/thread-self').split('/').pop()));
// The main thread owns the mapping and unmaps it only after this worker has exited.
// A view is at most 4 GiB: larger RAM is seen a block at a time.
const ram = planRamBlocks(data.ramSize).map((b) => ({ guestAddress: b.guestAddress, bytes: viewAt(data.ramAddress + BigInt(b.offset), b.size) }));
const dirty = new Uint32Array(data.dirty);
const port = data.events;

let pendingText = '';
const post = (message: SimWorkerMessage): void => port.postMessage(message);
const flushOutput = (): void => {
  if (pendingText !== '') {
    post({ type: 'output', text: pendingText });
    pendingText = '';
  }
};

post({ type: 'ready' });

let model: WorkloadModel | undefined;
let bucket: TokenBucket | undefined;
/** When the current throttle timeslice began (auto-converge: run 10 ms, then sleep). */
let sliceStart = 0;
let ackedSeq = -1;

/**
 * Sleep on the command word (woken by any command, or after `timeoutMs`) parked: the
 * model's state published and its output posted, so the main thread may take this vCPU
 * as paused without waiting for it to wake (control.ts, CTRL_PARK). When it did, the
 * model is dropped: the next run starts from the published state, or whatever the main
 * thread loaded meanwhile.
 */
function parkedWait(req: number, timeoutMs?: number): void {
  writeCpuState(data.cpu, model!.state);
  flushOutput();
  Atomics.store(control, CTRL_PARK, PARK_PARKED);
  Atomics.wait(control, CTRL_REQUEST, req, timeoutMs);
  if (Atomics.compareExchange(control, CTRL_PARK, PARK_PARKED, PARK_ACTIVE) === PARK_CLAIMED) {
    Atomics.store(control, CTRL_PARK, PARK_ACTIVE);
    model = undefined;
  }
}

for (;;) {
  const req = Atomics.load(control, CTRL_REQUEST);
  const cmd = requestCommand(req);
  if (cmd === CMD_EXIT) break;
  if (cmd === CMD_PAUSE || req === 0) {
    if (model) {
      writeCpuState(data.cpu, model.state);
      model = undefined;
    }
    const seq = requestSeq(req);
    if (req !== 0 && ackedSeq !== seq) {
      // Output first: the ack must not overtake a line the guest wrote before stopping.
      flushOutput();
      ackedSeq = seq;
      post({ type: 'paused', seq });
      // After the message, so a main thread that wakes on the word finds it queued.
      Atomics.store(control, CTRL_ACK, seq);
      Atomics.notify(control, CTRL_ACK);
    }
    Atomics.wait(control, CTRL_REQUEST, req);
    continue;
  }
  if (!model) {
    // The main thread may have loaded new state while we were paused.
    model = new WorkloadModel({ ram, dirty, output: (text) => { pendingText += text; } }, readCpuState(data.cpu));
    bucket = new TokenBucket(model.state.rate);
    sliceStart = performance.now();
    bucket.reset(sliceStart);
  }
  if (model.idle) {
    parkedWait(req);
    continue;
  }
  const throttle = Atomics.load(control, CTRL_THROTTLE);
  if (throttle > 0 && performance.now() - sliceStart >= THROTTLE_TIMESLICE_MS) {
    // Throttled (QEMU's cpu_throttle_thread): sleep out this timeslice's share. A command,
    // or a change of throttle, wakes us early. No catching up afterwards: the credit the
    // sleep would have earned is not given.
    parkedWait(req, throttleSleepMs(throttle));
    sliceStart = performance.now();
    bucket!.reset(sliceStart);
    continue;
  }
  const n = bucket!.take(performance.now(), MAX_BATCH);
  if (n === 0) {
    // Sleeping on the command word: a pause wakes us at once, or takes us as we are.
    parkedWait(req, Math.max(bucket!.waitMs(), 0.05));
    continue;
  }
  model.run(n);
  flushOutput();
}
flushOutput();
post({ type: 'exited' });
