// The narrow interfaces every accelerator (kvm, sim, later v86) implements, so the
// Machine and the migration engine never know which one runs the guest.

import type { VmStateDescription, VmStateValue } from '../migration/vmstate-types.js';
import type { GuestSpec } from '../guests/spec.js';

export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;

export type AccelKind = 'kvm' | 'sim' | 'v86';

/** One block of guest RAM, named as QEMU names it ("pc.ram"). */
export interface GuestMemoryBlock {
  readonly idstr: string;
  /** Guest-physical address of the first byte. */
  readonly guestAddress: number;
  /** Length in bytes, a multiple of PAGE_SIZE. */
  readonly size: number;
  /** The host's view of the same memory, without a copy: writes are the guest's writes. */
  readonly bytes: Uint8Array;
  /**
   * Optional: where `bytes` starts in this process's address space, when that never
   * changes while the VM lives (a host mapping, not WebAssembly memory that may move).
   * The migration then lets the kernel read pages from there (vectored writes).
   */
  readonly hostAddress?: number;
  /**
   * Optional: one byte per page, bit 0 set where the host has ever backed the page (it is
   * in memory or in swap). A page without it has never been touched and reads as zero —
   * the RAM handler sends it as a ZERO page without reading it (a read would fault it in).
   */
  residency?(): Uint8Array;
  /** Optional: back [offset, offset + length) with host memory now, in bulk (a destination about to write there). */
  populate?(offset: number, length: number): void;
  /** Optional: populate() on another thread; the caller goes on at once (and may write the range meanwhile). */
  populateInBackground?(offset: number, length: number): Promise<void>;
  /**
   * Optional, for an incoming VM: true the first time it is asked if the block has held
   * only zeros since it was allocated (nothing was loaded into it), false after that. A
   * destination then knows every page is zero without reading it, even where the memory
   * is backed already (--mem-prealloc), and skips the ZERO pages of the stream.
   */
  takeFreshZero?(): boolean;
  /**
   * Optional: give [offset, offset + length) (whole pages) back to the host (MADV_DONTNEED);
   * it reads as zero afterwards. The `release-ram` capability frees what post-copy sent.
   */
  discard?(offset: number, length: number): void;
  /**
   * Optional: the file that backs the block (memory-backend-file). Its pages are not known
   * to be zero where the host holds none, and cannot be dropped to zero: such a block has
   * no residency() and no discard(). `shared` (share=on): another process may map the same
   * memory — the x-ignore-shared capability then leaves the block out of the stream.
   */
  readonly file?: MemoryFile;
}

/** A file that backs guest RAM, as a memory-backend-file maps it. */
export interface MemoryFile {
  readonly path: string;
  /** share=on: mapped MAP_SHARED. */
  readonly shared: boolean;
}

/** QEMU's -machine memory-backend=ID: the memory backend object guest RAM is taken from. */
export interface MemoryBackendConfig {
  /** The backend's id: the RAM block's name, as QEMU names a machine's RAM after its backend. */
  readonly id: string;
  /** memory-backend-file's mem-path (a file, or a directory for a file of this process's own); absent for memory-backend-ram. */
  readonly path?: string;
  /** share=on: mapped MAP_SHARED. */
  readonly share: boolean;
}

/** One bit per page, bit (i & 31) of word (i >> 5) for page i of the block. */
export type DirtyBitmap = Uint32Array;

export interface DirtyLog {
  /**
   * Begin logging writes to every block — or, with `blocks`, to those marked true (an
   * accelerator may log the others too: only a hint that they are not wanted, as QEMU
   * leaves x-ignore-shared's blocks unlogged); what was logged before is forgotten.
   */
  start(blocks?: readonly boolean[]): void;
  /** Pages written since start() or the previous sync(), one bitmap per block (in `memory` order); resets the log. */
  sync(): DirtyBitmap[];
  stop(): void;
  readonly active: boolean;
}

