// v86 state files: the layout v86 writes, and refusal of every malformed variant.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readV86StateSummary, writeV86StateFile, V86_STATE_MAGIC } from './v86-state-file.js';
import { VmStateError } from '../errors.js';

/** A CPU state array shaped like v86's: [0] memory size, [77]/[78] RAM buffers. */
function cpuState(memoryBuffers: [number, number]): unknown[] {
  const state: unknown[] = [];
  state[0] = 128 * 1024 * 1024;
  state[39] = { __state_type__: 'Uint8Array', buffer_id: 0 };
  state[77] = { __state_type__: 'Uint8Array', buffer_id: memoryBuffers[0] };
  state[78] = { __state_type__: 'Uint8Array', buffer_id: memoryBuffers[1] };
  return state;
}

test('golden header: magic, version, total length, info length, little-endian', () => {
  const file = writeV86StateFile([1], []);
  const info = new TextEncoder().encode('{"buffer_infos":[],"state":[1]}');
  assert.deepEqual([...file.subarray(0, 16)], [
    0x76, 0x86, 0x76, 0x86, // magic 0x86768676
    6, 0, 0, 0, // STATE_VERSION
    file.byteLength, 0, 0, 0, // total length (small here)
    info.byteLength, 0, 0, 0, // info JSON length
  ]);
  assert.deepEqual(file.subarray(16, 16 + info.byteLength), info);
  assert.equal(file.byteLength, (16 + info.byteLength + 3) & ~3);
});

test('summary of a memory-less state and of one carrying RAM', () => {
  const regs = new Uint8Array(32).fill(1);
  const empty = new Uint8Array(0);
  const lean = readV86StateSummary(writeV86StateFile(cpuState([1, 2]), [regs, empty, empty]));
  assert.equal(lean.memoryBytes, 0);
  assert.equal(lean.memorySize, 128 * 1024 * 1024);
  assert.deepEqual(lean.bufferLengths, [32, 0, 0]);
  const full = readV86StateSummary(writeV86StateFile(cpuState([1, 2]), [regs, new Uint8Array(4096 * 3), new Uint8Array(4096)]));
  assert.equal(full.memoryBytes, 4096 * 4);
  // buffers are 4-aligned inside the block even after an odd length
  const odd = readV86StateSummary(writeV86StateFile(cpuState([1, 2]), [new Uint8Array(3), empty, new Uint8Array(5)]));
  assert.deepEqual(odd.bufferLengths, [3, 0, 5]);
});

test('refuses truncated, foreign, compressed, newer and inconsistent files', () => {
  const good = writeV86StateFile(cpuState([1, 2]), [new Uint8Array(8), new Uint8Array(0), new Uint8Array(0)]);
  const mutate = (f: (dv: DataView, b: Uint8Array) => void): Uint8Array => {
    const b = good.slice();
    f(new DataView(b.buffer), b);
    return b;
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ['short', good.subarray(0, 10), /shorter than the 16-byte header/],
    ['truncated', good.subarray(0, good.byteLength - 4), /header says/],
    ['magic', mutate((dv) => dv.setUint32(0, 0x12345678, true)), /bad magic 0x12345678/],
    ['zstd', mutate((dv) => dv.setUint32(0, 0xfd2fb528, true)), /zstd-compressed/],
    ['version', mutate((dv) => dv.setInt32(4, 7, true)), /state version 7/],
    ['info length', mutate((dv) => dv.setInt32(12, 1 << 30, true)), /info block length/],
    ['json', mutate((_dv, b) => { b[16] = 0x7b + 1; }), /not JSON/],
  ];
  for (const [name, file, message] of cases) {
    assert.throws(() => readV86StateSummary(file), (err: unknown) => err instanceof VmStateError && message.test(err.message), name);
  }
  const outside = writeV86StateFile(cpuState([1, 2]), [new Uint8Array(8)]);
  assert.throws(() => readV86StateSummary(outside), /entry \[77\] is a Uint8Array over buffer 1; the file has buffers 0 to 0/);
  const notReference = cpuState([1, 2]);
  notReference[78] = 5;
  assert.throws(() => readV86StateSummary(writeV86StateFile(notReference, [new Uint8Array(0), new Uint8Array(0), new Uint8Array(0)])), /entry 78 is not a buffer reference/);
  const noSize = cpuState([1, 2]);
  noSize[0] = 'big';
  assert.throws(() => readV86StateSummary(writeV86StateFile(noSize, [new Uint8Array(0), new Uint8Array(0), new Uint8Array(0)])), /memory size/);
  assert.equal(V86_STATE_MAGIC, 0x86768676);
});

test('refuses objects restore_state could not rebuild, naming where they are', () => {
  const buffers = [new Uint8Array(8), new Uint8Array(0), new Uint8Array(0), new Uint8Array(6)];
  const withEntry = (entry: unknown): Uint8Array => {
    const state = cpuState([1, 2]);
    state[48] = [1, [2, entry]];
    return writeV86StateFile(state, buffers);
  };
  const refused: [string, unknown, RegExp][] = [
    ['unknown type', { __state_type__: 'Uint8Arrax', buffer_id: 0 }, /entry \[48\]\[1\]\[1\] is an object of type "Uint8Arrax", not one of Map, Uint8Array/],
    ['no type', { buffer_id: 0 }, /entry \[48\]\[1\]\[1\] is an object without a "__state_type__"/],
    ['no buffer id', { __state_type__: 'Int32Array', buffer_i: 0 }, /Int32Array without a "buffer_id"/],
    ['a prototype key', { __state_type__: 'constructor', buffer_id: 0 }, /type "constructor"/],
    ['missing buffer', { __state_type__: 'Int32Array', buffer_id: 9 }, /Int32Array over buffer 9; the file has buffers 0 to 3/],
    ['buffer id not a number', { __state_type__: 'Int32Array', buffer_id: '0' }, /over buffer "0"/],
    ['partial element', { __state_type__: 'Uint32Array', buffer_id: 3 }, /buffer 3 of 6 bytes, not a whole number of 4-byte elements/],
    ['typed array with args', { __state_type__: 'Uint8Array', buffer_id: 0, args: [1] }, /Uint8Array with "args"/],
    ['map without pairs', { __state_type__: 'Map', args: [[1, 2], [3]] }, /Map without an array of \[key, value\] pairs/],
    ['bad object inside a map', { __state_type__: 'Map', args: [[1, { __state_type__: 'Nope' }]] }, /entry \[48\]\[1\]\[1\]\.args\[0\]\[1\] is an object of type "Nope"/],
  ];
  for (const [name, entry, message] of refused) {
    assert.throws(() => readV86StateSummary(withEntry(entry)), (err: unknown) => err instanceof VmStateError && message.test(err.message), name);
  }
  // What v86 writes passes: typed arrays of every kind over fitting buffers, and Maps.
  for (const entry of [
    { __state_type__: 'Uint16Array', buffer_id: 3 },
    { __state_type__: 'Float64Array', buffer_id: 0 },
    { __state_type__: 'Map', args: [[1, { __state_type__: 'Int8Array', buffer_id: 3 }], ['k', [2, null]]] },
    null,
  ]) {
    assert.equal(readV86StateSummary(withEntry(entry)).memoryBytes, 0, JSON.stringify(entry));
  }
});
