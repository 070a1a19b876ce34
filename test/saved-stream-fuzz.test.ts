// Mutation fuzzing of a saved stream through the real destination. A sim Machine migrates
// into memory (header, configuration, its RAM in QEMU's chunks, the CPU's and the serial
// port's sections, EOF, the vmdesc JSON): that stream, mutated thousands of ways, goes to
// the incoming side of a Migration over a real Machine's RAM and state. Each case either
// loads completely — a change the format cannot see, such as a byte of a page — or fails
// with an error that says where the stream broke; a failed case never starts the guest
// and leaves the CPU and device state as they were (state is committed only after EOF).
// Seeded: FERRY_SAVED_FUZZ_SEED / FERRY_SAVED_FUZZ_CASES reproduce or extend a run.
// The same is done to the Linux guest's stream under v86 (FERRY_SAVED_FUZZ_V86_CASES),
// where the device state is v86's own state file inside one section.
// (test/stream-fuzz.test.ts fuzzes the decoders themselves on a made-up stream.)

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { setImmediate } from 'node:timers';
import { setTimeout as sleep } from 'node:timers/promises';
import { Machine } from '../src/machine/machine.js';
import type { RunState } from '../src/machine/run-state.js';
import { parseGuestSpec } from '../src/guests/spec.js';
import { Migration } from '../src/migration/migration.js';
import type { MigrationVm } from '../src/migration/vm.js';
import { channelFromBytes, createCollectingChannel } from '../src/stream/memory-channel.js';
import { listenerFor } from './migration-engine-helpers.js';
import { prng } from '../src/stream/testing.js';
import { linuxGuestAvailable, linuxGuestDir } from '../src/v86/v86-accelerator.js';
import { V86_STATE_MAGIC } from '../src/v86/v86-state-file.js';

const SEED = Number(process.env['FERRY_SAVED_FUZZ_SEED'] ?? 0x5a7ed);
const CASES = Number(process.env['FERRY_SAVED_FUZZ_CASES'] ?? 3000);
const V86_CASES = Number(process.env['FERRY_SAVED_FUZZ_V86_CASES'] ?? 400);
const MiB = 1024 * 1024;
const MEMORY = 2 * MiB;
/**
 * The sweep writes 64 KiB of it, slowly: the migration converges at once and the stream
 * stays small (~150 KB), so thousands of cases take seconds. The guest runs, so a stream
 * that loads starts it.
 */
const GUEST = 'builtin:sweep,to=1088K,rate=2000';
/** A case that has not settled by then is a hang. */
const CASE_TIMEOUT_MS = 5000;
const PAGE = 4096;
/** Messages of JavaScript's own errors: a decoder that lets one through did not check its input. */
const INTERNAL = /Cannot read propert|is not a function|is not iterable|is not defined|Invalid (typed )?array length|outside the bounds|The value of "\w+" is out of range|Maximum call stack|allocation failed|Cannot convert|\bundefined\b|\bNaN\b/;

/**
 * Saved state as comparable text: bigints spelled out, byte arrays by their SHA-256
 * (v86 saves 1–2 MB of them).
 */
function stateText(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v instanceof Uint8Array ? `sha256:${createHash('sha256').update(v).digest('hex')}` : v));
}

/** Each section's idstr, instance and saved value. */
type SavedState = ReadonlyArray<readonly [string, number, Record<string, unknown>]>;

/**
 * The destination Machine's RAM and state, with its run state kept here: starting the
 * guest is recorded, not done, so that one Machine serves every case.
 */
class Destination implements MigrationVm {
  runState: RunState = 'inmigrate';
  starts = 0;
  constructor(private readonly machine: Machine) {}
  get memory() {
    return this.machine.memory;
  }
  get dirtyLog() {
    return this.machine.dirtyLog;
  }
  get stateSections() {
    return this.machine.stateSections;
  }
  get machineType() {
    return this.machine.machineType;
  }
  setRunState(state: RunState): void {
    this.runState = state;
  }
  pauseForMigration(): Promise<boolean> {
    throw new Error('a destination does not pause for a migration');
  }
  resumeAfterMigration(): void {
    throw new Error('a destination does not resume after a migration');
  }
  startAfterIncoming(): void {
    this.starts++;
    this.runState = 'running';
  }
  /**
   * Bytes of a saved byte-array field that differ from one save to the next with nothing
   * loaded in between, by "idstr.field" (v86's state carries counters that move with the
   * host's clock): left out of comparisons. Only ever grows.
   */
  readonly #volatile = new Map<string, Set<number>>();

