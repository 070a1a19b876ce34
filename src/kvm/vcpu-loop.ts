// The vCPU run loop shared by the real worker (KVM_RUN through FFI) and the tests (a
// scripted stand-in): run, forward IO/MMIO exits through the mailbox, sleep on HLT,
// honour pause/stop between runs, complete pending IO before pausing.

import { EAGAIN, EINTR } from '../sys/libc.js';
import * as K from './ioctls.js';
import * as M from './vcpu-mailbox.js';
import type { KvmRunView } from './structs.js';
import { throttleSleepMs } from '../hypervisor/cpu-throttle.js';

/**
 * Run until the main thread sets CONTROL to STOP. `kvmRun` enters the guest once and
 * returns 0 or -errno; `run` is this thread's view of the same vCPU's kvm_run.
 */
export function runVcpuLoop(box: Int32Array, run: KvmRunView, kvmRun: () => number): void {
  function setState(state: number): void {
    if (Atomics.load(box, M.STATE) === state) return;
    Atomics.store(box, M.STATE, state);
    Atomics.notify(box, M.STATE);
  }

  function ringDoorbell(): void {
    Atomics.add(box, M.DOORBELL, 1);
    Atomics.notify(box, M.DOORBELL);
  }

  /** Queue an entry for the main thread without waiting for it to be handled. */
  function post(kind: number, a: number, b: number, size: number, value: number): void {
    let tail = Atomics.load(box, M.TAIL);
    for (;;) {
      const head = Atomics.load(box, M.HEAD);
      if (tail - head < M.RING_ENTRIES) break;
      // Ring full: the main thread is behind; wait for it to consume (it notifies HEAD).
      Atomics.wait(box, M.HEAD, head, 100);
    }
    const at = M.RING_BASE + (tail % M.RING_ENTRIES) * M.ENTRY_WORDS;
    const [lo, hi] = M.splitValue(value);
    box[at] = kind;
    box[at + 1] = a;
    box[at + 2] = b;
    box[at + 3] = size;
    box[at + 4] = lo;
    box[at + 5] = hi;
    tail++;
    Atomics.store(box, M.TAIL, tail);
    ringDoorbell();
  }

  /** Ask the main thread for a read and wait for the answer. */
  function request(kind: number, address: number, size: number): number {
    const [lo, hi] = M.splitValue(address);
    box[M.REQ_KIND] = kind;
    box[M.REQ_ADDR_LO] = lo;
    box[M.REQ_ADDR_HI] = hi;
    box[M.REQ_SIZE] = size;
    Atomics.store(box, M.REQ_STATE, M.REQ_PENDING);
    ringDoorbell();
    while (Atomics.load(box, M.REQ_STATE) === M.REQ_PENDING) Atomics.wait(box, M.REQ_STATE, M.REQ_PENDING);
    const value = M.joinValue(box[M.REQ_VALUE_LO]!, box[M.REQ_VALUE_HI]!);
    Atomics.store(box, M.REQ_STATE, M.REQ_NONE);
    return value;
  }

  function handleIo(): void {
    const io = run.io;
    for (let i = 0; i < io.count; i++) {
      const offset = io.dataOffset + i * io.size;
      if (io.direction === K.KVM_EXIT_IO_OUT) {
        post(M.KIND_PIO_WRITE, io.port, 0, io.size, run.readIoData(offset, io.size));
      } else {
        run.writeIoData(offset, io.size, request(M.KIND_PIO_READ, io.port, io.size));
      }
    }
  }

  function handleMmio(): void {
    const mmio = run.mmio;
    const address = Number(mmio.physAddr);
    if (mmio.isWrite) post(M.KIND_MMIO_WRITE, address % 0x100000000 | 0, Math.floor(address / 0x100000000), mmio.len, run.readMmioData(mmio.len));
    else run.writeMmioData(mmio.len, request(M.KIND_MMIO_READ, address, mmio.len));
  }

  /** Sleep until the main thread bumps WAKE past `seen` (a kick or a CONTROL change). */
  function sleep(seen: number): void {
    Atomics.wait(box, M.WAKE, seen);
  }

  /** An IO or MMIO exit is completed by the kernel only on the next KVM_RUN. */
  let pendingCompletion = false;

  for (;;) {
    const seen = Atomics.load(box, M.WAKE);
    const control = Atomics.load(box, M.CONTROL);
    if (control === M.CONTROL_STOP && !pendingCompletion) break;
    if (control === M.CONTROL_PAUSE && !pendingCompletion) {
      // The main thread set immediate_exit before asking; clear it so resuming runs the guest.
      run.immediateExit = 0;
      setState(M.STATE_PAUSED);
      sleep(seen);
      continue;
    }
    if (control !== M.CONTROL_RUN) {
      // A pause or stop with an IO exit outstanding: finish it without running guest code.
      run.immediateExit = 1;
    } else if (Atomics.load(box, M.THROTTLE_DUE) !== 0 && !pendingCompletion) {
      // auto-converge (QEMU's cpu_throttle_thread): a timeslice ended; sleep out the
      // throttled share. A pause, stop or kick bumps WAKE and ends the sleep early.
      Atomics.store(box, M.THROTTLE_DUE, 0);
      const percent = Atomics.load(box, M.THROTTLE);
      if (percent > 0) {
        Atomics.wait(box, M.WAKE, seen, throttleSleepMs(percent));
        continue;
      }
    }
    setState(M.STATE_RUNNING);
    const r = kvmRun();
    pendingCompletion = false;
    if (r < 0) {
      if (-r === EINTR || -r === EAGAIN) {
        // Interrupted by the kick signal or immediate_exit: look at CONTROL again. The
        // worker never clears immediate_exit here — the main thread sets it before a pause
        // or stop and clears it in resume(); clearing it here raced with a pause whose
        // CONTROL write had not landed yet, and the vCPU then ran on and never paused.
        continue;
      }
      post(M.KIND_EXIT, M.EXIT_RUN_FAILED, -r, 0, 0);
      setState(M.STATE_EXITED);
      sleep(seen);
      continue;
    }
    const reason = run.exitReason;
    switch (reason) {
      case K.KVM_EXIT_IO:
        handleIo();
        pendingCompletion = true;
        break;
      case K.KVM_EXIT_MMIO:
        handleMmio();
        pendingCompletion = true;
        break;
      case K.KVM_EXIT_INTR:
        break;
      case K.KVM_EXIT_HLT: {
        // No in-kernel irqchip: nothing can wake the guest but the VMM. Sleep until a kick,
        // resume or pause, then run again (the guest is past its HLT).
        setState(M.STATE_HALTED);
        if (Atomics.load(box, M.WAKE) === seen) sleep(seen);
        // Leave HALTED ourselves, unless the main thread took this vCPU as paused where it
        // slept (VcpuThread.requestPause): STATE then says PAUSED, and CONTROL, read next,
        // says PAUSE or whatever came after it.
        if (Atomics.compareExchange(box, M.STATE, M.STATE_HALTED, M.STATE_RUNNING) === M.STATE_HALTED) Atomics.notify(box, M.STATE);
        break;
      }
      default: {
        const detail = reason === K.KVM_EXIT_INTERNAL_ERROR ? run.internal.suberror
          : reason === K.KVM_EXIT_SYSTEM_EVENT ? run.systemEventType
            : reason === K.KVM_EXIT_FAIL_ENTRY ? run.failEntry.cpu : 0;
        const hw = reason === K.KVM_EXIT_FAIL_ENTRY ? Number(run.failEntry.hardwareEntryFailureReason) : 0;
        post(M.KIND_EXIT, reason, detail, 0, hw);
        setState(M.STATE_EXITED);
        // Wait for the main thread to decide (pause, load new state, stop).
        if (Atomics.load(box, M.WAKE) === seen) sleep(seen);
        break;
      }
    }
  }
}

/** The worker's last word: its loop is over and it no longer uses the vCPU fd or kvm_run. */
export function reportStopped(box: Int32Array): void {
  Atomics.store(box, M.STATE, M.STATE_STOPPED);
  Atomics.notify(box, M.STATE);
}
