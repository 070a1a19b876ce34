// The sim accelerator's "vCPU thread": runs the workload model, paced by a token bucket,
// until the main thread asks it to pause or exit (see control.ts for the handshake).

import { parentPort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import {
  CMD_EXIT, CMD_PAUSE, CTRL_ACK, CTRL_REQUEST, CTRL_THROTTLE, requestCommand, requestSeq,
} from './control.js';
import { THROTTLE_TIMESLICE_MS, throttleSleepMs } from '../hypervisor/cpu-throttle.js';
import type { SimWorkerData, SimWorkerMessage } from './control.js';
import { workerInput } from '../sys/early-worker.js';
import { TokenBucket } from './pacer.js';
import { WorkloadModel, readCpuState, writeCpuState } from './workload.js';
import { viewAt } from '../sys/view.js';

/**
 * Pages written between two looks at the command word. Small enough that a batch stays
 * a few milliseconds even when every page is a first touch (~15 µs a fault on this
 * host), large enough that the look costs nothing next to the writes.
 */
const MAX_BATCH = 256;

const port = parentPort!;
// A worker started ahead of its VM (src/sys/early-worker.ts) has its modules loaded already and
// learns its memory and control words from the first message.
const data = await workerInput<SimWorkerData>();
const control = new Int32Array(data.control);
// The main thread owns the mapping and unmaps it only after this worker has exited.
const ram = viewAt(data.ramAddress, data.ramSize);
const dirty = new Uint32Array(data.dirty);

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
      Atomics.store(control, CTRL_ACK, seq);
      post({ type: 'paused', seq });
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
    Atomics.wait(control, CTRL_REQUEST, req);
    continue;
  }
  const throttle = Atomics.load(control, CTRL_THROTTLE);
  if (throttle > 0 && performance.now() - sliceStart >= THROTTLE_TIMESLICE_MS) {
    // Throttled (QEMU's cpu_throttle_thread): sleep out this timeslice's share. A command,
    // or a change of throttle, wakes us early. No catching up afterwards: the credit the
    // sleep would have earned is not given.
    flushOutput();
    Atomics.wait(control, CTRL_REQUEST, req, throttleSleepMs(throttle));
    sliceStart = performance.now();
    bucket!.reset(sliceStart);
    continue;
  }
  const n = bucket!.take(performance.now(), MAX_BATCH);
  if (n === 0) {
    flushOutput();
    // Sleeping on the command word: a pause wakes us at once.
    Atomics.wait(control, CTRL_REQUEST, req, Math.max(bucket!.waitMs(), 0.05));
    continue;
  }
  model.run(n);
  flushOutput();
}
flushOutput();
post({ type: 'exited' });
