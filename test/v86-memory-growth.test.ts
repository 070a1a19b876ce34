// Regression for a hazard particular to v86: its guest RAM lives in a WebAssembly.Memory
// that the emulator grows at run time, which detaches every view made before. Ferry's
// migration engine must fetch `block.bytes` again rather than keep views across awaits.
// No guest needed: a Memory grown by hand while a migration runs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { setImmediate } from 'node:timers';
import { V86RamBlock } from '../src/v86/v86-accelerator.js';
import type { WasmMemory } from '../src/v86/v86-accelerator.js';
import { ShadowDirtyLog } from '../src/v86/shadow-dirty-log.js';
import type { DirtyLog, GuestMemoryBlock, StateSection } from '../src/hypervisor/types.js';
import type { RunState } from '../src/machine/run-state.js';
import type { MigrationVm } from '../src/migration/vm.js';
import { Migration } from '../src/migration/migration.js';
import { createMemoryChannelPair } from '../src/stream/memory-channel.js';
import { listenerFor } from './migration-engine-helpers.js';

const RAM = 8 * 1024 * 1024;
const OFFSET = 64 * 1024; // v86 puts RAM after its own data, not at 0
const WASM_PAGE = 65536;

interface GrowableMemory extends WasmMemory { grow(pages: number): number }
const WasmMemoryCtor = (globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number; maximum: number }) => GrowableMemory } }).WebAssembly.Memory;

class SimpleVm implements MigrationVm {
  readonly machineType = 'ferry-v86';
  readonly stateSections: readonly StateSection[] = [];
  constructor(readonly memory: readonly GuestMemoryBlock[], readonly dirtyLog: DirtyLog, public runState: RunState) {}
  setRunState(state: RunState): void { this.runState = state; }
  async pauseForMigration(): Promise<boolean> { this.runState = 'finish-migrate'; return true; }
  resumeAfterMigration(): void { this.runState = 'running'; }
  startAfterIncoming(): void { this.runState = 'running'; }
}

const digest = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

// Before e5f56db the RAM handler kept word views from setup(); once detached they read as
// zeros and data pages went out as ZERO pages (a Linux guest then died in a page walk).
test('RAM arrives intact when the wasm memory grows during the migration', async () => {
  const memory = new WasmMemoryCtor({ initial: (OFFSET + RAM) / WASM_PAGE, maximum: 4096 });
  const block = new V86RamBlock(memory, OFFSET, RAM);
  for (let i = 0; i < RAM; i += 512) block.bytes[i] = (i >>> 9) % 251 + 1; // every page non-zero
  const log = new ShadowDirtyLog(() => block.bytes);
  const start = log.start.bind(log);
  let grown = false;
  log.start = () => {
    start();
    // The next turn, as v86's JIT would while the first pass runs.
    setImmediate(() => { memory.grow(16); grown = true; });
  };
  const dst = new Uint8Array(RAM);
  const dstBlock: GuestMemoryBlock = { idstr: 'pc.ram', guestAddress: 0, size: RAM, bytes: dst };
  const srcVm = new SimpleVm([block], log, 'running');
  const dstVm = new SimpleVm([dstBlock], new ShadowDirtyLog(() => dst), 'inmigrate');
  const [a, b] = createMemoryChannelPair();
  const common = { now: () => performance.now(), emit: () => {}, schedule: (fn: () => void) => setImmediate(fn) };
  const out = new Migration({ ...common, vm: srcVm, connect: async () => a, listen: () => Promise.reject(new Error('no')) });
  const inc = new Migration({
    ...common, vm: dstVm, connect: () => Promise.reject(new Error('no')),
    listen: async () => listenerFor(b),
  });
  await inc.migrateIncoming('tcp:0:0');
  out.migrate('tcp:127.0.0.1:1');
  await out.whenSettled();
  await inc.whenIncomingSettled();
  assert.ok(grown, 'the memory did not grow during the migration: the test proves nothing');
  assert.equal(block.bytes.byteLength, RAM, 'the block hands out a live view after the growth');
  assert.equal(out.status, 'completed');
  assert.equal(digest(dst), digest(block.bytes), 'destination RAM differs from the source');
});
