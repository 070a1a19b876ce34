// The `v86` accelerator: a real Linux guest run by v86 (an x86 emulator with a
// WebAssembly JIT) on the main thread, with guest RAM exposed without copies, a
// shadow-copy dirty log, and v86's CPU + device state as one memory-less state section.
//
// Where the emulator runs, and why: guest RAM is inside v86's wasm memory; only the
// thread that owns that memory can hand out a zero-copy view of it (it is not a
// SharedArrayBuffer). v86 runs in short slices (main_loop, ~1 ms busy, less when the
// guest halts) scheduled with setImmediate/setTimeout, so I/O callbacks (QMP, the
// migration channel) run between slices. While dirty logging is on, slices are joined
// into bursts of BURST_MS and each burst ends with a comparison against the shadow copy
// (see shadow-dirty-log.ts for why that is what makes the log correct).
//
// How the state is separated from memory: v86's save_state() serialises the CPU's
// get_state() array, in which entries 77/78 are guest RAM (the non-zero pages packed,
// and their bitmap), produced by cpu.pack_memory(). For the duration of one save Ferry
// shadows pack_memory on the CPU object with a function that returns an empty packing,
// so the file holds CPU + devices only (a few hundred KiB). On load it shadows
// unpack_memory (which would zero RAM and unpack the pages) with a no-op: by then the
// RAM handler has written guest RAM already. The file is checked first
// (v86-state-file.ts): right layout, right v86 state version, no RAM inside.

import { createRequire } from 'node:module';
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import { ConfigError, FerryError, VmStateError, errorMessage } from '../errors.js';
import type {
  Accelerator, AcceleratorConfig, ConsoleSink, GuestExit, GuestMemoryBlock, StateSection,
} from '../hypervisor/types.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import { THROTTLE_TIMESLICE_MS, checkThrottlePercent, throttleSleepMs } from '../hypervisor/cpu-throttle.js';
import { populateOf, residencyOf } from '../sys/host-memory.js';
import type { VmStateDescription, VmStateValue } from '../migration/vmstate-types.js';
import { ShadowDirtyLog } from './shadow-dirty-log.js';
import { readV86StateSummary, V86_STATE_VERSION } from './v86-state-file.js';

/** The v86 release Ferry is built and tested against (package.json pins it exactly). */
export const V86_PINNED_VERSION = '0.5.462';

export const V86_STATE_IDSTR = 'v86-state';
/** Caps the state buffer on load: a Linux guest's state is well under 1 MiB. */
export const V86_STATE_MAX_BYTES = 16 * 1024 * 1024;
const RAM_IDSTR = 'pc.ram';
/** v86 allocates guest RAM in 128 KiB steps and caps it below 2 GiB. */
const V86_RAM_GRANULE = 128 * 1024;
const V86_RAM_MAX = 2 ** 31 - V86_RAM_GRANULE;
/** The VGA BIOS needs 256 KiB of video memory; more would only bloat the state (serial console guest). */
const VGA_MEMORY_BYTES = 256 * 1024;
/** Boot-time serial output kept until a console connects. */
const EARLY_CONSOLE_BYTES = 64 * 1024;
/**
 * While dirty logging, guest code runs in bursts of BURST_RATIO × the last comparison's
 * cost (clamped), so comparing takes at most ~1/(1+BURST_RATIO) of a busy guest's time;
 * the cap bounds how long the main thread is held (QMP, the migration loop).
 */
const BURST_RATIO = 3;
const BURST_MIN_MS = 10;
const BURST_MAX_MS = 60;
/** A halted guest waits at least this multiple of the comparison's cost before its next burst. */
const IDLE_WAIT_RATIO = 2;

/**
 * The v86 state section. `state` is a v86 state file without guest RAM; the other fields
 * let a destination refuse a state it cannot load before touching its emulator.
 */