  /** The CPU and device state as the Machine holds it now, as saved. */
  snapshot(): SavedState {
    return this.machine.stateSections.map((s) => [s.idstr, s.instanceId, s.save()] as const);
  }

  /** The CPU and device state as comparable text, without the bytes known to move. */
  state(snapshot: SavedState = this.snapshot()): string {
    return stateText(snapshot.map(([idstr, instanceId, value]) => [idstr, instanceId, this.#masked(idstr, value)]));
  }

  /** Save every section twice, `gapMs` apart, and add the bytes that moved to those left out. */
  async learnVolatileBytes(gapMs: number): Promise<void> {
    const first = this.snapshot();
    await sleep(gapMs);
    for (const [i, [idstr, , again]] of this.snapshot().entries()) {
      for (const [field, value] of Object.entries(first[i]![2])) {
        const other = again[field];
        if (!(value instanceof Uint8Array) || !(other instanceof Uint8Array) || value.length !== other.length) continue;
        // A counter that moved in its low bytes moves in the others in time: the 7 bytes
        // on either side of each moved byte are left out too (any 64-bit word holding it).
        const key = `${idstr}.${field}`;
        const moved = this.#volatile.get(key) ?? new Set<number>();
        for (let at = 0; at < value.length; at++) {
          if (value[at] === other[at]) continue;
          for (let b = Math.max(at - 7, 0); b <= Math.min(at + 7, value.length - 1); b++) moved.add(b);
        }
        if (moved.size > 0) this.#volatile.set(key, moved);
      }
    }
  }

  get volatileBytes(): number {
    let n = 0;
    for (const moved of this.#volatile.values()) n += moved.size;
    return n;
  }

  #masked(idstr: string, state: Record<string, unknown>): Record<string, unknown> {
    const out = { ...state };
    for (const [field, value] of Object.entries(state)) {
      const moved = this.#volatile.get(`${idstr}.${field}`);
      if (moved === undefined || !(value instanceof Uint8Array)) continue;
      const copy = value.slice();
      for (const at of moved) if (at < copy.length) copy[at] = 0;
      out[field] = copy;
    }
    return out;
  }

}

const common = { now: () => performance.now(), schedule: (fn: () => void) => setImmediate(fn), emit: () => {} };

/** Feed `bytes` to a new incoming Migration over `vm`; resolves with how it ended. */
async function load(vm: Destination, bytes: Uint8Array, chunkSize: number): Promise<{ status: string; error: string | undefined }> {
  const incoming = new Migration({
    vm,
    connect: () => Promise.reject(new Error('unused')),
    listen: async () => listenerFor(channelFromBytes(bytes, { chunkSize })),
    ...common,
  });
  await incoming.migrateIncoming('memory:');
  let timer: NodeJS.Timeout | undefined;
  const settled = await Promise.race([
    incoming.whenIncomingSettled().then(() => true),
    new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), CASE_TIMEOUT_MS))),
  ]);
  clearTimeout(timer);
  if (!settled) return { status: 'hang', error: undefined };
  return { status: incoming.incomingStatus, error: incoming.incomingError };
}

/** Where the structure is: chunk headers of RAM pages (found by their shape), and everything after the RAM. */
function structureOffsets(bytes: Uint8Array): number[] {
  const offsets: number[] = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 0; at + 8 <= bytes.length; at++) {
    if (view.getUint32(at) !== 0) continue;
    const low = view.getUint32(at + 4);
    const flags = low & (PAGE - 1);
    // ZERO|CONTINUE, PAGE|CONTINUE, ZERO, PAGE, EOS; a page address inside the RAM.
    if ((flags === 0x22 || flags === 0x28 || flags === 0x02 || flags === 0x08) && low - flags < MEMORY) offsets.push(at, at + 7);
  }
  return offsets;
}

