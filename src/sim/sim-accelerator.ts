// The `sim` accelerator: no guest code runs. Guest RAM is anonymous mmap memory that a
// workload model in a worker thread writes at a set rate, marking a shared dirty
// bitmap, so the migration engine can be exercised and measured on any machine.

import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import type { MessagePort, Worker } from 'node:worker_threads';
import { ConfigError, GuestCrashError, VmStateError } from '../errors.js';
import { writeGuestParams } from '../guests/params.js';
import { sweepRange } from '../guests/spec.js';
import { SWEEP_DEFAULT_FROM } from '../guests/layout.js';
import type {
  Accelerator, AcceleratorConfig, DirtyBitmap, DirtyLog, GuestExit, GuestMemoryBlock, StateSection,
} from '../hypervisor/types.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { VmStateValue } from '../migration/vmstate-types.js';
import {
  CMD_EXIT, CMD_PAUSE, CMD_RUN, CTRL_ACK, CTRL_BYTES, CTRL_PARK, CTRL_REQUEST, CTRL_THROTTLE, CTRL_TID, PARK_CLAIMED, PARK_PARKED,
  SEQ_MASK, encodeRequest,
} from './control.js';
import type { SimCommand, SimWorkerData, SimWorkerMessage } from './control.js';
import { WORKLOAD_WORKER_NAME, WORKLOAD_WORKER_URL } from './workload-worker-url.js';
import { startWorker } from '../sys/early-worker.js';
import { SIM_CPU_STATE_DESCRIPTION, loadCpuState, saveCpuState } from './cpu-state.js';
import {
  CPU_STATE_BYTES, WORKLOAD_HOT, WORKLOAD_IDLE, WORKLOAD_RANDOM, WORKLOAD_SWEEP, readCpuState, seedPrng, writeCpuState,
} from './workload.js';
import type { WorkloadCpuState } from './workload.js';
import { HostMemory, hostMemoryOptions } from '../sys/host-memory.js';
import { checkThrottlePercent } from '../hypervisor/cpu-throttle.js';
import { MAX_GUEST_RAM, planRamBlocks, type RamBlockPlan } from '../hypervisor/ram-layout.js';

/**
 * Pages per second the sim workload writes when the guest spec names no rate: what the
 * built-in guest reaches under this host's KVM (MACHINE.md: ~200–300 K pages/s).
 */
export const SIM_DEFAULT_PAGES_PER_SECOND = 250_000;

/**
 * How long pause() waits on this thread for the worker's acknowledgement before it leaves
 * the rest to the event loop. The worker looks at its command word between batches of a
 * few milliseconds, so this is reached only on a starved machine; meanwhile nothing else
 * runs here (as QEMU's pause_all_vcpus holds its lock), but the pause is not delayed by
 * whatever the event loop would have run first — it is the start of a migration's downtime.
 */
export const PAUSE_SYNC_WAIT_MS = 50;

/** The random workload's fixed seed, so runs are repeatable (the state travels with the guest). */
export const SIM_RANDOM_SEED = 0x46525259;

/** The largest guest RAM the sim holds: blocks of at most 4 GiB over one mapping (ram-layout.ts). */
export const SIM_MAX_MEMORY = MAX_GUEST_RAM;

/** The serial port the progress lines go to, as the real guest writes them. */
const COM1_THR = 0x3f8;

function initialCpuState(config: AcceleratorConfig): WorkloadCpuState {
  const spec = config.guest;
  const base = { cursor: 0, pass: 0, steps: 0, prng: seedPrng(SIM_RANDOM_SEED), from: 0, to: 0 };
  const rate = spec.kind === 'idle' ? SIM_DEFAULT_PAGES_PER_SECOND : (spec.rate ?? SIM_DEFAULT_PAGES_PER_SECOND);
  // A destination's workload is whatever the stream says; until then it does nothing.
  if (config.incoming) return { ...base, kind: WORKLOAD_IDLE, rate };
  switch (spec.kind) {
    case 'sweep':
    case 'hot': {
      const range = sweepRange(spec, config.memorySize)!;
      return { ...base, kind: spec.kind === 'sweep' ? WORKLOAD_SWEEP : WORKLOAD_HOT, from: range.from, to: range.to, cursor: range.from, rate };
    }
    case 'random':
      if (config.memorySize <= SWEEP_DEFAULT_FROM) {
        throw new ConfigError(`Guest builtin:random needs RAM above 1 MiB; got ${config.memorySize} bytes`);
      }
      return { ...base, kind: WORKLOAD_RANDOM, from: SWEEP_DEFAULT_FROM, to: config.memorySize, rate };
    case 'idle':
      return { ...base, kind: WORKLOAD_IDLE, rate };
  }
}

