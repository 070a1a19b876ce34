// Warming the migration code up ahead of a migration. V8 runs new code in its interpreter
// and compiles what gets hot on helper threads; a migration that starts cold spends its
// first ~100 ms at a fraction of its speed and pays for the compiler (a few hundred ms of
// CPU on each side) while it runs — on a busy host, the very CPU it needs. So a VM, once
// started, moves a few MiB of scratch memory from itself to itself: a real outgoing and a
// real incoming migration over loopback tcp, through the same classes a real migration
// uses (the engine, the stream, the socket channels, HostMemory's blocks), never touching
// the guest. The optimised code is then there when `migrate` or `migrate-incoming` comes.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { DirtyBitmap, DirtyLog, GuestMemoryBlock, StateSection } from '../hypervisor/types.js';
import type { RunState } from '../machine/run-state.js';
import { Migration, type MigrationOptions } from '../migration/migration.js';
import { vmstateSample, vmstateWarmUp } from '../migration/vmstate.js';
import type { MigrationVm } from '../migration/vm.js';
import { HostMemory } from '../sys/host-memory.js';
import { warmUpSplitReads } from '../stream/reader.js';
import { connect, listen } from '../transport/index.js';
import { engineNow, engineSchedule } from './engine-hooks.js';

/** The host's huge page: a stretch of scratch RAM that must stay unbacked is this size and aligned to it. */
const HUGE_PAGE_BYTES = 2 * 1024 * 1024;
/** Scratch RAM per side and round: enough pages for V8 to find the page loops hot. */
const WARM_UP_BYTES = 16 * 1024 * 1024;
/**
 * The scratch migrations, in order: the first makes the code hot, the next ones run what
 * the compiler made of it. Each transport a source writes to by its own path (writev over
 * tcp, vmsplice over unix sockets) goes once with the large buffers a real local migration
 * gets and once with small ones, so that the branches a full socket takes (a batch written
 * in part, a wait for room, a pipe that fills) have run before a real migration reaches
 * them; V8 otherwise throws optimised code away there ("insufficient type feedback") and
 * compiles it again during the migration.
 */
type WarmUpRound = { readonly transport: 'tcp' | 'unix'; readonly socketBufferBytes?: number; readonly multifd?: number };
const WARM_UP_ROUNDS: readonly WarmUpRound[] = [
  { transport: 'tcp' },
  { transport: 'unix', socketBufferBytes: 128 * 1024 },
  { transport: 'tcp', socketBufferBytes: 128 * 1024 },
  { transport: 'unix' },
];
/**
 * The multifd capability's paths (pages in packets on more connections, SYNCs), run once
 * the capability is turned on (`multifd: true`) rather than at every start: they cost as
 * much again (by hand, an idle 64 MiB sim VM: all six rounds ~1.2 s of CPU and 50–57 MB
 * resident for good, against ~0.7 s and 35 MB for the four). Left cold, V8 compiled them
 * during a real multifd migration (--trace-opt), which ran slower meanwhile (a stopped
 * 1 GiB guest over one channel, by hand: 1.9 GB/s, 2.6 warm).
 */
const MULTIFD_WARM_UP_ROUNDS: readonly WarmUpRound[] = [
  { transport: 'tcp', multifd: 2 },
  { transport: 'unix', multifd: 2 },
];
/** Pages a scratch "guest" dirties between two syncs, so that passes after the first run too. */
const DIRTY_PER_SYNC = 64;
/**
 * Pages the sync made once the scratch VM is paused finds dirty: half its RAM, more than
 * the socket takes at once, so that the stop sends as a real one does — waiting on a full
 * socket against its deadline, asking the downtime guard whether to give up. Code that a
 * warm-up never ran has no type feedback, and V8 throws the optimised page loop away the
 * first time a real stop reaches it (then compiles it again for ~70 ms, meanwhile running
 * it unoptimised: in the downtime).
 */
const DIRTY_AT_STOP_FRACTION = 2;

/** A dirty log over scratch memory that reports a few pages written at every sync, and many at the stop. */
class ScratchDirtyLog implements DirtyLog {
  #active = false;
  #cursor = 0;
  readonly #pages: number;
  readonly #paused: () => boolean;

  constructor(pages: number, paused: () => boolean) {
    this.#pages = pages;
    this.#paused = paused;
  }

  get active(): boolean {
    return this.#active;
  }

  start(): void {
    this.#active = true;
  }

  stop(): void {
    this.#active = false;
  }