/** Where a mutation lands: an offset below `length`, picked with `rand`. */
type Pick = (rand: () => number, length: number) => number;
type Mutation = (bytes: Uint8Array, rand: () => number, pick: Pick, scratch: Uint8Array) => { bytes: Uint8Array; what: string };

const INTERESTING = [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x28, 0x40, 0x7f, 0x80, 0xfe, 0xff];

/** Mostly where the structure is: a chunk header, or the last part of the stream (device state, EOF, vmdesc). */
function pickOffset(rand: () => number, length: number, hot: readonly number[], tail: number): number {
  const r = rand();
  if (r < 0.4) return hot[Math.floor(rand() * hot.length)]!;
  if (r < 0.8) return tail + Math.floor(rand() * (Math.min(length, tail + 600) - tail));
  return Math.floor(rand() * length);
}

/** Insertions add at most this many bytes: the scratch buffer is the stream's length plus this. */
const MAX_INSERT = 16;

// Each mutation writes into `scratch` (reused from case to case: a fresh copy of a
// 20 MB stream per case would pay the host's first touch each time) or returns a view of
// the stream itself, which is never written.
const MUTATIONS: Array<[string, Mutation]> = [
  ['bit flip', (b, rand, pick, scratch) => {
    const at = pick(rand, b.length);
    const bit = Math.floor(rand() * 8);
    const out = copyInto(scratch, b);
    out[at] = out[at]! ^ (1 << bit);
    return { bytes: out, what: `bit ${bit} of byte ${at}` };
  }],
  ['interesting byte', (b, rand, pick, scratch) => {
    const at = pick(rand, b.length);
    const value = INTERESTING[Math.floor(rand() * INTERESTING.length)]!;
    const out = copyInto(scratch, b);
    out[at] = value;
    return { bytes: out, what: `byte ${at} = 0x${value.toString(16)}` };
  }],
  ['truncation', (b, rand, pick) => {
    const at = pick(rand, b.length);
    return { bytes: b.subarray(0, at), what: `cut at ${at}` };
  }],
  ['deletion', (b, rand, pick, scratch) => {
    const at = pick(rand, b.length);
    const n = 1 + Math.floor(rand() * MAX_INSERT);
    const out = scratch.subarray(0, b.length - Math.min(n, b.length - at));
    out.set(b.subarray(0, at));
    out.set(b.subarray(at + n), at);
    return { bytes: out, what: `${n} bytes deleted at ${at}` };
  }],
  ['insertion', (b, rand, pick, scratch) => {
    const at = pick(rand, b.length);
    const n = 1 + Math.floor(rand() * MAX_INSERT);
    const out = scratch.subarray(0, b.length + n);
    out.set(b.subarray(0, at));
    for (let i = 0; i < n; i++) out[at + i] = Math.floor(rand() * 256);
    out.set(b.subarray(at), at + n);
    return { bytes: out, what: `${n} random bytes inserted at ${at}` };
  }],
  ['length word', (b, rand, pick, scratch) => {
    // A 32-bit big-endian word set to something large: lengths, counts, sizes.
    const at = Math.min(pick(rand, b.length), b.length - 4);
    const value = [0xffffffff, 0x7fffffff, 0x80000000, 0x00010000, 0x01000000][Math.floor(rand() * 5)]!;
    const out = copyInto(scratch, b);
    new DataView(out.buffer, out.byteOffset, out.byteLength).setUint32(at, value);
    return { bytes: out, what: `be32 at ${at} = 0x${value.toString(16)}` };
  }],
];

function copyInto(scratch: Uint8Array, b: Uint8Array): Uint8Array {
  const out = scratch.subarray(0, b.length);
  out.set(b);
  return out;
}

