// A vCPU's worker thread: wires vcpu-loop.ts to the real KVM_RUN. It has its own koffi
// bindings and its own mapping of kvm_run; it needs no view of guest RAM, because every
// exit's data (IO, MMIO) lives in kvm_run.

import { MAP_SHARED, PROT_READ, PROT_WRITE, gettid, ioctlIntRaw, mmap, munmap } from '../sys/libc.js';
import * as K from './ioctls.js';
import * as M from './vcpu-mailbox.js';
import { reportStopped, runVcpuLoop } from './vcpu-loop.js';
import { KvmRunView } from './structs.js';
import { workerInput } from '../sys/early-worker.js';

export interface VcpuWorkerData {
  readonly vcpuFd: number;
  readonly mmapSize: number;
  readonly mailbox: SharedArrayBuffer;
}

// vCPU 0's worker may start with the process, before its VM exists: it then loads its
// modules and learns its vCPU from the first message (src/sys/early-worker.ts).
const data = await workerInput<VcpuWorkerData>();
const box = new Int32Array(data.mailbox);
// SAFETY: a second MAP_SHARED mapping of the vCPU fd shows the same kvm_run page as the
// main thread's; it is unmapped when this loop ends, before the main thread closes the fd.
const mapping = mmap(data.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, data.vcpuFd, 0);
const run = new KvmRunView(mapping.bytes);

Atomics.store(box, M.TID, gettid());
// SAFETY: KVM_RUN takes no argument; the vCPU fd stays open until this worker reports STOPPED.
runVcpuLoop(box, run, () => ioctlIntRaw(data.vcpuFd, K.KVM_RUN, 0));
munmap(mapping);
reportStopped(box);
