// A stand-in Machine for migration tests (this folder's, test/, and the QMP layer's): a
// RAM block in a plain Uint8Array, a dirty log that records writes made through it, a
// "workload" timer that keeps dirtying pages, and two small state sections.

import { PAGE_SIZE } from '../hypervisor/types.js';
import type { DirtyBitmap, DirtyLog, GuestMemoryBlock, StateSection } from '../hypervisor/types.js';
import { canTransition } from '../machine/run-state.js';
import type { RunState } from '../machine/run-state.js';
import type { VmStateDescription, VmStateValue } from './vmstate-types.js';
import type { MigrationVm } from './vm.js';

export class FakeDirtyLog implements DirtyLog {
  #active = false;
  readonly #bitmaps: Uint32Array[];
  /** Called at the start of every sync: a guest that writes between any two syncs. */
  beforeSync: (() => void) | undefined;

  constructor(blocks: readonly GuestMemoryBlock[]) {
    this.#bitmaps = blocks.map((b) => new Uint32Array(Math.ceil((b.size / PAGE_SIZE) / 32)));
  }

  get active(): boolean {
    return this.#active;
  }

  /** The blocks the last start() asked to log (undefined: all), for tests. */
  startedFor: readonly boolean[] | undefined;

  start(blocks?: readonly boolean[]): void {
    for (const b of this.#bitmaps) b.fill(0);
    this.startedFor = blocks;
    this.#active = true;
  }

  stop(): void {
    this.#active = false;
  }

  sync(): DirtyBitmap[] {
    this.beforeSync?.();
    return this.#bitmaps.map((b) => {
      const copy = b.slice();
      b.fill(0);
      return copy;
    });
  }

  mark(block: number, page: number): void {
    if (!this.#active) return;
    const bitmap = this.#bitmaps[block]!;
    bitmap[page >>> 5] = (bitmap[page >>> 5]! | (1 << (page & 31))) >>> 0;
  }
}

export const FAKE_CPU_DESCRIPTION: VmStateDescription = {
  name: 'fake-cpu',
  version: 2,
  minimumVersion: 1,
  fields: [
    { name: 'rip', type: 'uint64' },
    { name: 'flags', type: 'uint32' },
    { name: 'regs', type: 'buffer', size: 16 },
    { name: 'halted', type: 'bool', sinceVersion: 2 },
  ],
};

export const FAKE_SERIAL_DESCRIPTION: VmStateDescription = {
  name: 'fake-serial',
  version: 1,
  minimumVersion: 1,
  fields: [
    { name: 'ier', type: 'uint8' },
    { name: 'lcr', type: 'uint8' },
    { name: 'divider', type: 'uint16' },
  ],
};

/** A state section holding a plain value; counts loads so tests can tell whether state was installed. */
export class FakeSection implements StateSection {
  loads = 0;
  constructor(
    readonly idstr: string,
    readonly instanceId: number,
    readonly description: VmStateDescription,
    public state: VmStateValue,
  ) {}

  save(): VmStateValue {
    return this.state;
  }

  load(state: VmStateValue): void {
    this.loads++;
    this.state = state;
  }
}

export interface FakeVmOptions {
  readonly memorySize: number;
  readonly incoming?: boolean;
  /** -S: a destination stays paused after loading. */
  readonly startPaused?: boolean;
  readonly machineType?: string;
  /**
   * Touch every page up front (default true). On this kind of VM the first read of a
   * fresh anonymous page costs ~6 µs (a fault), which would dwarf what tests measure.
   */
  readonly prefault?: boolean;
  /** More RAM blocks after "pc.ram" (e.g. "vga.vram"), each its own dirty bitmap. */
  readonly extraBlocks?: readonly { readonly idstr: string; readonly size: number }[];
  /** Whether the VM can be throttled (auto-converge); default true. */
  readonly throttle?: boolean;
  /**
   * pc.ram is this memory, a file mapped share=on (memory-backend-file): give two VMs the
   * same `bytes` and they map the same RAM, as two processes mapping one file do. At
   * `guestAddress` (0 unless given).
   */
  readonly sharedRam?: { readonly bytes: Uint8Array; readonly guestAddress?: number };
}

export class FakeVm implements MigrationVm {
  readonly memory: GuestMemoryBlock[];
  readonly dirtyLog: FakeDirtyLog;
  readonly stateSections: FakeSection[];
  readonly machineType: string;
  readonly cpu: FakeSection;
  readonly serial: FakeSection;
  autostart: boolean;
  /** Every run-state change, in order (tests check the guest was never started). */
  readonly runStates: RunState[] = [];
  #runState: RunState;
  #workload: ReturnType<typeof setInterval> | undefined;
  /** auto-converge's throttle in force, and every value it was set to, in order. */
  throttle = 0;
  readonly throttleHistory: number[] = [];
  readonly setThrottle: ((percent: number) => void) | undefined;
  #workloadCursor = 0;
  #throttleCredit = 0;
  #counter = 0;