/** A source Machine and an incoming one of the same kind, destroyed after the test. */
async function machines(t: TestContext, accel: 'sim' | 'v86', memorySize: number, guestSpec: string): Promise<{ source: Machine; target: Machine; consoleText: () => string }> {
  const guest = parseGuestSpec(guestSpec);
  let text = '';
  const source = await Machine.create({ accel, memorySize, guest, console: { write: (bytes) => (text += Buffer.from(bytes).toString('latin1')) } });
  const target = await Machine.create({ accel, memorySize, guest, console: { write: () => {} }, incoming: true });
  t.after(async () => {
    await source.destroy();
    await target.destroy();
  });
  return { source, target, consoleText: () => text };
}

/** The saved stream as it is loads, starts the guest, and leaves the source's RAM on `target`. */
async function loadsAsSaved(stream: Uint8Array, source: Machine, target: Machine): Promise<Destination> {
  const vm = new Destination(target);
  const clean = await load(vm, stream, 65536);
  assert.equal(clean.status, 'completed', clean.error);
  assert.equal(vm.starts, 1);
  const digest = (m: Machine): string => createHash('sha256').update(m.memory[0]!.bytes).digest('hex');
  assert.equal(digest(target), digest(source));
  return vm;
}

/** Migrate `source` into memory, as `migrate "exec:cat > FILE"` would save it. */
async function saveStream(source: MigrationVm): Promise<Uint8Array> {
  const saved = createCollectingChannel();
  const outgoing = new Migration({ vm: source, connect: async () => saved, listen: () => Promise.reject(new Error('unused')), ...common });
  outgoing.setParameters({ 'max-bandwidth': 0 });
  outgoing.migrate('memory:');
  await outgoing.whenSettled();
  assert.equal(outgoing.status, 'completed', outgoing.queryMigrate()['error-desc']);
  return saved.bytes();
}

interface FuzzRun {
  readonly vm: Destination;
  readonly stream: Uint8Array;
  readonly seed: number;
  readonly cases: number;
  readonly pick: Pick;
  /** How the channel cuts the stream into reads, one picked per case. */
  readonly chunkSizes: readonly number[];
  /**
   * Errors from a device that refused a value only when it was installed, after the
   * stream had been read whole (v86's own restore_state): the state may have changed
   * then (the destination fails and never starts, as QEMU's, which installs each section
   * as it reads it), so the run loads the saved stream again before the next case, and
   * the device's own words after the match are not held to the JavaScript-error rule.
   */
  readonly refusedAtInstall?: RegExp;
}