  sync(): DirtyBitmap[] {
    const bitmap = new Uint32Array(Math.ceil(this.#pages / 32));
    const dirty = this.#paused() ? Math.floor(this.#pages / DIRTY_AT_STOP_FRACTION) : DIRTY_PER_SYNC;
    for (let i = 0; i < dirty; i++) {
      const page = this.#cursor;
      this.#cursor = (this.#cursor + 1) % this.#pages;
      bitmap[page >>> 5] = (bitmap[page >>> 5]! | (1 << (page & 31))) >>> 0;
    }
    return [bitmap];
  }
}

/**
 * A stand-in for one of the machine's own state sections: its description and name, a
 * sample of its shape for state, and a load that installs nothing — the real section's
 * check() runs on what arrives (it changes nothing), and its refusal of a sample is no
 * failure here. Without these the scratch migrations carried RAM alone, and the first
 * real switchover encoded the CPU's state in V8's interpreter, inside the downtime: in an
 * idle sim guest's stop, 0.5–0.7 ms of the ~0.8 ms spent on the device state (the
 * destination decodes and checks it there too).
 */
function standIn(section: StateSection): StateSection | undefined {
  const sample = vmstateSample(section.description);
  if (!vmstateWarmUp(section.description, sample)) return undefined;
  return {
    idstr: section.idstr,
    instanceId: section.instanceId,
    description: section.description,
    save: () => sample,
    load: () => {},
    check: (value) => {
      try {
        section.check?.(value);
      } catch {
        // A sample's zeros may be a value the device refuses: only the path matters here.
      }
    },
  };
}

/** Either end of the scratch migration: scratch RAM, and stand-ins for the machine's state sections. */
class ScratchVm implements MigrationVm {
  readonly memory: GuestMemoryBlock[];
  readonly dirtyLog: ScratchDirtyLog;
  readonly stateSections: readonly StateSection[];
  readonly machineType: string;
  #runState: RunState;

  constructor(block: GuestMemoryBlock, machineType: string, runState: RunState, sections: readonly StateSection[]) {
    this.stateSections = sections;
    this.memory = [block];
    this.dirtyLog = new ScratchDirtyLog(block.size / PAGE_SIZE, () => this.#runState === 'finish-migrate');
    this.machineType = machineType;
    this.#runState = runState;
  }

  get runState(): RunState {
    return this.#runState;
  }

  setRunState(state: RunState): void {
    this.#runState = state;
  }

  async pauseForMigration(): Promise<boolean> {
    const wasRunning = this.#runState === 'running';
    this.#runState = 'finish-migrate';
    return wasRunning;
  }

  resumeAfterMigration(wasRunning: boolean): void {
    this.#runState = wasRunning ? 'running' : 'paused';
  }

  startAfterIncoming(): void {
    this.#runState = 'paused';
  }
}

/**
 * Scratch RAM laid out as guests' RAM tends to be, so that every page path runs: a first
 * huge page never touched (whole bitmap words of pages the host never backed: ZERO runs,
 * as most of an idle guest), one touched but still zero (each read and found zero), then
 * pages with data, among them one in eight zero, and a last half of data only (long runs
 * of pages in order: read straight into RAM). Whole 2 MiB huge pages: the memory is
 * MADV_HUGEPAGE, and one byte written anywhere in a huge page backs all of it — with a
 * first *MiB* left alone, the host reported it backed, the warm-up never sent a ZERO run,
 * and V8 threw the compiled page loop away at a real migration's first one ("Insufficient
 * type feedback", in about one run in five under load).
 */
function scratchContent(bytes: Uint8Array): void {
  const pages = bytes.byteLength / PAGE_SIZE;
  const untouchedEnd = HUGE_PAGE_BYTES / PAGE_SIZE;
  const zeroEnd = 2 * untouchedEnd;
  const denseFrom = pages / 2;
  for (let p = untouchedEnd; p < pages; p++) {
    const base = p * PAGE_SIZE;
    const mixed = p >= zeroEnd && p < denseFrom;
    if (p < zeroEnd || (mixed && p % 8 === 7)) {
      bytes[base] = 0; // touched, still zero: found by reading it
      continue;
    }
    for (let i = 0; i < PAGE_SIZE; i += 256) bytes[base + i] = (p + i) | 1;
  }
}

export interface WarmUpResult {
  /** Scratch migrations completed. */
  readonly rounds: number;
  readonly milliseconds: number;
  /** Stream bytes they moved in all. */
  readonly bytes: number;
}

export interface WarmUpOptions {
  /** Scratch migrations to run (default: every one of the list). */
  readonly rounds?: number;
  /** The multifd capability's rounds instead of the usual ones (MULTIFD_WARM_UP_ROUNDS). */
  readonly multifd?: boolean;
  /** Asked before each round: false ends the warm-up (a real migration has begun). */
  readonly keepGoing?: () => boolean;
  /** The machine's state sections: the scratch VMs carry stand-ins of them (see standIn). */
  readonly sections?: readonly StateSection[];
}

/**
 * Migrate scratch memory from this process to itself, round after round. Never throws: a
 * warm-up that fails (no loopback interface, say) costs the first migration its speed,
 * nothing else; the error is returned for the trace.
 */
export async function warmUpMigration(machineType: string, options: WarmUpOptions = {}): Promise<WarmUpResult | Error> {
  const started = performance.now();
  const list = options.multifd ? MULTIFD_WARM_UP_ROUNDS : WARM_UP_ROUNDS;
  const rounds = options.rounds ?? list.length;
  let done = 0;
  let bytes = 0;
  try {
    const sections = (options.sections ?? []).map(standIn).filter((s): s is StateSection => s !== undefined);
    while (done < rounds && (options.keepGoing?.() ?? true)) {
      bytes += await migrateScratch(machineType, list[done % list.length]!, sections);
      done++;
      // After a round, when V8 keeps feedback for the reader's functions (it starts to only
      // once a function has run a while): values split between two reads, which a round
      // over a socket meets only now and then.
      await warmUpSplitReads();
      // Let the compiler's helper threads finish what this round made hot.
      await nextTurn();
    }
    return { rounds: done, milliseconds: performance.now() - started, bytes };
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}

/** One scratch migration; the bytes it sent. Throws unless it completed with the RAM equal on both ends. */
async function migrateScratch(machineType: string, round: WarmUpRound, sections: readonly StateSection[]): Promise<number> {
  const dir = round.transport === 'unix' ? await mkdtemp(join(tmpdir(), 'ferry-warm-up-')) : undefined;
  const sourceRam = HostMemory.allocate(WARM_UP_BYTES);
  const destinationRam = HostMemory.allocate(WARM_UP_BYTES);
  try {
    scratchContent(sourceRam.bytes);
    const source = new ScratchVm(sourceRam.block('pc.ram'), machineType, 'running', sections);
    const destination = new ScratchVm(destinationRam.block('pc.ram', 0, { freshZero: true }), machineType, 'inmigrate', sections);
    const options = round.socketBufferBytes === undefined ? {} : { socketBufferBytes: round.socketBufferBytes };
    // The options in the order and with the members the VMM gives a real migration
    // (vmm.ts): objects built from them then get the same hidden classes, and code compiled
    // here does not meet a "wrong map" there.
    const migrationOptions = (vm: ScratchVm): MigrationOptions => ({
      vm,
      connect: (uri) => connect(uri, options),
      listen: (uri) => listen(uri, options),
      now: engineNow,
      emit: () => {},
      schedule: engineSchedule,
      trace: () => {},
    });
    const outgoing = new Migration(migrationOptions(source));
    const incoming = new Migration(migrationOptions(destination));
    // Mostly over tcp: tcp's segments end anywhere, so reads end in the middle of chunks as
    // they will in a real migration, and that path gets compiled too.
    if (round.multifd !== undefined) {
      for (const side of [outgoing, incoming]) {
        side.setParameters({ 'multifd-channels': round.multifd });
        side.setCapabilities([{ capability: 'multifd', state: true }]);
      }
    }
    const { address } = await incoming.migrateIncoming(dir === undefined ? 'tcp:127.0.0.1:0' : `unix:${join(dir, 'scratch.sock')}`);
    outgoing.setParameters({ 'max-bandwidth': 0 });
    outgoing.migrate(address);
    await Promise.all([outgoing.whenSettled(), incoming.whenIncomingSettled()]);
    if (outgoing.status !== 'completed' || incoming.incomingStatus !== 'completed') {
      throw new Error(`the scratch migration ended ${outgoing.status} / ${incoming.incomingStatus}: ${outgoing.queryMigrate()['error-desc'] ?? incoming.incomingError ?? ''}`);
    }
    await Promise.all([outgoing.close(), incoming.close()]);
    if (Buffer.compare(sourceRam.bytes, destinationRam.bytes) !== 0) throw new Error('the scratch migration left the two copies of its RAM different');
    return outgoing.queryMigrate().ram?.transferred ?? 0;
  } finally {
    sourceRam.unmap();
    destinationRam.unmap();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  }
}
