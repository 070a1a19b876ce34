// The main-thread side of a vCPU's worker: starts it, resumes and pauses it (pause
// within milliseconds even if the guest never exits: immediate_exit + SIGUSR2 to the
// worker's thread), and services its IO/MMIO traffic on the IoBus in guest order.

import type { Worker } from 'node:worker_threads';
import { debuglog } from 'node:util';
import { GuestCrashError } from '../errors.js';
import { SIGUSR2, tgkill } from '../sys/libc.js';
import type { IoBus } from '../hypervisor/types.js';
import * as K from './ioctls.js';
import * as M from './vcpu-mailbox.js';
import { formatRegisterDump } from './register-dump.js';
import type { KvmRegs, KvmRunView, KvmSregs } from './structs.js';
import type { VcpuWorkerData } from './vcpu-worker.js';
import { VCPU_WORKER_URL, vcpuThreadName } from './vcpu-worker-url.js';
import { startWorker } from '../sys/early-worker.js';
import { checkThrottlePercent, throttlePeriodMs } from '../hypervisor/cpu-throttle.js';

const trace = debuglog('ferry');

/** How the guest stopped on its own, as the accelerator reports it. */
export type VcpuExit =
  | { readonly kind: 'shutdown'; readonly reason: string }
  | { readonly kind: 'crash'; readonly error: Error };

/** Kept registered while any vCPU thread exists: without a listener SIGUSR2 would kill the process. */
function ignoreKick(): void {}
let kickListeners = 0;

function holdKickSignal(): void {
  if (kickListeners++ === 0) process.on('SIGUSR2', ignoreKick);
}

function releaseKickSignal(): void {
  if (--kickListeners === 0) process.off('SIGUSR2', ignoreKick);
}