export const V86_STATE_DESCRIPTION: VmStateDescription = {
  name: V86_STATE_IDSTR,
  version: 1,
  minimumVersion: 1,
  fields: [
    /** v86's own STATE_VERSION (the file header's second word). */
    { name: 'state_version', type: 'uint32' },
    /** "0.5.462", NUL-padded: v86 does not promise that states cross releases. */
    { name: 'v86_release', type: 'buffer', size: 16 },
    { name: 'memory_size', type: 'uint32' },
    /** performance.timeOrigin of the source in µs since the epoch, to rebase v86's timers. */
    { name: 'time_origin_us', type: 'uint64' },
    { name: 'state_length', type: 'uint32' },
    { name: 'state', type: 'buffer', lengthField: 'state_length', maxLength: V86_STATE_MAX_BYTES },
  ],
};

/** Where scripts/setup-linux-guest.sh puts the guest (override: FERRY_LINUX_GUEST_DIR). */
export function linuxGuestDir(): string {
  const fromEnv = process.env['FERRY_LINUX_GUEST_DIR'];
  if (fromEnv) return resolve(fromEnv);
  // dist/src/v86/ → the repository root
  return fileURLToPath(new URL('../../../.cache/linux-guest/', import.meta.url));
}

export interface V86GuestFiles {
  readonly bios: string;
  readonly vgaBios: string;
  readonly kernel: string;
  readonly initrd: string;
}

export function defaultGuestFiles(dir = linuxGuestDir()): V86GuestFiles {
  return {
    bios: join(dir, 'bios.bin'),
    vgaBios: join(dir, 'vgabios.bin'),
    kernel: join(dir, 'vmlinuz'),
    initrd: join(dir, 'initramfs.cpio.gz'),
  };
}

/** Whether the default guest files exist (tests skip with a message when not). */
export function linuxGuestAvailable(dir = linuxGuestDir()): boolean {
  return Object.values(defaultGuestFiles(dir)).every((f) => existsSync(f));
}

const require = createRequire(import.meta.url);

/** The installed v86 release, checked against the pinned one (the state format depends on it). */
export function checkV86Version(): string {
  let version: string;
  try {
    version = (JSON.parse(readFileSync(require.resolve('v86/package.json'), 'utf8')) as { version: string }).version;
  } catch (err) {
    throw new ConfigError(`Cannot use the v86 accelerator: the npm package v86@${V86_PINNED_VERSION} is not installed (run npm install)`, { cause: err });
  }
  const release = version.split('+')[0];
  if (release !== V86_PINNED_VERSION) {
    throw new ConfigError(`Cannot use the v86 accelerator: v86 ${version} is installed, Ferry is pinned to ${V86_PINNED_VERSION} (run npm ci)`);
  }
  return release;
}

function readImage(path: string, what: string): ArrayBuffer {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new ConfigError(
      `Cannot start the v86 guest: ${what} ${path} is missing (${errorMessage(err)}); run \`sudo sh scripts/setup-linux-guest.sh\` to build the Linux guest under .cache/linux-guest/`,
      { cause: err },
    );
  }
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}

// ---- the parts of v86 Ferry touches, typed here (v86.d.ts covers only the public API) ----

/** A WebAssembly.Memory (the lib settings here do not include the WebAssembly types). */
export interface WasmMemory {
  readonly buffer: ArrayBuffer;
}

interface V86Cpu {
  readonly wasm_memory: WasmMemory;
  readonly mem8: { readonly byteOffset: number; readonly length: number };
  readonly memory_size: Uint32Array;
  main_loop: () => number;
  pack_memory?: () => { packed_memory: Uint8Array; bitmap: { get_buffer(): ArrayBuffer } };
  unpack_memory?: (bitmap: unknown, packed: Uint8Array) => void;
  readonly devices: { readonly pit?: { readonly counter_start_time: Float64Array } };
}

