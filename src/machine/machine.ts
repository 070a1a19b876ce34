// A Machine: guest RAM and vCPUs (through an accelerator), the I/O bus with its devices,
// and the run state with QEMU's names. Everything above it (QMP, migration, CLI) talks
// to the guest through this class.

import { EventEmitter } from 'node:events';
import { ConfigError, FerryError, MigrationError } from '../errors.js';
import type { Accelerator, AccelKind, GuestExit, MemoryBackendConfig, StateSection } from '../hypervisor/types.js';
import type { GuestSpec } from '../guests/spec.js';
import { PortIoBus } from './io-bus.js';
import { canTransition, type RunState } from './run-state.js';

export const MACHINE_TYPE = 'pc-i440fx-7.2';

export interface MachineOptions {
  /** `auto` picks kvm where /dev/kvm opens, sim otherwise (with a notice). */
  readonly accel: AccelKind | 'auto';
  readonly memorySize: number;
  readonly vcpus?: number;
  readonly guest: GuestSpec;
  readonly kernel?: string;
  readonly initrd?: string;
  readonly append?: string;
  /** Bytes the guest writes to its console (no serial device when absent); input comes back through `consoleInput`. */
  readonly console?: { write(bytes: Uint8Array): void };
  /** -S: do not start the vCPUs until `cont`. */
  readonly startPaused?: boolean;
  /** The guest's memory and state will arrive in a migration stream. */
  readonly incoming?: boolean;
  /** QEMU's -mem-prealloc: back all guest RAM before the guest or a migration starts. */
  readonly memPrealloc?: boolean;
  /** Guest RAM from a memory backend (-object memory-backend-…, -machine memory-backend=ID). */
  readonly memoryBackend?: MemoryBackendConfig;
  /** Told when `auto` had to fall back to sim, and why. */
  readonly notice?: (message: string) => void;
}

export interface MachineEvents {
  /** QEMU's STOP/RESUME/SHUTDOWN, plus every run-state change. */
  stop: [];
  resume: [];
  shutdown: [{ guest: boolean; reason: string }];
  runstate: [RunState];
  /** The guest crashed (triple fault, entry failure): also moves to internal-error. */
  crash: [Error];
}

export class Machine extends EventEmitter<MachineEvents> {
  readonly machineType = MACHINE_TYPE;
  readonly ioBus: PortIoBus;
  readonly accel: Accelerator;
  readonly memorySize: number;
  private readonly devices: StateSection[];
  private state: RunState;
  /** QEMU's autostart: whether an incoming guest runs once loaded (cleared by -S or `stop`). */
  autostart: boolean;
  private consoleInputFn: ((bytes: Uint8Array) => void) | undefined;

  private constructor(accel: Accelerator, ioBus: PortIoBus, devices: StateSection[], memorySize: number, initial: RunState, autostart: boolean) {
    super();
    this.accel = accel;
    this.ioBus = ioBus;
    this.devices = devices;
    this.memorySize = memorySize;
    this.state = initial;
    this.autostart = autostart;
    accel.onExit((exit) => this.onGuestExit(exit));
  }