  constructor(options: FakeVmOptions) {
    this.setThrottle = options.throttle === false ? undefined : (percent) => {
      this.throttle = percent;
      this.throttleHistory.push(percent);
    };
    const blocks = [{ idstr: 'pc.ram', size: options.memorySize }, ...(options.extraBlocks ?? [])];
    let guestAddress = 0;
    const shared = options.sharedRam;
    if (shared !== undefined && shared.bytes.byteLength !== options.memorySize) throw new RangeError('sharedRam must be memorySize bytes');
    this.memory = blocks.map(({ idstr, size }, i) => {
      if (i === 0 && shared !== undefined) {
        guestAddress += size;
        return { idstr, guestAddress: shared.guestAddress ?? 0, size, bytes: shared.bytes, file: { path: '/fake/shared-ram', shared: true } };
      }
      const bytes = new Uint8Array(size);
      if (options.prefault ?? true) bytes.fill(0);
      const block = { idstr, guestAddress, size, bytes };
      guestAddress += size;
      return block;
    });
    this.dirtyLog = new FakeDirtyLog(this.memory);
    this.machineType = options.machineType ?? 'pc-i440fx-7.2';
    this.cpu = new FakeSection('fake-cpu', 0, FAKE_CPU_DESCRIPTION, {
      rip: 0n, flags: 0, regs: new Uint8Array(16), halted: false,
    });
    this.serial = new FakeSection('fake-serial', 0, FAKE_SERIAL_DESCRIPTION, { ier: 0, lcr: 0, divider: 0 });
    this.stateSections = [this.cpu, this.serial];
    this.#runState = options.incoming ? 'inmigrate' : options.startPaused ? 'paused' : 'running';
    this.autostart = !options.startPaused;
  }

  get ram(): Uint8Array {
    return this.memory[0]!.bytes;
  }

  get runState(): RunState {
    return this.#runState;
  }

  setRunState(state: RunState): void {
    if (!canTransition(this.#runState, state)) throw new Error(`Fake VM: cannot change run state from ${this.#runState} to ${state}`);
    this.#runState = state;
    this.runStates.push(state);
  }

  /** A guest write: changes RAM and marks the page dirty, as a vCPU's write would. */
  write(offset: number, value: number): void {
    this.ram[offset] = value;
    this.dirtyLog.mark(0, offset / PAGE_SIZE);
  }

  /** Fill `pages` pages from `firstPage` with non-zero bytes derived from the page number. */
  fillPages(firstPage: number, pages: number, seed = 1): void {
    for (let p = firstPage; p < firstPage + pages; p++) {
      const base = p * PAGE_SIZE;
      for (let i = 0; i < PAGE_SIZE; i += 64) this.ram[base + i] = ((p * 31 + i + seed) & 0xff) | 1;
      this.dirtyLog.mark(0, p);
    }
  }

  /**
   * Dirty `pagesPerTick` pages every `intervalMs` while running, sweeping RAM as the
   * built-in sweep guest does (a counter byte per page).
   */
  startWorkload(pagesPerTick: number, intervalMs = 1): void {
    this.stopWorkload();
    const pages = this.memory[0]!.size / PAGE_SIZE;
    this.#workload = setInterval(() => {
      if (this.#runState !== 'running') return;
      // A throttled guest gets that much less done (its vCPU sleeps that share of the time).
      this.#throttleCredit += (pagesPerTick * (100 - this.throttle)) / 100;
      const count = Math.floor(this.#throttleCredit);
      this.#throttleCredit -= count;
      for (let i = 0; i < count; i++) {
        this.#counter = (this.#counter + 1) & 0xff || 1;
        this.write(this.#workloadCursor * PAGE_SIZE + 8, this.#counter);
        this.#workloadCursor = (this.#workloadCursor + 1) % pages;
      }
    }, intervalMs);
  }

  /**
   * A guest that never lets the dirty log come back empty: `pages` more pages are
   * written just before every sync while it runs (a timer alone can miss a sync),
   * sweeping the first `workingSetPages` pages (all of RAM by default).
   */
  startSyncWorkload(pages: number, workingSetPages?: number): void {
    const total = Math.min(workingSetPages ?? Infinity, this.memory[0]!.size / PAGE_SIZE);
    this.dirtyLog.beforeSync = () => {
      if (this.#runState !== 'running') return;
      for (let i = 0; i < pages; i++) {
        this.#counter = (this.#counter + 1) & 0xff || 1;
        this.write(this.#workloadCursor * PAGE_SIZE + 8, this.#counter);
        this.#workloadCursor = (this.#workloadCursor + 1) % total;
      }
    };
  }

  stopWorkload(): void {
    if (this.#workload !== undefined) clearInterval(this.#workload);
    this.#workload = undefined;
    this.dirtyLog.beforeSync = undefined;
  }

  async pauseForMigration(): Promise<boolean> {
    const wasRunning = this.#runState === 'running';
    this.setRunState('finish-migrate');
    return wasRunning;
  }

  resumeAfterMigration(wasRunning: boolean): void {
    this.setRunState(wasRunning ? 'running' : 'paused');
  }

  startAfterIncoming(): void {
    this.setRunState(this.autostart ? 'running' : 'paused');
  }

  /** QMP stop/cont as the Machine does them. */
  stop(): void {
    if (this.#runState === 'running') this.setRunState('paused');
  }

  cont(): void {
    if (this.#runState === 'paused') this.setRunState('running');
  }
}
