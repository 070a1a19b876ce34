// A stand-in for the vCPU worker in tests on hosts without /dev/kvm: the real run loop
// (vcpu-loop.ts) over a scripted "KVM_RUN" that produces exits into a shared kvm_run page
// the way the kernel does, so the mailbox, IO ordering, HLT and pause can be tested.

import { workerInput } from '../../sys/early-worker.js';
import { EINTR, gettid } from '../../sys/libc.js';
import * as K from '../ioctls.js';
import * as M from '../vcpu-mailbox.js';
import { KvmRunView, KVM_RUN_OFFSETS } from '../structs.js';
import { reportStopped, runVcpuLoop } from '../vcpu-loop.js';

export type FakeStep =
  | { readonly out: number; readonly size: 1 | 2 | 4; readonly values: readonly number[] }
  | { readonly in: number; readonly size: 1 | 2 | 4 }
  /** Write the value the last IN completed with to this port. */
  | { readonly echo: number }
  | { readonly mmioWrite: number; readonly len: 1 | 2 | 4 | 8; readonly value: number }
  /** An MMIO read; its result is what a following `echo` writes out. */
  | { readonly mmioRead: number; readonly len: 1 | 2 | 4 | 8 }
  | { readonly hlt: true }
  | { readonly shutdown: true };

export interface FakeWorkerData {
  readonly mailbox: SharedArrayBuffer;
  /** The kvm_run page, shared with the main thread's KvmRunView. */
  readonly runPage: SharedArrayBuffer;
  /** Counts loop iterations of the "guest" once the script is done (it then spins). */
  readonly progress: SharedArrayBuffer;
  readonly script: readonly FakeStep[];
}

/** Where the fake puts PIO data: inside the page, as the kernel does (data_offset). */
const IO_DATA_OFFSET = 2048;

// Like the real worker, it takes its data from workerData or, prestarted, from the first message.
const data = await workerInput<FakeWorkerData>();
const box = new Int32Array(data.mailbox);
const page = new Uint8Array(data.runPage);
const view = new DataView(data.runPage);
const run = new KvmRunView(page);
const progress = new Int32Array(data.progress);
let step = 0;
let pendingIn: { size: number } | undefined;
let pendingMmioRead: { len: number } | undefined;
let lastIn = 0;

function exitIo(direction: number, port: number, size: number, count: number): number {
  view.setUint32(KVM_RUN_OFFSETS.exit_reason, K.KVM_EXIT_IO, true);
  view.setUint8(KVM_RUN_OFFSETS.io_direction, direction);
  view.setUint8(KVM_RUN_OFFSETS.io_size, size);
  view.setUint16(KVM_RUN_OFFSETS.io_port, port, true);
  view.setUint32(KVM_RUN_OFFSETS.io_count, count, true);
  view.setBigUint64(KVM_RUN_OFFSETS.io_data_offset, BigInt(IO_DATA_OFFSET), true);
  return 0;
}

function fakeKvmRun(): number {
  // Like the kernel: first complete an IN the VMM answered, then honour immediate_exit.
  if (pendingIn) {
    lastIn = run.readIoData(IO_DATA_OFFSET, pendingIn.size);
    pendingIn = undefined;
  }
  if (pendingMmioRead) {
    lastIn = run.readMmioData(pendingMmioRead.len);
    pendingMmioRead = undefined;
  }
  if (run.immediateExit) return -EINTR;
  const s = data.script[step];
  if (!s) {
    // A guest that never exits: spin until interrupted (immediate_exit, or a throttle
    // tick, whose signal would end a real KVM_RUN).
    while (!run.immediateExit && Atomics.load(box, M.THROTTLE_DUE) === 0) Atomics.add(progress, 0, 1);
    return -EINTR;
  }
  step++;
  if ('out' in s) {
    s.values.forEach((v, i) => run.writeIoData(IO_DATA_OFFSET + i * s.size, s.size, v));
    return exitIo(K.KVM_EXIT_IO_OUT, s.out, s.size, s.values.length);
  }
  if ('in' in s) {
    pendingIn = { size: s.size };
    return exitIo(K.KVM_EXIT_IO_IN, s.in, s.size, 1);
  }
  if ('echo' in s) {
    run.writeIoData(IO_DATA_OFFSET, 4, lastIn);
    return exitIo(K.KVM_EXIT_IO_OUT, s.echo, 4, 1);
  }
  if ('mmioWrite' in s) {
    view.setUint32(KVM_RUN_OFFSETS.exit_reason, K.KVM_EXIT_MMIO, true);
    view.setBigUint64(KVM_RUN_OFFSETS.mmio_phys_addr, BigInt(s.mmioWrite), true);
    view.setUint32(KVM_RUN_OFFSETS.mmio_len, s.len, true);
    view.setUint8(KVM_RUN_OFFSETS.mmio_is_write, 1);
    run.writeMmioData(s.len, s.value);
    return 0;
  }
  if ('mmioRead' in s) {
    view.setUint32(KVM_RUN_OFFSETS.exit_reason, K.KVM_EXIT_MMIO, true);
    view.setBigUint64(KVM_RUN_OFFSETS.mmio_phys_addr, BigInt(s.mmioRead), true);
    view.setUint32(KVM_RUN_OFFSETS.mmio_len, s.len, true);
    view.setUint8(KVM_RUN_OFFSETS.mmio_is_write, 0);
    pendingMmioRead = { len: s.len };
    return 0;
  }
  view.setUint32(KVM_RUN_OFFSETS.exit_reason, 'hlt' in s ? K.KVM_EXIT_HLT : K.KVM_EXIT_SHUTDOWN, true);
  return 0;
}

Atomics.store(box, M.TID, gettid());
runVcpuLoop(box, run, fakeKvmRun);
reportStopped(box);