interface V86Core {
  readonly cpu: V86Cpu;
  readonly running: boolean;
  readonly stopping: boolean;
  run(): void;
  stop(): void;
  next_tick(t: number): void;
  save_state(): ArrayBuffer;
  restore_state(state: ArrayBuffer): void;
}

interface V86Emulator {
  readonly v86: V86Core;
  add_listener(event: string, listener: (value: never) => void): void;
  remove_listener(event: string, listener: (value: never) => void): void;
  serial_send_bytes(port: number, bytes: Uint8Array): void;
  is_running(): boolean;
  destroy(): Promise<void>;
}

type V86Constructor = new (options: Record<string, unknown>) => V86Emulator;

/**
 * Guest RAM inside v86's wasm memory; the view is re-created if the memory grew, which
 * detaches every view made before (v86's JIT grows it at run time: seen during boot).
 */
export class V86RamBlock implements GuestMemoryBlock {
  readonly idstr = RAM_IDSTR;
  readonly guestAddress = 0;
  readonly size: number;
  readonly #memory: WasmMemory;
  readonly #offset: number;
  #view: Uint8Array;

  constructor(memory: WasmMemory, offset: number, size: number) {
    this.#memory = memory;
    this.#offset = offset;
    this.size = size;
    this.#view = new Uint8Array(memory.buffer, offset, size);
  }