// Atomics.waitAsync is in Node 20 (V8) but only in TypeScript's ES2024 lib; tsconfig targets ES2023.
type WaitAsyncResult = { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
const waitAsync = (Atomics as unknown as {
  waitAsync(array: Int32Array, index: number, value: number, timeoutMs?: number): WaitAsyncResult;
}).waitAsync;

/** How long pause() waits between kicks before sending the signal again. */
const KICK_RETRY_MS = 2;
/**
 * How long a pause waits for the worker on this thread before it leaves the rest to the
 * event loop. A running vCPU leaves KVM_RUN ~0.2 ms after the signal (MACHINE.md); waiting
 * here, answering its reads and taking its writes meanwhile, keeps whatever the event loop
 * would have run first out of a migration's downtime (QEMU's pause_all_vcpus blocks too).
 */
const PAUSE_SYNC_WAIT_MS = 50;
/** How often that wait looks for a read to answer (the worker rings DOORBELL, not STATE). */
const PAUSE_POLL_MS = 0.25;

/** What the thread needs of a vCPU (KvmVcpu; a stand-in in tests). */
export interface VcpuHandle {
  readonly id: number;
  readonly fd: number;
  readonly runMapping: { readonly length: number };
  /** The main thread's view of kvm_run (immediate_exit is written through it). */
  readonly run: KvmRunView;
  getRegs(): KvmRegs;
  getSregs(): KvmSregs;
}

export interface VcpuThreadOptions {
  /** The worker module; tests pass a scripted stand-in for KVM_RUN. */
  readonly workerUrl?: URL;
  readonly extraWorkerData?: Readonly<Record<string, unknown>>;
}

export class VcpuThread {
  readonly vcpu: VcpuHandle;
  private readonly box = M.createMailbox();
  private readonly worker: Worker;
  /** Whether the thread was started ahead of its VM and taken here (src/sys/early-worker.ts). */
  readonly startedEarly: boolean;
  private readonly ioBus: IoBus;
  private readonly onExit: (exit: VcpuExit) => void;
  private servicing: Promise<void>;
  private workerError: Error | undefined;
  private stopped = false;

  constructor(vcpu: VcpuHandle, ioBus: IoBus, onExit: (exit: VcpuExit) => void, options: VcpuThreadOptions = {}) {
    this.vcpu = vcpu;
    this.ioBus = ioBus;
    this.onExit = onExit;
    Atomics.store(this.box, M.CONTROL, M.CONTROL_PAUSE);
    holdKickSignal();
    const workerData: VcpuWorkerData = { vcpuFd: vcpu.fd, mmapSize: vcpu.runMapping.length, mailbox: this.box.buffer as SharedArrayBuffer };
    // vCPU 0's worker may have been started with the process (src/cli/main.ts): it is then
    // sent its data now instead of booting from scratch.
    const started = startWorker(options.workerUrl ?? VCPU_WORKER_URL, { ...options.extraWorkerData, ...workerData }, { name: vcpuThreadName(vcpu.id) });
    this.worker = started.worker;
    this.startedEarly = started.early;
    this.worker.on('error', (err) => {
      this.workerError = err;
      this.onExit({ kind: 'crash', error: new GuestCrashError(`vCPU ${vcpu.id} thread failed: ${err.message}`, '', { cause: err }) });
    });
    this.servicing = this.serviceLoop();
  }

  /** The worker's kernel thread id (0 until it has started). */
  get tid(): number {
    return Atomics.load(this.box, M.TID);
  }

  get state(): number {
    return Atomics.load(this.box, M.STATE);
  }

  /** Resolves once the worker has mapped kvm_run and published its thread id. */
  async ready(timeoutMs = 10_000): Promise<void> {
    await this.waitForState((s) => s !== M.STATE_STARTING, timeoutMs, 'start');
  }

  private setControl(control: number): void {
    Atomics.store(this.box, M.CONTROL, control);
    Atomics.add(this.box, M.WAKE, 1);
    Atomics.notify(this.box, M.WAKE);
  }

  resume(): void {
    this.vcpu.run.immediateExit = 0;
    this.setControl(M.CONTROL_RUN);
  }

  /**
   * auto-converge: throttle this vCPU to run (100 − percent) % of the time. Every 10 ms of
   * running (QEMU's CPU_THROTTLE_TIMESLICE_NS), a timer marks the timeslice over and
   * interrupts KVM_RUN; the worker then sleeps percent / (100 − percent) of a timeslice.
   */
  setThrottle(percent: number): void {
    checkThrottlePercent(percent, `vCPU ${this.vcpu.id}`);
    Atomics.store(this.box, M.THROTTLE, percent);
    if (percent === 0) {
      clearTimeout(this.throttleTimer);
      this.throttleTimer = undefined;
      Atomics.store(this.box, M.THROTTLE_DUE, 0);
      this.kick(); // ends a sleep in progress
      return;
    }
    if (this.throttleTimer === undefined) this.scheduleThrottleTick(percent);
  }

  private throttleTimer: ReturnType<typeof setTimeout> | undefined;

  private scheduleThrottleTick(percent: number): void {
    // One period: the running timeslice plus the sleep (cpu_throttle_timer_tick).
    const periodMs = throttlePeriodMs(percent);
    this.throttleTimer = setTimeout(() => {
      const now = Atomics.load(this.box, M.THROTTLE);
      if (now === 0 || this.stopped) {
        this.throttleTimer = undefined;
        return;
      }
      Atomics.store(this.box, M.THROTTLE_DUE, 1);
      // Without immediate_exit: a pause may set and clear that one, and a throttle tick
      // that lands just before KVM_RUN is only late by one timeslice.
      this.interrupt();
      this.scheduleThrottleTick(now);
    }, periodMs);
    this.throttleTimer.unref();
  }

  /** Wake a halted vCPU (HLT sleeps until kicked, resumed or paused). */
  kick(): void {
    Atomics.add(this.box, M.WAKE, 1);
    Atomics.notify(this.box, M.WAKE);
  }

  /** Interrupt KVM_RUN: immediate_exit makes any entry return at once, the signal ends the current one. */
  private interrupt(): void {
    const tid = Atomics.load(this.box, M.TID);
    if (tid > 0 && this.state === M.STATE_RUNNING) {
      try {
        tgkill(process.pid, tid, SIGUSR2);
      } catch (err) {
        trace('vcpu %d: tgkill failed: %s', this.vcpu.id, (err as Error).message);
      }
    }
  }

  /** Stop running guest code; resolves when the worker is out of KVM_RUN with IO completed. */
  async pause(timeoutMs = 5_000): Promise<void> {
    await this.finishPause(this.requestPause(), timeoutMs);
  }

  /** Pauses that took a halted vCPU as paused where it slept; for tests. */
  pausesClaimed = 0;

  /**
   * The first half of pause(), so a VM can ask all its vCPUs before waiting for any: true
   * when the vCPU was halted and is taken as paused where it sleeps, without waking it
   * (a halted worker is outside KVM_RUN with its writes posted).
   */
  requestPause(): boolean {
    // immediate_exit first, so the worker's acknowledgement (which clears it) comes after.
    this.vcpu.run.immediateExit = 1;
    // CONTROL before the claim and no wake-up yet: a worker that finds itself claimed reads
    // the pause, and a sleeping one is not woken to race us for STATE.
    Atomics.store(this.box, M.CONTROL, M.CONTROL_PAUSE);
    if (Atomics.compareExchange(this.box, M.STATE, M.STATE_HALTED, M.STATE_PAUSED) === M.STATE_HALTED) {
      this.vcpu.run.immediateExit = 0;
      this.pausesClaimed++;
      Atomics.notify(this.box, M.STATE);
      return true;
    }
    Atomics.add(this.box, M.WAKE, 1);
    Atomics.notify(this.box, M.WAKE);
    this.interrupt();
    return false;
  }

  /** The second half of pause(): wait for the worker (unless claimed), then take its writes. */
  async finishPause(claimed: boolean, timeoutMs = 5_000): Promise<void> {
    const paused = (s: number): boolean => s === M.STATE_PAUSED || s === M.STATE_STOPPED;
    const kickAgain = (): void => {
      // The worker may have cleared immediate_exit after an interrupted run that it took
      // for a resume (it read CONTROL before our pause landed): set it again, then kick.
      if (this.state === M.STATE_RUNNING) this.vcpu.run.immediateExit = 1;
      this.interrupt();
    };
    if (!claimed && !this.waitHere(paused, Math.min(PAUSE_SYNC_WAIT_MS, timeoutMs), kickAgain)) {
      await this.waitForState(paused, timeoutMs, 'pause', kickAgain);
    }
    // Writes the guest made before it stopped must reach the devices before anyone saves
    // device state: the service loop may not have run since the worker posted them.
    this.drainRing();
  }

  /**
   * Wait on this thread, up to `budgetMs`, for the worker's state to satisfy `done`,
   * answering its reads and taking its writes meanwhile (it may need either to get there).
   */
  private waitHere(done: (state: number) => boolean, budgetMs: number, retry: () => void): boolean {
    const start = performance.now();
    let nextKick = start + KICK_RETRY_MS;
    for (;;) {
      const state = Atomics.load(this.box, M.STATE);
      if (done(state)) return true;
      if (this.workerError) return false;
      this.answerRequest();
      this.drainRing();
      const now = performance.now();
      if (now - start >= budgetMs) return false;
      if (now >= nextKick) {
        retry();
        nextKick = now + KICK_RETRY_MS;
      }
      Atomics.wait(this.box, M.STATE, state, Math.min(PAUSE_POLL_MS, nextKick - now));
    }
  }

  private async waitForState(done: (state: number) => boolean, timeoutMs: number, what: string, retry?: () => void): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const state = Atomics.load(this.box, M.STATE);
      if (done(state)) return;
      if (this.workerError) throw this.workerError;
      const left = deadline - Date.now();
      if (left <= 0) throw new GuestCrashError(`vCPU ${this.vcpu.id} did not ${what} within ${timeoutMs} ms (worker state ${state})`, '');
      const wait = waitAsync(this.box, M.STATE, state, Math.min(left, retry ? KICK_RETRY_MS : left));
      if (wait.async) await wait.value;
      if (retry && Atomics.load(this.box, M.STATE) === state) retry();
    }
  }

  private async serviceLoop(): Promise<void> {
    while (!this.stopped) {
      const seen = Atomics.load(this.box, M.DOORBELL);
      this.drainRing();
      this.answerRequest();
      if (this.stopped) break;
      const wait = waitAsync(this.box, M.DOORBELL, seen);
      if (wait.async) await wait.value;
    }
    this.drainRing();
  }

  private drainRing(): void {
    let head = Atomics.load(this.box, M.HEAD);
    const tail = Atomics.load(this.box, M.TAIL);
    if (head === tail) return;
    while (head !== tail) {
      const at = M.RING_BASE + (head % M.RING_ENTRIES) * M.ENTRY_WORDS;
      const b = this.box;
      this.dispatch({ kind: b[at]!, a: b[at + 1]!, b: b[at + 2]!, size: b[at + 3]!, valueLo: b[at + 4]!, valueHi: b[at + 5]! });
      head++;
    }
    Atomics.store(this.box, M.HEAD, head);
    Atomics.notify(this.box, M.HEAD);
  }

  private dispatch(e: M.RingEntry): void {
    try {
      switch (e.kind) {
        case M.KIND_PIO_WRITE:
          this.ioBus.pioWrite(e.a & 0xffff, e.size as 1 | 2 | 4, M.joinValue(e.valueLo, e.valueHi));
          return;
        case M.KIND_MMIO_WRITE:
          this.ioBus.mmioWrite(M.joinValue(e.a, e.b), e.size as 1 | 2 | 4 | 8, M.joinValue(e.valueLo, e.valueHi));
          return;
        case M.KIND_EXIT:
          this.reportExit(e.a, e.b, M.joinValue(e.valueLo, e.valueHi));
          return;
        default:
          throw new RangeError(`unknown vCPU mailbox entry kind ${e.kind}`);
      }
    } catch (err) {
      // A device that throws is a VMM bug the user must see: report it as a crash.
      this.onExit({ kind: 'crash', error: new GuestCrashError(`vCPU ${this.vcpu.id}: I/O handling failed: ${(err as Error).message}`, this.dump(), { cause: err }) });
    }
  }

  private answerRequest(): void {
    if (Atomics.load(this.box, M.REQ_STATE) !== M.REQ_PENDING) return;
    // The worker posts its writes before it raises a request: drain them now (the drain
    // before this call may have run just before the last of them arrived), so a read
    // never overtakes a write the guest made earlier.
    this.drainRing();
    const b = this.box;
    const kind = b[M.REQ_KIND]!;
    const address = M.joinValue(b[M.REQ_ADDR_LO]!, b[M.REQ_ADDR_HI]!);
    const size = b[M.REQ_SIZE]!;
    let value = 0;
    try {
      value = kind === M.KIND_PIO_READ
        ? this.ioBus.pioRead(address & 0xffff, size as 1 | 2 | 4)
        : this.ioBus.mmioRead(address, size as 1 | 2 | 4 | 8);
    } catch (err) {
      // Answer all-ones (what reading a floating bus gives) so the vCPU is not stuck, and report.
      value = size >= 4 ? 0xffffffff : (1 << (size * 8)) - 1;
      this.onExit({ kind: 'crash', error: new GuestCrashError(`vCPU ${this.vcpu.id}: I/O read at 0x${address.toString(16)} failed: ${(err as Error).message}`, '', { cause: err }) });
    }
    const [lo, hi] = M.splitValue(value);
    b[M.REQ_VALUE_LO] = lo;
    b[M.REQ_VALUE_HI] = hi;
    Atomics.store(b, M.REQ_STATE, M.REQ_DONE);
    Atomics.notify(b, M.REQ_STATE);
  }

  private dump(): string {
    try {
      return formatRegisterDump(this.vcpu.getRegs(), this.vcpu.getSregs());
    } catch (err) {
      return `(registers unavailable: ${(err as Error).message})`;
    }
  }

  private reportExit(reason: number, detail: number, hardwareReason: number): void {
    const id = this.vcpu.id;
    if (reason === K.KVM_EXIT_SYSTEM_EVENT && (detail === 1 || detail === 2)) {
      // KVM_SYSTEM_EVENT_SHUTDOWN (1) / RESET (2): the guest asked to stop.
      this.onExit({ kind: 'shutdown', reason: detail === 1 ? 'guest-shutdown' : 'guest-reset' });
      return;
    }
    let message: string;
    if (reason === M.EXIT_RUN_FAILED) message = `vCPU ${id}: KVM_RUN failed with errno ${detail}`;
    else if (reason === K.KVM_EXIT_SHUTDOWN) message = `vCPU ${id}: the guest triple-faulted (KVM_EXIT_SHUTDOWN)`;
    else if (reason === K.KVM_EXIT_FAIL_ENTRY) message = `vCPU ${id}: VM entry failed (KVM_EXIT_FAIL_ENTRY, hardware reason 0x${hardwareReason.toString(16)}, cpu ${detail})`;
    else if (reason === K.KVM_EXIT_INTERNAL_ERROR) message = `vCPU ${id}: KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror ${detail})`;
    else message = `vCPU ${id}: unexpected ${K.exitReasonName(reason)}${detail ? ` (detail ${detail})` : ''}`;
    const dump = this.dump();
    this.onExit({ kind: 'crash', error: new GuestCrashError(`${message}\n${dump}`, dump) });
  }

  /** Stop the worker for good; the vCPU fd may then be closed. */
  async stop(timeoutMs = 5_000): Promise<void> {
    if (this.stopped) return;
    clearTimeout(this.throttleTimer);
    this.throttleTimer = undefined;
    this.vcpu.run.immediateExit = 1;
    this.setControl(M.CONTROL_STOP);
    this.interrupt();
    try {
      await this.waitForState((s) => s === M.STATE_STOPPED, timeoutMs, 'stop', () => {
        if (this.state === M.STATE_RUNNING) this.vcpu.run.immediateExit = 1;
        this.interrupt();
      });
    } finally {
      this.stopped = true;
      Atomics.add(this.box, M.DOORBELL, 1);
      Atomics.notify(this.box, M.DOORBELL);
      await this.servicing;
      await this.worker.terminate();
      releaseKickSignal();
    }
  }
}