/** Every case loads, or fails naming the offset without starting the guest; returns the tallies. */
async function runCases(run: FuzzRun): Promise<{ loaded: number; failed: number; refused: number; summary: string }> {
  const { vm, stream, seed } = run;
  const rand = prng(seed);
  const tally = { loaded: 0, failed: 0, refused: 0 };
  const byMutation = new Map<string, { loaded: number; failed: number }>();
  const scratch = new Uint8Array(stream.length + MAX_INSERT);
  for (let i = 0; i < run.cases; i++) {
    const [name, mutate] = MUTATIONS[Math.floor(rand() * MUTATIONS.length)]!;
    const { bytes, what } = mutate(stream, rand, run.pick, scratch);
    const chunkSize = run.chunkSizes[Math.floor(rand() * run.chunkSizes.length)]!;
    const where = `case ${i} (seed 0x${seed.toString(16)}): ${what}, ${chunkSize}-byte reads`;
    vm.runState = 'inmigrate';
    vm.starts = 0;
    const before = vm.snapshot();
    const startedAt = performance.now();
    const outcome = await load(vm, bytes, chunkSize);
    const counts = byMutation.get(name) ?? { loaded: 0, failed: 0 };
    byMutation.set(name, counts);
    if (outcome.status === 'completed') {
      // The format has no checksum: a changed page byte, or a changed value that is still
      // valid, loads as what it says. The guest starts then, as from any complete stream.
      assert.equal(vm.starts, 1, `${where}: loaded but did not start`);
      tally.loaded++;
      counts.loaded++;
      continue;
    }
    assert.equal(outcome.status, 'failed', `${where}: ended ${outcome.status}`);
    tally.failed++;
    counts.failed++;
    const error = outcome.error ?? '';
    assert.equal(vm.starts, 0, `${where}: the guest started from a stream that failed (${error})`);
    assert.equal(vm.runState, 'inmigrate', `${where}: run state ${vm.runState} after a failed load`);
    assert.match(error, /offset \d+/, `${where}: the error does not say where the stream broke: ${error}`);
    const refused = run.refusedAtInstall?.exec(error);
    assert.doesNotMatch(refused ? error.slice(0, refused.index + refused[0].length) : error, INTERNAL, `${where}: an unchecked input reached JavaScript's own error: ${error}`);
    if (refused) {
      tally.refused++;
      const reset = await load(vm, stream, 65536);
      assert.equal(reset.status, 'completed', `${where}: the saved stream no longer loads after: ${error}: ${reset.error ?? ''}`);
      continue;
    }
    if (vm.state() !== vm.state(before)) {
      // Before calling it a change, look for bytes that move by themselves over as long
      // as this case took (a clock a device reads when saved): those are left out.
      await vm.learnVolatileBytes(Math.max(250, performance.now() - startedAt));
    }
    assert.equal(vm.state(), vm.state(before), `${where}: CPU or device state changed by a stream that failed (${error})`);
  }
  const summary = `${tally.failed} cases failed with an error naming the offset${run.refusedAtInstall ? ` (${tally.refused} of them refused by the device at install)` : ''}, ${tally.loaded} loaded (a change the format cannot see) — ${[...byMutation].map(([n, c]) => `${n} ${c.failed}/${c.failed + c.loaded}`).join(', ')}`;
  return { ...tally, summary };
}

test(`saved-stream fuzz: ${CASES} mutations of a sim Machine's stream (seed 0x${SEED.toString(16)}) load, or fail saying where, and never start the guest`, { timeout: 10 * 60_000 }, async (t) => {
  const { source, target } = await machines(t, 'sim', MEMORY, GUEST);
  await sleep(100);

  // The stream a real migration writes, kept as a file would be (migrate "exec:cat > FILE").
  const stream = await saveStream(source);
  const cpuState = (m: Machine): string => stateText(m.stateSections.find((s) => s.idstr === 'cpu')!.save());
  const sections = source.stateSections.map((s) => s.idstr);
  assert.ok(sections.includes('cpu') && sections.includes('serial'), `the source saves its CPU and serial port: ${sections.join(', ')}`);

  // The stream as saved loads, and the destination holds what the source had.
  const vm = await loadsAsSaved(stream, source, target);
  // (The serial port's optional subsections go only when needed, as in QEMU, so its
  // transmit holding registers are not compared.)
  assert.equal(cpuState(target), cpuState(source));

  // The last sections before the vmdesc JSON: globalstate, the CPU's and the serial
  // port's FULL sections, the RAM's END, EOF (the JSON after it is for tools, not loaded).
  const vmdescAt = Buffer.from(stream.buffer, stream.byteOffset, stream.byteLength).indexOf('{"page_size"');
  assert.ok(vmdescAt > 0, 'the stream ends with its vmdesc JSON');
  const tail = Math.max(0, vmdescAt - 512);
  const hot = structureOffsets(stream);
  t.diagnostic(`the saved stream: ${stream.length} bytes`);
  assert.ok(hot.length > 100, `found ${hot.length} chunk header bytes`);

  const result = await runCases({ vm, stream, seed: SEED, cases: CASES, chunkSizes: [509, 4096, 65536], pick: (rand, length) => pickOffset(rand, length, hot, tail) });
  t.diagnostic(result.summary);
  // Mostly structure was hit: most cases must have failed, and some must have loaded.
  assert.ok(result.failed > CASES / 2, `only ${result.failed} of ${CASES} cases failed`);
});