class SimDirtyLog implements DirtyLog {
  private readonly shared: Uint32Array;
  private readonly words: number;
  /** Each block's [first word, end word) of the bitmap: blocks start on 4 GiB (2^15-word) boundaries. */
  private readonly blockWords: ReadonlyArray<readonly [number, number]>;
  private isActive = false;

  constructor(shared: Uint32Array, blocks: readonly RamBlockPlan[]) {
    this.shared = shared;
    this.words = shared.length;
    this.blockWords = blocks.map((b) => [b.offset / PAGE_SIZE / 32, Math.ceil((b.offset + b.size) / PAGE_SIZE / 32)] as const);
  }

  get active(): boolean {
    return this.isActive;
  }

  start(): void {
    this.clear();
    this.isActive = true;
  }

  sync(): DirtyBitmap[] {
    const out = new Uint32Array(this.words);
    // Word by word with exchange: a bit the worker sets after we took its word stays
    // for the next sync; none is lost between the read and the clear.
    for (let i = 0; i < this.words; i++) {
      if (Atomics.load(this.shared, i) !== 0) out[i] = Atomics.exchange(this.shared, i, 0);
    }
    // The worker marks pages whether or not logging is on (a page write racing with
    // start() must not go unseen); outside start()..stop() nothing is reported.
    if (!this.isActive) out.fill(0);
    return this.blockWords.length === 1 ? [out] : this.blockWords.map(([from, to]) => out.subarray(from, to));
  }

  stop(): void {
    this.isActive = false;
  }

  private clear(): void {
    for (let i = 0; i < this.words; i++) Atomics.store(this.shared, i, 0);
  }
}

class SimAccelerator implements Accelerator {
  readonly kind = 'sim' as const;
  readonly memory: readonly GuestMemoryBlock[];
  readonly dirtyLog: SimDirtyLog;
  readonly stateSections: readonly StateSection[];

  private readonly config: AcceleratorConfig;
  private readonly worker: Worker;
  /** Our end of the worker's message port (control.ts). */
  private readonly events: MessagePort;
  private readonly control: Int32Array;
  private readonly cpu: SharedArrayBuffer;
  private readonly host: HostMemory;
  private readonly exitListeners: ((exit: GuestExit) => void)[] = [];
  private readonly pauseWaiters: { seq: number; resolve: () => void }[] = [];
  private seq = 0;
  /** Pauses that took a parked worker as it stood (control.ts, CTRL_PARK); for tests. */
  pausesClaimed = 0;
  private isRunning = false;
  private destroyed = false;
  private workerGone = false;
  /** The worker's first error, for the message when it never started. */
  startError: Error | undefined;
  private readonly exited: Promise<void>;
  /** Settles once the worker runs its loop (starting a worker takes ~100 ms here). */
  readonly ready: Promise<void>;
  private markReady: () => void = () => {};