  /** Callers must fetch this again after every await: the previous view may be detached. */
  get bytes(): Uint8Array {
    const buffer = this.#memory.buffer;
    if (this.#view.buffer !== buffer) this.#view = new Uint8Array(buffer, this.#offset, this.size);
    return this.#view;
  }

  /**
   * Which pages of the wasm memory the host ever backed (in memory or swap: page-residency.ts): the rest read as zero,
   * so a source sends them as ZERO without reading them and a destination skips them —
   * reading a never-touched page faults it in, which costs more than sending it.
   */
  residency(): Uint8Array {
    return residencyOf(this.bytes);
  }

  /** Back a range in one call before the destination writes pages there. */
  populate(offset: number, length: number): void {
    if (this.#populateWorks) this.#populateWorks = populateOf(this.bytes, offset, length);
  }

  #populateWorks = true;
}

export interface V86AcceleratorOptions {
  /** Guest files; by default those under .cache/linux-guest/ (see linuxGuestDir). */
  readonly files?: Partial<V86GuestFiles>;
}

export class V86Accelerator implements Accelerator {
  readonly kind = 'v86' as const;
  readonly memory: readonly GuestMemoryBlock[];
  readonly dirtyLog: ShadowDirtyLog;
  readonly stateSections: readonly StateSection[];
  readonly #emulator: V86Emulator;
  readonly #core: V86Core;
  readonly #release: string;
  readonly #exitListeners: ((exit: GuestExit) => void)[] = [];
  #sink: ConsoleSink | undefined;
  #early: number[] = [];
  #pendingOut: number[] = [];
  #flushQueued = false;
  #destroyed = false;
  readonly #onSerialByte: (byte: number) => void;

  /** Use createV86Accelerator(). */
  constructor(emulator: V86Emulator, release: string) {
    this.#emulator = emulator;
    this.#core = emulator.v86;
    this.#release = release;
    const cpu = this.#core.cpu;
    const ram = new V86RamBlock(cpu.wasm_memory, cpu.mem8.byteOffset, cpu.memory_size[0]!);
    this.memory = [ram];
    this.dirtyLog = new ShadowDirtyLog(() => ram.bytes, undefined, () => ram.residency());
    this.stateSections = [{
      idstr: V86_STATE_IDSTR,
      instanceId: 0,
      description: V86_STATE_DESCRIPTION,
      save: () => this.#saveState(),
      load: (state) => this.#loadState(state),
      check: (state) => {
        this.#checkState(state);
      },
    }];
    this.#installBursts();
    this.#onSerialByte = (byte: number) => this.#serialOut(byte);
    emulator.add_listener('serial0-output-byte', this.#onSerialByte as (value: never) => void);
  }

  get running(): boolean {
    return !this.#destroyed && this.#emulator.is_running();
  }

  resume(): void {
    if (this.#destroyed) throw new FerryError('FERRY_ERR_CONFIG', 'Cannot resume the v86 guest: the accelerator was destroyed');
    this.#core.run();
  }

  async pause(): Promise<void> {
    if (!this.running) return;
    await new Promise<void>((done) => {
      const stopped = (): void => {
        this.#emulator.remove_listener('emulator-stopped', stopped as (value: never) => void);
        done();
      };
      this.#emulator.add_listener('emulator-stopped', stopped as (value: never) => void);
      this.#core.stop();
      // v86 notices `stopping` at its next tick, which a halted guest may have put up to
      // ~100 ms away; a fresh tick now makes pause take one slice at most.
      this.#core.next_tick(0);
    });
  }

  onExit(listener: (exit: GuestExit) => void): void {
    // v86 resets the CPU itself on a triple fault and has no power-off signal without
    // ACPI, so the guest never stops on its own; listeners are kept for the interface.
    this.#exitListeners.push(listener);
  }

  connectConsole(sink: ConsoleSink): { input(bytes: Uint8Array): void } {
    this.#sink = sink;
    if (this.#early.length > 0) {
      sink.write(Uint8Array.from(this.#early));
      this.#early = [];
    }
    return {
      input: (bytes: Uint8Array) => {
        if (!this.#destroyed) this.#emulator.serial_send_bytes(0, bytes);
      },
    };
  }

  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.dirtyLog.stop();
    this.#emulator.remove_listener('serial0-output-byte', this.#onSerialByte as (value: never) => void);
    await this.#emulator.destroy();
    this.#destroyed = true;
    this.#sink = undefined;
  }

  // v86 reports serial output one byte per event, from inside a slice; they are batched
  // into one write per slice (a microtask runs once the slice's macrotask is over).
  #serialOut(byte: number): void {
    if (this.#sink === undefined) {
      if (this.#early.length < EARLY_CONSOLE_BYTES) this.#early.push(byte);
      return;
    }
    this.#pendingOut.push(byte);
    if (!this.#flushQueued) {
      this.#flushQueued = true;
      queueMicrotask(() => {
        this.#flushQueued = false;
        const bytes = Uint8Array.from(this.#pendingOut);
        this.#pendingOut = [];
        this.#sink?.write(bytes);
      });
    }
  }

  /**
   * Wrap v86's slice (cpu.main_loop, called by its scheduler) so that, while the dirty
   * log is on, guest code runs in bursts and every burst ends with a comparison. The
   * returned delay makes a halted guest wait a multiple of the comparison's cost, so a
   * guest that halts between timer ticks cannot turn the comparisons into a busy loop.
   * The price: guest code runs at roughly 65–75% speed while a migration is under way.
   */
  #installBursts(): void {
    const cpu = this.#core.cpu;
    const slice = cpu.main_loop;
    const core = this.#core;
    const log = this.dirtyLog;
    const run = (): number => {
      if (!log.active) return slice();
      const burstMs = Math.min(BURST_MAX_MS, Math.max(BURST_MIN_MS, BURST_RATIO * log.stats.lastCollectMs));
      const start = performance.now();
      let next = slice();
      while (next < 1 && !core.stopping && performance.now() - start < burstMs) next = slice();
      log.collect();
      return next < 1 ? next : Math.max(next, IDLE_WAIT_RATIO * log.stats.lastCollectMs);
    };
    cpu.main_loop = () => {
      if (this.#throttle === 0) return run();
      // auto-converge (QEMU's cpu-throttle.c): after each 10 ms of guest code, the next
      // slice waits out the throttled share; v86's scheduler sleeps for what we return.
      const start = performance.now();
      const next = run();
      this.#throttleRanMs += performance.now() - start;
      if (this.#throttleRanMs < THROTTLE_TIMESLICE_MS) return next;
      this.#throttleRanMs = 0;
      return Math.max(next, throttleSleepMs(this.#throttle));
    };
  }

  /** auto-converge's throttle in percent, and the guest time run in the current timeslice. */
  #throttle = 0;
  #throttleRanMs = 0;

  setThrottle(percent: number): void {
    checkThrottlePercent(percent, 'the v86 guest');
    this.#throttle = percent;
    this.#throttleRanMs = 0;
  }

  #saveState(): VmStateValue {
    const cpu = this.#core.cpu;
    // Own property on the CPU object shadows the prototype's method for this one call.
    cpu.pack_memory = () => ({ packed_memory: new Uint8Array(0), bitmap: { get_buffer: () => new ArrayBuffer(0) } });
    let file: Uint8Array;
    try {
      file = new Uint8Array(this.#core.save_state());
    } finally {
      delete cpu.pack_memory;
    }
    const release = new Uint8Array(16);
    release.set(new TextEncoder().encode(this.#release).subarray(0, 16));
    return {
      state_version: V86_STATE_VERSION,
      v86_release: release,
      memory_size: this.memory[0]!.size,
      time_origin_us: BigInt(Math.round(performance.timeOrigin * 1000)),
      state_length: file.byteLength,
      state: file,
    };
  }

  #loadState(value: VmStateValue): void {
    if (this.running) throw new VmStateError('Cannot load the v86 state while the guest runs');
    const { state, timeOrigin } = this.#checkState(value);
    const cpu = this.#core.cpu;
    // RAM is already in place: the no-op keeps set_state from zeroing and unpacking it.
    cpu.unpack_memory = () => {};
    try {
      this.#core.restore_state(state.slice().buffer);
    } catch (err) {
      throw new VmStateError(`Cannot load the v86 state (${state.byteLength} bytes): v86 refused it: ${errorMessage(err)}`, { cause: err });
    } finally {
      delete cpu.unpack_memory;
    }
    // v86's timers hold performance.now() readings, which count from each process's
    // start: move them onto this process's clock (a no-op within one process).
    const shift = Number(timeOrigin) / 1000 - performance.timeOrigin;
    const pit = cpu.devices.pit;
    if (pit !== undefined && shift !== 0) {
      for (let i = 0; i < pit.counter_start_time.length; i++) pit.counter_start_time[i] = pit.counter_start_time[i]! + shift;
    }
  }

  /** What #loadState refuses before it hands the state to v86, without changing anything. */
  #checkState(value: VmStateValue): { state: Uint8Array; timeOrigin: bigint } {
    const state = value['state'];
    const release = value['v86_release'];
    const memorySize = value['memory_size'];
    const timeOrigin = value['time_origin_us'];
    if (!(state instanceof Uint8Array) || !(release instanceof Uint8Array) || typeof memorySize !== 'number' || typeof timeOrigin !== 'bigint') {
      throw new VmStateError('Cannot load the v86 state: the section lacks state, v86_release, memory_size or time_origin_us');
    }
    const sentRelease = new TextDecoder().decode(release).replace(/\0+$/, '');
    if (sentRelease !== this.#release) {
      throw new VmStateError(`Cannot load the v86 state: it comes from v86 ${sentRelease}, this is v86 ${this.#release}`);
    }
    if (value['state_version'] !== V86_STATE_VERSION) {
      throw new VmStateError(`Cannot load the v86 state: state version ${String(value['state_version'])}, this v86 reads ${V86_STATE_VERSION}`);
    }
    const localSize = this.memory[0]!.size;
    const summary = readV86StateSummary(state);
    if (memorySize !== localSize || summary.memorySize !== localSize) {
      throw new VmStateError(`Cannot load the v86 state: guest RAM is ${summary.memorySize} bytes at the source, ${localSize} here (start the destination with the same memory size)`);
    }
    if (summary.memoryBytes !== 0) {
      throw new VmStateError(`Cannot load the v86 state: it carries ${summary.memoryBytes} bytes of guest RAM; Ferry's sections must not (RAM travels in the "ram" section)`);
    }
    return { state, timeOrigin };
  }
}

/**
 * Create the v86 accelerator. A source boots config.kernel/initrd (default: the guest
 * built by scripts/setup-linux-guest.sh) with config.append (default "console=ttyS0")
 * and waits, paused, for resume(); a destination (config.incoming) boots nothing and waits
 * for RAM and the state section.
 */
export async function createV86Accelerator(config: AcceleratorConfig, options: V86AcceleratorOptions = {}): Promise<Accelerator> {
  return createV86AcceleratorInstance(config, options);
}

/** As createV86Accelerator, typed as the class (tests and benchmarks use its dirty-log statistics). */
export async function createV86AcceleratorInstance(config: AcceleratorConfig, options: V86AcceleratorOptions = {}): Promise<V86Accelerator> {
  const release = checkV86Version();
  if (config.vcpus !== 1) throw new ConfigError(`Cannot start the v86 guest with ${config.vcpus} vCPUs: v86 emulates one`);
  const size = config.memorySize;
  if (!Number.isInteger(size) || size <= 0 || size % V86_RAM_GRANULE !== 0 || size > V86_RAM_MAX) {
    throw new ConfigError(`Cannot give the v86 guest ${size} bytes of RAM: use a multiple of 128 KiB up to ${V86_RAM_MAX} bytes`);
  }
  if (size % PAGE_SIZE !== 0) throw new ConfigError(`v86 guest RAM of ${size} bytes is not a whole number of pages`);
  const defaults = defaultGuestFiles();
  const files: V86GuestFiles = { ...defaults, ...options.files };
  const kernel = config.kernel ?? files.kernel;
  const initrd = config.initrd ?? files.initrd;
  const v86Options: Record<string, unknown> = {
    wasm_path: require.resolve('v86/build/v86.wasm'),
    memory_size: size,
    vga_memory_size: VGA_MEMORY_BYTES,
    bios: { buffer: readImage(files.bios, 'the BIOS') },
    vga_bios: { buffer: readImage(files.vgaBios, 'the VGA BIOS') },
    autostart: false,
    disable_keyboard: true,
    disable_mouse: true,
    disable_speaker: true,
  };
  if (!config.incoming) {
    v86Options['bzimage'] = { buffer: readImage(kernel, 'the kernel') };
    v86Options['initrd'] = { buffer: readImage(initrd, 'the initrd') };
    v86Options['cmdline'] = config.append ?? 'console=ttyS0';
  }
  const { V86 } = (await import('v86')) as unknown as { V86: V86Constructor };
  const emulator = new V86(v86Options);
  await new Promise<void>((done) => {
    const loaded = (): void => {
      emulator.remove_listener('emulator-loaded', loaded as (value: never) => void);
      done();
    };
    emulator.add_listener('emulator-loaded', loaded as (value: never) => void);
  });
  const actual = emulator.v86.cpu.memory_size[0];
  if (actual !== size) {
    await emulator.destroy();
    throw new ConfigError(`Cannot start the v86 guest: asked for ${size} bytes of RAM, v86 made ${String(actual)} (it needs at least 64 MiB with an initrd)`);
  }
  const accelerator = new V86Accelerator(emulator, release);
  if (config.memPrealloc) prefault(accelerator.memory[0]!.bytes);
  return accelerator;
}

/**
 * --mem-prealloc for memory v86 allocated inside WebAssembly, which Ferry cannot madvise:
 * write each page's first byte back to itself, so the host backs every page now.
 */
function prefault(bytes: Uint8Array): void {
  for (let at = 0; at < bytes.length; at += PAGE_SIZE) bytes[at] = bytes[at]!;
}