  static async create(options: MachineOptions): Promise<Machine> {
    const ioBus = new PortIoBus();
    const kind = await chooseAccelerator(options);
    const vcpus = options.vcpus ?? 1;
    if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 64) throw new ConfigError(`Invalid vCPU count ${vcpus}: expected 1 to 64`);
    const config = {
      memorySize: options.memorySize,
      vcpus,
      guest: options.guest,
      ioBus,
      incoming: options.incoming ?? false,
      memPrealloc: options.memPrealloc ?? false,
      ...(options.memoryBackend !== undefined ? { memoryBackend: options.memoryBackend } : {}),
      ...(options.kernel !== undefined ? { kernel: options.kernel } : {}),
      ...(options.initrd !== undefined ? { initrd: options.initrd } : {}),
      ...(options.append !== undefined ? { append: options.append } : {}),
    };
    if (kind === 'v86' && options.memoryBackend !== undefined) {
      throw new ConfigError(`memory-backend=${options.memoryBackend.id}: the v86 accelerator's guest RAM is WebAssembly memory, which no backend can provide (use --accel kvm or sim)`);
    }
    const accel = await createAccelerator(kind, config);
    const devices: StateSection[] = [];
    let consoleInput: ((bytes: Uint8Array) => void) | undefined;
    const sink = options.console;
    if (!sink) {
      // QEMU's -serial none: no UART at all.
    } else if (accel.connectConsole) {
      consoleInput = accel.connectConsole(sink).input;
    } else {
      const { attachSerial } = await import('./serial-wiring.js');
      const serial = attachSerial(ioBus, sink);
      devices.push(serial.section);
      consoleInput = serial.input;
    }
    const initial: RunState = options.incoming ? 'inmigrate' : options.startPaused ? 'prelaunch' : 'running';
    const machine = new Machine(accel, ioBus, devices, options.memorySize, initial, !options.startPaused);
    machine.consoleInputFn = consoleInput;
    if (initial === 'running') accel.resume();
    return machine;
  }

  get runState(): RunState {
    return this.state;
  }

  get accelKind(): AccelKind {
    return this.accel.kind;
  }

  get memory() {
    return this.accel.memory;
  }

  get dirtyLog() {
    return this.accel.dirtyLog;
  }

  /** auto-converge's throttle, where the accelerator has one (MigrationVm.setThrottle). */
  get setThrottle(): ((percent: number) => void) | undefined {
    const accel = this.accel;
    return accel.setThrottle ? (percent) => accel.setThrottle!(percent) : undefined;
  }

  /** The host thread of each vCPU, where the accelerator knows them (MigrationVm.vcpuThreadIds). */
  get vcpuThreadIds(): (() => readonly number[]) | undefined {
    const accel = this.accel;
    return accel.vcpuThreadIds ? () => accel.vcpuThreadIds!() : undefined;
  }

  /** CPU state first (per vCPU), then accelerator-held devices, then the Machine's devices. */
  get stateSections(): readonly StateSection[] {
    return [...this.accel.stateSections, ...this.devices];
  }

  get isRunning(): boolean {
    return this.state === 'running';
  }

  /** Feed bytes typed on the console to the guest's serial port. */
  consoleInput(bytes: Uint8Array): void {
    this.consoleInputFn?.(bytes);
  }

  setRunState(next: RunState): void {
    if (next === this.state) return;
    if (!canTransition(this.state, next)) {
      throw new FerryError('FERRY_ERR_RUNSTATE', `Cannot change run state from ${this.state} to ${next}`);
    }
    this.state = next;
    this.emit('runstate', next);
  }

  /** QMP `stop`. In inmigrate it only clears autostart, as QEMU does. */
  async stop(): Promise<void> {
    if (this.state === 'inmigrate') {
      this.autostart = false;
      return;
    }
    if (this.state !== 'running') {
      if (this.state === 'prelaunch') this.setRunState('paused');
      return;
    }
    await this.accel.pause();
    this.setRunState('paused');
    this.emit('stop');
  }

  /** Set once release-ram gave this guest's RAM away in post-copy: it must never run here again. */
  #ramReleased: string | undefined;

  /** MigrationVm.ramReleased. */
  readonly ramReleased = (why: string): void => {
    this.#ramReleased = why;
  };

  /** QMP `cont`. */
  cont(): void {
    if (this.#ramReleased !== undefined && this.state !== 'running') throw new MigrationError(this.#ramReleased);
    switch (this.state) {
      case 'inmigrate':
        this.autostart = true;
        return;
      case 'running':
        return;
      case 'internal-error':
      case 'shutdown':
        throw new FerryError('FERRY_ERR_RUNSTATE', 'Resetting the Virtual Machine is required');
      case 'finish-migrate':
        throw new MigrationError('Cannot continue the guest while the migration is switching over');
      default:
        this.setRunState('running');
        this.accel.resume();
        this.emit('resume');
    }
  }

  /** Stop the vCPUs for the switchover of an outgoing migration (run state finish-migrate). */
  async pauseForMigration(): Promise<boolean> {
    const wasRunning = this.state === 'running';
    if (wasRunning) await this.accel.pause();
    this.setRunState('finish-migrate');
    if (wasRunning) this.emit('stop');
    return wasRunning;
  }

  /** After a failed or cancelled switchover: back to where the guest was. */
  resumeAfterMigration(wasRunning: boolean): void {
    if (wasRunning) {
      this.setRunState('running');
      this.accel.resume();
      this.emit('resume');
    } else {
      this.setRunState('paused');
    }
  }

  /** A completed incoming migration: run the guest if autostart says so. */
  startAfterIncoming(): void {
    if (this.autostart) {
      this.setRunState('running');
      this.accel.resume();
      this.emit('resume');
    } else {
      this.setRunState('paused');
    }
  }

  private onGuestExit(exit: GuestExit): void {
    if (exit.kind === 'shutdown') {
      if (this.state === 'shutdown') return;
      this.setRunState('shutdown');
      this.emit('shutdown', { guest: true, reason: exit.reason });
    } else {
      if (canTransition(this.state, 'internal-error')) this.setRunState('internal-error');
      this.lastCrash = exit.error;
      this.emit('crash', exit.error);
    }
  }

  /** Why the guest last crashed, for whoever starts listening after it did (a guest that faults at once). */
  lastCrash: Error | undefined;

  async destroy(): Promise<void> {
    await this.accel.destroy();
  }
}

async function chooseAccelerator(options: MachineOptions): Promise<AccelKind> {
  if (options.accel !== 'auto') return options.accel;
  const { kvmAvailable } = await import('../hypervisor/kvm-accelerator.js');
  const probe = kvmAvailable();
  if (probe.ok) return 'kvm';
  options.notice?.(`${probe.reason}; using the sim accelerator (no guest code runs: a workload model writes guest RAM)`);
  return 'sim';
}

async function createAccelerator(kind: AccelKind, config: Parameters<typeof import('../sim/sim-accelerator.js').createSimAccelerator>[0]): Promise<Accelerator> {
  switch (kind) {
    case 'kvm': {
      const { createKvmAccelerator } = await import('../hypervisor/kvm-accelerator.js');
      return createKvmAccelerator(config);
    }
    case 'sim': {
      const { createSimAccelerator } = await import('../sim/sim-accelerator.js');
      return createSimAccelerator(config);
    }
    case 'v86': {
      const { createV86Accelerator } = await import('../v86/v86-accelerator.js');
      return createV86Accelerator(config);
    }
  }
}