/** The Linux guest needs its initrd at 64 MiB: the smallest RAM the v86 tests give it. */
const V86_MEMORY = 128 * MiB;
const v86Skip = linuxGuestAvailable() ? false : `no Linux guest in ${linuxGuestDir()}: run \`sudo sh scripts/setup-linux-guest.sh\``;

test(`saved-stream fuzz: ${V86_CASES} mutations of the Linux guest's stream under v86 (seed 0x${SEED.toString(16)}) load, or fail saying where, and never start the guest`, { skip: v86Skip, timeout: 10 * 60_000 }, async (t) => {
  const { source, target, consoleText } = await machines(t, 'v86', V86_MEMORY, 'builtin:idle');
  // A booted guest, as users migrate them: every device set up, and the same state from
  // run to run (two seconds into the boot, the state's shape depended on the machine's pace).
  const bootDeadline = Date.now() + 120_000;
  while (!/heartbeat \d+/.test(consoleText())) {
    assert.ok(Date.now() < bootDeadline, `the Linux guest did not boot to its heartbeat in 120 s: ${JSON.stringify(consoleText().slice(-300))}`);
    await sleep(100);
  }
  const stream = await saveStream(source);
  const vm = await loadsAsSaved(stream, source, target);
  assert.deepEqual(target.stateSections.map((s) => s.idstr), ['v86-state']);
  await vm.learnVolatileBytes(50);

  // The v86 section: its header and fields, then v86's own file — a 16-byte header, the
  // info block (JSON: the CPU's and devices' state, with the buffers' places), the buffers.
  const bytes = Buffer.from(stream.buffer, stream.byteOffset, stream.byteLength);
  const vmdescAt = bytes.indexOf('{"page_size"');
  const sectionAt = bytes.lastIndexOf('v86-state', vmdescAt) - 6;
  const magic = Buffer.alloc(4);
  magic.writeUInt32LE(V86_STATE_MAGIC);
  const fileAt = bytes.indexOf(magic, sectionAt);
  assert.ok(sectionAt > 0 && fileAt > sectionAt && fileAt < vmdescAt, `found the v86 section at ${sectionAt} and its file at ${fileAt}`);
  const infoEnd = fileAt + 16 + bytes.readInt32LE(fileAt + 12);
  const fileEnd = fileAt + bytes.readInt32LE(fileAt + 8);
  assert.ok(infoEnd < fileEnd && fileEnd < vmdescAt, `the v86 file's info block ends at ${infoEnd}, the file at ${fileEnd}`);
  const between = (rand: () => number, from: number, to: number): number => from + Math.floor(rand() * (to - from));
  t.diagnostic(`the saved stream: ${stream.length} bytes; the v86 file: ${fileEnd - fileAt} bytes at ${fileAt}, its info block ${infoEnd - fileAt - 16}`);

  const result = await runCases({
    vm,
    stream,
    seed: SEED,
    cases: V86_CASES,
    // The stream is ~25 MB (the kernel and initrd in RAM): reads of 509 bytes would take
    // seconds a case; the sim's run covers chunks that straddle small reads.
    chunkSizes: [4093, 65536, MiB],
    pick: (rand, length) => {
      const r = rand();
      if (r < 0.25) return between(rand, sectionAt, fileAt + 16); // section header, fields, the file's header
      if (r < 0.6) return between(rand, fileAt + 16, infoEnd); // the info block
      if (r < 0.75) return between(rand, infoEnd, fileEnd); // the buffers
      if (r < 0.9) return between(rand, fileEnd, Math.min(length, vmdescAt + 16)); // footer, EOF
      return between(rand, 0, length);
    },
    refusedAtInstall: /v86 refused it:/,
  });
  t.diagnostic(result.summary);
  // The bytes left out are a few clock-driven words, not whole swathes of the state.
  t.diagnostic(`${vm.volatileBytes} bytes of the v86 state moved by themselves between saves (left out of the comparisons)`);
  assert.ok(vm.volatileBytes <= 64, `${vm.volatileBytes} bytes of the v86 state moved between saves with nothing loaded`);
  assert.ok(result.failed > V86_CASES / 2, `only ${result.failed} of ${V86_CASES} cases failed`);
});
