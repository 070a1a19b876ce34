// What the migration engine needs from a Machine (and nothing more): its RAM, its dirty
// log, its state sections and its run state. src/machine/machine.ts implements it as is;
// tests fake it.

import type { DirtyLog, GuestMemoryBlock, StateSection } from '../hypervisor/types.js';
import type { RunState } from '../machine/run-state.js';

export interface MigrationVm {
  /** Guest RAM, in the order the stream's MEM_SIZE list and the dirty bitmaps use. */
  readonly memory: readonly GuestMemoryBlock[];
  readonly dirtyLog: DirtyLog;
  /** CPU state per vCPU and device state, saved in FULL sections at switchover. */
  readonly stateSections: readonly StateSection[];
  /** QEMU's machine type name ("pc-i440fx-7.2"), sent in the CONFIGURATION record and checked by the destination. */
  readonly machineType: string;
  readonly runState: RunState;
  /** Record a run state without starting or stopping anything ("postmigrate", "paused"). */
  setRunState(state: RunState): void;
  /**
   * Source switchover: stop every vCPU (if any runs) and enter "finish-migrate"; resolves
   * once no guest code runs, with whether the guest was running before (QEMU's vm_was_running).
   */
  pauseForMigration(): Promise<boolean>;
  /** A failed or cancelled switchover: run again if it ran before, else "paused". */
  resumeAfterMigration(wasRunning: boolean): void;
  /** Destination, everything loaded: run if autostart (no -S, no `stop` meanwhile), else "paused". */
  startAfterIncoming(): void;
  /**
   * The `auto-converge` capability's throttle (QEMU's cpu_throttle_set): every vCPU runs a
   * 10 ms timeslice, then sleeps percent / (100 − percent) of it; 0 runs them freely again.
   * Absent where the accelerator cannot throttle; the capability is then refused.
   */
  readonly setThrottle?: ((percent: number) => void) | undefined;
  /**
   * The host thread of each vCPU (by index, 0 for one not started), where the accelerator
   * runs them on threads of this process: post-copy's blocktime attributes faults by them.
   */
  readonly vcpuThreadIds?: (() => readonly number[]) | undefined;
  /**
   * The guest's RAM here is no longer whole (release-ram gave it back to the host in
   * post-copy): `cont` must refuse to run it, saying `why`.
   */
  readonly ramReleased?: ((why: string) => void) | undefined;
}