/** The guest's port and MMIO accesses, served by the Machine's devices on the main thread. */
export interface IoBus {
  pioRead(port: number, size: 1 | 2 | 4): number;
  pioWrite(port: number, size: 1 | 2 | 4, value: number): void;
  mmioRead(address: number, size: 1 | 2 | 4 | 8): number;
  mmioWrite(address: number, size: 1 | 2 | 4 | 8, value: number): void;
}

/** A piece of state saved at switchover through a state description (CPU, irqchip, a device). */
export interface StateSection {
  /** The section name in the stream ("cpu", "serial", "kvm-irqchip"). */
  readonly idstr: string;
  readonly instanceId: number;
  readonly description: VmStateDescription;
  /** Capture the state; only called while the guest is paused. Cannot fail. */
  save(): VmStateValue;
  /** Install loaded state; only called while the guest is not running. Throws VmStateError on a value it refuses. */
  load(state: VmStateValue): void;
  /**
   * Throw the VmStateError load() would for this value, changing nothing: a destination
   * calls it as each section arrives, so that a refused value fails the stream before any
   * state is installed. Optional: a section without it is checked only by load().
   */
  check?(state: VmStateValue): void;
}

/** How the guest stopped on its own. */
export type GuestExit =
  | { readonly kind: 'shutdown'; readonly reason: string }
  | { readonly kind: 'crash'; readonly error: Error };

export interface AcceleratorConfig {
  /** Guest RAM in bytes, a multiple of PAGE_SIZE. */
  readonly memorySize: number;
  readonly vcpus: number;
  readonly guest: GuestSpec;
  readonly ioBus: IoBus;
  /**
   * Set for a destination: memory and CPU state will arrive in a migration stream,
   * so the guest image is not loaded and the vCPUs are not initialised for boot.
   */
  readonly incoming: boolean;
  /** QEMU's -mem-prealloc: back all guest RAM with host memory before the guest (or a migration) starts. */
  readonly memPrealloc?: boolean;
  /** Guest RAM from a memory backend (-machine memory-backend=ID); anonymous memory named pc.ram when absent. */
  readonly memoryBackend?: MemoryBackendConfig;
  /** A Linux kernel, initrd and command line (accelerators that boot an OS: v86). */
  readonly kernel?: string;
  readonly initrd?: string;
  readonly append?: string;
}

/** Where an accelerator-emulated UART sends its output. */
export interface ConsoleSink {
  write(bytes: Uint8Array): void;
}

export interface Accelerator {
  readonly kind: AccelKind;
  readonly memory: readonly GuestMemoryBlock[];
  readonly dirtyLog: DirtyLog;
  /** CPU state per vCPU and any device state the accelerator itself holds. */
  readonly stateSections: readonly StateSection[];
  /** True while guest code runs (or the sim workload writes). */
  readonly running: boolean;
  /** Start or continue running the guest. */
  resume(): void;
  /** Stop every vCPU; resolves once no guest code runs (within ~10 ms). */
  pause(): Promise<void>;
  /** Called when the guest stops on its own (shutdown, triple fault, entry failure). */
  onExit(listener: (exit: GuestExit) => void): void;
  /**
   * Throttle every vCPU (migration's auto-converge, QEMU's cpu_throttle_set): run a 10 ms
   * timeslice, then sleep percent / (100 − percent) of it; 0 stops throttling. Holds across
   * pause and resume until changed.
   */
  setThrottle?(percent: number): void;
  /**
   * The host thread that runs each vCPU (by vCPU index; 0 for one not started), where guest
   * code runs on threads of this process: a post-copy destination tells by them which
   * vCPU a page fault stopped (postcopy-blocktime). The sim accelerator's workload thread
   * stands for vCPU 0.
   */
  vcpuThreadIds?(): readonly number[];
  /**
   * Present on accelerators that emulate their own serial port (v86): the Machine then
   * connects its console backend here instead of its own 16550A. Returns the input side.
   */
  connectConsole?(sink: ConsoleSink): { input(bytes: Uint8Array): void };
  /** Release vCPUs, memory and file descriptors. */
  destroy(): Promise<void>;
}