  constructor(config: AcceleratorConfig) {
    this.config = config;
    // mmap'd rather than a SharedArrayBuffer: the migration asks the kernel which pages
    // were never touched and populates a destination's RAM in bulk (host-memory.ts).
    const host = HostMemory.allocate(config.memorySize, hostMemoryOptions(config));
    this.host = host;
    const pages = config.memorySize / PAGE_SIZE;
    const dirty = new SharedArrayBuffer(Math.ceil(pages / 32) * 4);
    const control = new SharedArrayBuffer(CTRL_BYTES);
    this.cpu = new SharedArrayBuffer(CPU_STATE_BYTES);
    this.control = new Int32Array(control);
    const bytes = host.bytes;
    // An incoming VM's RAM stays untouched until the migration loads it (no guest parameters).
    // No hole below 4 GiB: guest addresses are offsets in the mapping, and so the pages of
    // the worker's one dirty bitmap.
    const blocks = planRamBlocks(config.memorySize, undefined, config.memoryBackend?.id);
    this.memory = blocks.map((b) => host.block(b.idstr, b.guestAddress, { offset: b.offset, size: b.size, freshZero: config.incoming }));
    this.dirtyLog = new SimDirtyLog(new Uint32Array(dirty), blocks);

    const initial = initialCpuState(config);
    if (!config.incoming) writeGuestParams(bytes, config.guest, config.memorySize);
    writeCpuState(this.cpu, initial);

    this.stateSections = [{
      idstr: 'cpu',
      instanceId: 0,
      description: SIM_CPU_STATE_DESCRIPTION,
      save: (): VmStateValue => saveCpuState(readCpuState(this.cpu)),
      load: (state: VmStateValue): void => {
        // The worker reads this state when it next starts running; under it, it would be ignored.
        if (this.isRunning) throw new VmStateError('Cannot load section "cpu" while the sim workload is running');
        writeCpuState(this.cpu, loadCpuState(state, config.memorySize));
      },
      check: (state: VmStateValue): void => {
        loadCpuState(state, config.memorySize);
      },
    }];

    const channel = new MessageChannel();
    this.events = channel.port1;
    const workerData: SimWorkerData = { ramAddress: host.address, ramSize: host.size, dirty, control, cpu: this.cpu, events: channel.port2 };
    this.worker = startWorker(WORKLOAD_WORKER_URL, workerData, { name: WORKLOAD_WORKER_NAME, transferList: [channel.port2] }).worker;
    this.ready = new Promise((resolve) => { this.markReady = resolve; });
    this.events.on('message', (message: SimWorkerMessage) => this.onMessage(message));
    // The worker keeps the process alive while it runs; its port need not.
    this.events.unref();
    let failed = false;
    this.worker.on('error', (error) => {
      failed = true;
      this.startError ??= error;
      this.emitExit({ kind: 'crash', error: new GuestCrashError(`The sim workload worker failed: ${error.message}`, '', { cause: error }) });
    });
    this.exited = new Promise((resolve) => {
      this.worker.once('exit', (code) => {
        this.workerGone = true;
        // What it posted last (its final output) may not have been delivered yet.
        this.takeEvents();
        this.events.close();
        if (!this.destroyed && !failed) {
          this.emitExit({ kind: 'crash', error: new GuestCrashError(`The sim workload worker exited unexpectedly with code ${code}`, '') });
        }
        this.isRunning = false;
        this.resolvePauses(Infinity);
        this.markReady();
        resolve();
      });
    });
  }

  /** The worker exited before it reported ready. */
  get failedToStart(): boolean {
    return this.workerGone && !this.destroyed;
  }

  get running(): boolean {
    return this.isRunning;
  }

  resume(): void {
    if (this.destroyed || this.isRunning) return;
    this.isRunning = true;
    // The worker may never see a pause that a resume overtook, so never acknowledge it:
    // answer those callers now (the resume that superseded them was someone's choice).
    this.resolvePauses(this.seq);
    this.command(CMD_RUN);
  }

  pause(): Promise<void> {
    if (this.destroyed) return Promise.resolve();
    const waiting = this.pauseWaiters.at(-1);
    if (!this.isRunning) return waiting ? new Promise((resolve) => this.pauseWaiters.push({ seq: waiting.seq, resolve })) : Promise.resolve();
    this.isRunning = false;
    // The command first, so a worker that finds its park claimed reads the pause; no
    // wake-up before the claim, so a parked worker does not race it to the park word.
    const seq = this.command(CMD_PAUSE, false);
    const paused = new Promise<void>((resolve) => this.pauseWaiters.push({ seq, resolve }));
    if (Atomics.compareExchange(this.control, CTRL_PARK, PARK_PARKED, PARK_CLAIMED) === PARK_PARKED) {
      // Asleep between batches with its state published: paused as it stands, and left
      // asleep (it learns of it when it next wakes). Its output is queued already.
      this.pausesClaimed++;
      this.takeEvents();
      this.resolvePauses(seq);
      return paused;
    }
    Atomics.notify(this.control, CTRL_REQUEST);
    if (this.waitForAck(seq, PAUSE_SYNC_WAIT_MS)) {
      // In a batch: it acknowledges within a few milliseconds. Its messages, here and in
      // order: the output first, then the acknowledgement, which resolves `paused`.
      this.takeEvents();
    }
    return paused;
  }

