// Mutation fuzzing of a saved stream through the real destination. A sim Machine migrates
// into memory (header, configuration, its RAM in QEMU's chunks, the CPU's and the serial
// port's sections, EOF, the vmdesc JSON): that stream, mutated thousands of ways, goes to
// the incoming side of a Migration over a real Machine's RAM and state. Each case either
// loads completely — a change the format cannot see, such as a byte of a page — or fails
// with an error that says where the stream broke; a failed case never starts the guest
// and leaves the CPU and device state as they were (state is committed only after EOF).
// Seeded: FERRY_SAVED_FUZZ_SEED / FERRY_SAVED_FUZZ_CASES reproduce or extend a run.
// (test/stream-fuzz.test.ts fuzzes the decoders themselves on a made-up stream.)

import { test } from 'node:test';
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

const SEED = Number(process.env['FERRY_SAVED_FUZZ_SEED'] ?? 0x5a7ed);
const CASES = Number(process.env['FERRY_SAVED_FUZZ_CASES'] ?? 3000);
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

/** Saved state as comparable text (bigints and byte arrays spelled out). */
function stateText(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v instanceof Uint8Array ? Array.from(v) : v));
}

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
  /** The CPU and device state as the Machine holds it now. */
  state(): string {
    return stateText(this.machine.stateSections.map((s) => [s.idstr, s.instanceId, s.save()]));
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

type Mutation = (bytes: Uint8Array, rand: () => number, hot: readonly number[], tail: number) => { bytes: Uint8Array; what: string };

const INTERESTING = [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x28, 0x40, 0x7f, 0x80, 0xfe, 0xff];

/** Mostly where the structure is: a chunk header, or the last part of the stream (device state, EOF, vmdesc). */
function pickOffset(rand: () => number, length: number, hot: readonly number[], tail: number): number {
  const r = rand();
  if (r < 0.4) return hot[Math.floor(rand() * hot.length)]!;
  if (r < 0.8) return tail + Math.floor(rand() * (Math.min(length, tail + 600) - tail));
  return Math.floor(rand() * length);
}

const MUTATIONS: Array<[string, Mutation]> = [
  ['bit flip', (b, rand, hot, tail) => {
    const out = b.slice();
    const at = pickOffset(rand, out.length, hot, tail);
    const bit = Math.floor(rand() * 8);
    out[at] = out[at]! ^ (1 << bit);
    return { bytes: out, what: `bit ${bit} of byte ${at}` };
  }],
  ['interesting byte', (b, rand, hot, tail) => {
    const out = b.slice();
    const at = pickOffset(rand, out.length, hot, tail);
    const value = INTERESTING[Math.floor(rand() * INTERESTING.length)]!;
    out[at] = value;
    return { bytes: out, what: `byte ${at} = 0x${value.toString(16)}` };
  }],
  ['truncation', (b, rand, hot, tail) => {
    const at = pickOffset(rand, b.length, hot, tail);
    return { bytes: b.slice(0, at), what: `cut at ${at}` };
  }],
  ['deletion', (b, rand, hot, tail) => {
    const at = pickOffset(rand, b.length, hot, tail);
    const n = 1 + Math.floor(rand() * 16);
    const out = new Uint8Array(b.length - Math.min(n, b.length - at));
    out.set(b.subarray(0, at));
    out.set(b.subarray(at + n), at);
    return { bytes: out, what: `${n} bytes deleted at ${at}` };
  }],
  ['insertion', (b, rand, hot, tail) => {
    const at = pickOffset(rand, b.length, hot, tail);
    const n = 1 + Math.floor(rand() * 16);
    const out = new Uint8Array(b.length + n);
    out.set(b.subarray(0, at));
    for (let i = 0; i < n; i++) out[at + i] = Math.floor(rand() * 256);
    out.set(b.subarray(at), at + n);
    return { bytes: out, what: `${n} random bytes inserted at ${at}` };
  }],
  ['length word', (b, rand, hot, tail) => {
    // A 32-bit big-endian word set to something large: lengths, counts, sizes.
    const out = b.slice();
    const at = Math.min(pickOffset(rand, out.length, hot, tail), out.length - 4);
    const value = [0xffffffff, 0x7fffffff, 0x80000000, 0x00010000, 0x01000000][Math.floor(rand() * 5)]!;
    new DataView(out.buffer).setUint32(at, value);
    return { bytes: out, what: `be32 at ${at} = 0x${value.toString(16)}` };
  }],
];

test(`saved-stream fuzz: ${CASES} mutations of a sim Machine's stream (seed 0x${SEED.toString(16)}) load, or fail saying where, and never start the guest`, { timeout: 10 * 60_000 }, async (t) => {
  const guest = parseGuestSpec(GUEST);
  const console = { write: () => {} };
  const source = await Machine.create({ accel: 'sim', memorySize: MEMORY, guest, console });
  const target = await Machine.create({ accel: 'sim', memorySize: MEMORY, guest, console, incoming: true });
  t.after(async () => {
    await source.destroy();
    await target.destroy();
  });
  await sleep(100);

  // The stream a real migration writes, kept as a file would be (migrate "exec:cat > FILE").
  const saved = createCollectingChannel();
  const outgoing = new Migration({ vm: source, connect: async () => saved, listen: () => Promise.reject(new Error('unused')), ...common });
  outgoing.setParameters({ 'max-bandwidth': 0 });
  outgoing.migrate('memory:');
  await outgoing.whenSettled();
  assert.equal(outgoing.status, 'completed', outgoing.queryMigrate()['error-desc']);
  const stream = saved.bytes();
  const sourceRam = createHash('sha256').update(source.memory[0]!.bytes).digest('hex');
  const cpuState = (m: Machine): string => stateText(m.stateSections.find((s) => s.idstr === 'cpu')!.save());
  const sections = source.stateSections.map((s) => s.idstr);
  assert.ok(sections.includes('cpu') && sections.includes('serial'), `the source saves its CPU and serial port: ${sections.join(', ')}`);

  // The stream as saved loads, and the destination holds what the source had.
  const vm = new Destination(target);
  const clean = await load(vm, stream, 65536);
  assert.equal(clean.status, 'completed', clean.error);
  assert.equal(vm.starts, 1);
  assert.equal(createHash('sha256').update(target.memory[0]!.bytes).digest('hex'), sourceRam);
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

  const rand = prng(SEED);
  const tally = { loaded: 0, failed: 0 };
  const byMutation = new Map<string, { loaded: number; failed: number }>();
  for (let i = 0; i < CASES; i++) {
    const [name, mutate] = MUTATIONS[Math.floor(rand() * MUTATIONS.length)]!;
    const { bytes, what } = mutate(stream, rand, hot, tail);
    const chunkSize = [509, 4096, 65536][Math.floor(rand() * 3)]!;
    const where = `case ${i} (seed 0x${SEED.toString(16)}): ${what}, ${chunkSize}-byte reads`;
    vm.runState = 'inmigrate';
    vm.starts = 0;
    const before = vm.state();
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
    assert.equal(vm.state(), before, `${where}: CPU or device state changed by a stream that failed (${error})`);
    assert.match(error, /offset \d+/, `${where}: the error does not say where the stream broke: ${error}`);
    assert.doesNotMatch(error, INTERNAL, `${where}: an unchecked input reached JavaScript's own error: ${error}`);
  }
  t.diagnostic(`${tally.failed} cases failed with an error naming the offset, ${tally.loaded} loaded (a change the format cannot see) — ${[...byMutation].map(([n, c]) => `${n} ${c.failed}/${c.failed + c.loaded}`).join(', ')}`);
  // Mostly structure was hit: most cases must have failed, and some must have loaded.
  assert.ok(tally.failed > CASES / 2, `only ${tally.failed} of ${CASES} cases failed`);
});