  /** Wait on this thread until the worker has acknowledged pause `seq`; false after `timeoutMs`. */
  private waitForAck(seq: number, timeoutMs: number): boolean {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const ack = Atomics.load(this.control, CTRL_ACK);
      if (ack === seq) return true;
      const left = deadline - performance.now();
      if (left <= 0 || this.workerGone) return false;
      Atomics.wait(this.control, CTRL_ACK, ack, left);
    }
  }

  /** Handle, now and in order, every message the worker has posted. */
  private takeEvents(): void {
    for (let next = receiveMessageOnPort(this.events); next !== undefined; next = receiveMessageOnPort(this.events)) {
      this.onMessage(next.message as SimWorkerMessage);
    }
  }

  /** The workload thread stands for vCPU 0 (it is what writes guest RAM); the others run nothing. */
  vcpuThreadIds(): readonly number[] {
    return Array.from({ length: this.config.vcpus }, (_, i) => (i === 0 ? Atomics.load(this.control, CTRL_TID) : 0));
  }

  setThrottle(percent: number): void {
    checkThrottlePercent(percent, 'the sim workload');
    Atomics.store(this.control, CTRL_THROTTLE, percent);
    // Wake a worker sleeping out a timeslice, so a lower throttle takes effect at once.
    Atomics.notify(this.control, CTRL_REQUEST);
  }

  onExit(listener: (exit: GuestExit) => void): void {
    this.exitListeners.push(listener);
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return this.exited;
    this.destroyed = true;
    this.isRunning = false;
    this.command(CMD_EXIT);
    // The exit command ends the loop at once; terminate covers a worker that is stuck.
    const timer = setTimeout(() => { void this.worker.terminate(); }, 1000);
    await this.exited;
    clearTimeout(timer);
    this.host.release();
  }

  private command(cmd: SimCommand, wake = true): number {
    this.seq = (this.seq + 1) & SEQ_MASK;
    Atomics.store(this.control, CTRL_REQUEST, encodeRequest(this.seq, cmd));
    if (wake) Atomics.notify(this.control, CTRL_REQUEST);
    return this.seq;
  }

  private onMessage(message: SimWorkerMessage): void {
    switch (message.type) {
      case 'output':
        for (let i = 0; i < message.text.length; i++) this.config.ioBus.pioWrite(COM1_THR, 1, message.text.charCodeAt(i));
        break;
      case 'paused':
        this.resolvePauses(message.seq);
        break;
      case 'ready':
        this.markReady();
        break;
      case 'exited':
        break;
    }
  }

  /** A pause acknowledged with `seq` also answers earlier ones the worker skipped over. */
  private resolvePauses(seq: number): void {
    while (this.pauseWaiters.length > 0 && this.pauseWaiters[0]!.seq <= seq) this.pauseWaiters.shift()!.resolve();
  }

  private emitExit(exit: GuestExit): void {
    for (const listener of this.exitListeners) listener(exit);
  }
}

/** Create the sim accelerator for `config`; the workload starts paused (call resume()). */
export async function createSimAccelerator(config: AcceleratorConfig): Promise<Accelerator> {
  if (!Number.isSafeInteger(config.memorySize) || config.memorySize <= 0 || config.memorySize % PAGE_SIZE !== 0) {
    throw new ConfigError(`Cannot create the sim accelerator: memory size ${config.memorySize} is not a positive multiple of ${PAGE_SIZE}`);
  }
  if (config.memorySize > SIM_MAX_MEMORY) {
    throw new ConfigError(`Cannot create the sim accelerator with ${config.memorySize} bytes of RAM: at most ${SIM_MAX_MEMORY} (1 TiB)`);
  }
  // More vCPUs are accepted but modelled as one: the workload is a single writer.
  if (!Number.isInteger(config.vcpus) || config.vcpus < 1) {
    throw new ConfigError(`Cannot create the sim accelerator with ${config.vcpus} vCPUs: expected at least 1`);
  }
  const accel = new SimAccelerator(config);
  // Resolve only with a worker that answers at once, so the first pause() is as quick as any.
  await accel.ready;
  if (accel.failedToStart) {
    await accel.destroy();
    const reason = accel.startError ? `: ${accel.startError.message}` : '';
    throw new GuestCrashError(`Cannot create the sim accelerator: its workload worker did not start${reason}`, '', { cause: accel.startError });
  }
  return accel;
}
