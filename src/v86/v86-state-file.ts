// v86's save_state() file format, as v86 0.5.462 (src/state.js) writes it, read back
// defensively so Ferry can check a state before handing it to v86's restore_state().
//
//   i32le  magic 0x86768676            i32le  STATE_VERSION (6)
//   i32le  total length in bytes       i32le  info block length L
//   L bytes UTF-8 JSON {"buffer_infos": [{"offset", "length"}, …], "state": [...]}
//   padding to a multiple of 4, then the buffer block: buffer i at its offset
//   (each buffer starts 4-aligned within the block)
//
// "state" is the CPU's get_state() array: typed arrays inside it are replaced by
// {"__state_type__": "Uint8Array", "buffer_id": i}. Guest RAM is two entries of the CPU
// array: [77] the non-zero pages packed together, [78] a bitmap of which pages those
// are. Ferry's state section carries a file in which both are empty; RAM goes through
// the RAM handler. (A zstd-compressed file starts with 0xFD2FB528 instead; Ferry never
// writes one and refuses it.)

import { VmStateError } from '../errors.js';

export const V86_STATE_MAGIC = 0x86768676;
export const V86_STATE_VERSION = 6;
const ZSTD_MAGIC = 0xfd2fb528;
const HEADER_BYTES = 16;
/** Indexes of the CPU state array that hold guest RAM. */
export const V86_STATE_INDEX_PACKED_MEMORY = 77;
export const V86_STATE_INDEX_MEMORY_BITMAP = 78;
export const V86_STATE_INDEX_MEMORY_SIZE = 0;
/** The info JSON of a Linux guest's state is ~100 KiB; refuse absurd sizes before decoding. */
const MAX_INFO_BYTES = 16 * 1024 * 1024;

export interface V86StateSummary {
  readonly version: number;
  readonly totalLength: number;
  readonly infoLength: number;
  /** Byte length of each buffer, by buffer id. */
  readonly bufferLengths: readonly number[];
  /** Guest RAM size recorded in the state (the CPU's memory_size). */
  readonly memorySize: number;
  /** Bytes of guest RAM carried in the file (packed pages + page bitmap); 0 for Ferry's sections. */
  readonly memoryBytes: number;
}

/**
 * Parse and check a v86 state file without loading it. Throws VmStateError naming the
 * offset and values when the file is not a well-formed, uncompressed v86 state.
 */
export function readV86StateSummary(file: Uint8Array): V86StateSummary {
  const fail = (what: string): never => {
    throw new VmStateError(`Cannot read the v86 state (${file.byteLength} bytes): ${what}`);
  };
  if (file.byteLength < HEADER_BYTES) fail(`shorter than the ${HEADER_BYTES}-byte header`);
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const magic = dv.getUint32(0, true);
  if (magic === ZSTD_MAGIC) fail('it is zstd-compressed; Ferry only exchanges uncompressed states');
  if (magic !== V86_STATE_MAGIC) fail(`bad magic 0x${magic.toString(16)} at offset 0, expected 0x${V86_STATE_MAGIC.toString(16)}`);
  const version = dv.getInt32(4, true);
  if (version !== V86_STATE_VERSION) fail(`state version ${version} at offset 4, this v86 reads ${V86_STATE_VERSION}`);
  const totalLength = dv.getInt32(8, true);
  if (totalLength !== file.byteLength) fail(`header says ${totalLength} bytes at offset 8`);
  const infoLength = dv.getInt32(12, true);
  if (infoLength <= 0 || infoLength > MAX_INFO_BYTES || HEADER_BYTES + infoLength > file.byteLength) {
    fail(`info block length ${infoLength} at offset 12 does not fit`);
  }
  let info: unknown;
  try {
    info = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(file.subarray(HEADER_BYTES, HEADER_BYTES + infoLength)));
  } catch (err) {
    throw new VmStateError(`Cannot read the v86 state: the info block at offset ${HEADER_BYTES} is not JSON`, { cause: err });
  }
  if (typeof info !== 'object' || info === null) return fail('the info block is not an object');
  const { buffer_infos: infos, state } = info as { buffer_infos?: unknown; state?: unknown };
  if (!Array.isArray(infos) || !Array.isArray(state)) return fail('the info block lacks "buffer_infos" or "state" arrays');
  const blockStart = (HEADER_BYTES + infoLength + 3) & ~3;
  const bufferLengths: number[] = [];
  for (const [i, entry] of infos.entries()) {
    const { offset, length } = (typeof entry === 'object' && entry !== null ? entry : {}) as { offset?: unknown; length?: unknown };
    if (!Number.isInteger(offset) || !Number.isInteger(length)) {
      fail(`buffer ${i}'s entry in "buffer_infos" (${describeJson(entry)}) lacks an integer "offset" and "length"`);
    }
    if ((offset as number) < 0 || (length as number) < 0 || blockStart + (offset as number) + (length as number) > file.byteLength) {
      fail(`buffer ${i} (offset ${String(offset)}, length ${String(length)}) lies outside the file`);
    }
    bufferLengths.push(length as number);
  }
  const bufferOf = (index: number): number => {
    const ref = state[index] as { __state_type__?: unknown; buffer_id?: unknown } | undefined;
    if (typeof ref !== 'object' || ref === null || typeof ref.buffer_id !== 'number' || bufferLengths[ref.buffer_id] === undefined) {
      return fail(`CPU state entry ${index} is not a buffer reference`);
    }
    return bufferLengths[ref.buffer_id]!;
  };
  checkReferences(state, bufferLengths, fail);
  const memorySize = state[V86_STATE_INDEX_MEMORY_SIZE];
  if (typeof memorySize !== 'number' || !Number.isInteger(memorySize) || memorySize <= 0) {
    fail(`CPU state entry ${V86_STATE_INDEX_MEMORY_SIZE} (memory size) is ${memorySize === undefined ? 'missing' : describeJson(memorySize)}, expected a positive integer`);
  }
  return {
    version,
    totalLength,
    infoLength,
    bufferLengths,
    memorySize: memorySize as number,
    memoryBytes: bufferOf(V86_STATE_INDEX_PACKED_MEMORY) + bufferOf(V86_STATE_INDEX_MEMORY_BITMAP),
  };
}

/** The types v86's restore_state builds from {"__state_type__": …}, with their element sizes (Map: none). */
const STATE_TYPES: Readonly<Record<string, number>> = {
  Map: 0,
  Uint8Array: 1,
  Int8Array: 1,
  Uint16Array: 2,
  Int16Array: 2,
  Uint32Array: 4,
  Int32Array: 4,
  Float32Array: 4,
  Float64Array: 8,
};

/**
 * Every object inside the state must be one restore_state can rebuild: a typed array of a
 * type it knows over an existing buffer whose length is a whole number of elements, or a
 * Map of [key, value] pairs. (v86 itself would call an undefined constructor, build an
 * empty array from a missing buffer, or throw a RangeError halfway through installing.)
 * The walk keeps its own stack: the nesting comes from the stream.
 */
function checkReferences(state: unknown[], bufferLengths: readonly number[], fail: (what: string) => never): void {
  const stack: Array<[unknown, string]> = [[state, '']];
  while (stack.length > 0) {
    const [value, path] = stack.pop()!;
    if (typeof value !== 'object' || value === null) continue;
    if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) stack.push([value[i], `${path}[${i}]`]);
      continue;
    }
    const where = `CPU state entry ${path}`;
    const { __state_type__: type, buffer_id: id, args } = value as { __state_type__?: unknown; buffer_id?: unknown; args?: unknown };
    const elementBytes = typeof type === 'string' && Object.hasOwn(STATE_TYPES, type) ? STATE_TYPES[type]! : undefined;
    if (type === undefined) fail(`${where} is an object without a "__state_type__"`);
    if (elementBytes === undefined) fail(`${where} is an object of type ${describeJson(type)}, not one of ${Object.keys(STATE_TYPES).join(', ')}`);
    if (type === 'Map') {
      if (!Array.isArray(args) || !args.every((pair) => Array.isArray(pair) && pair.length === 2)) fail(`${where} is a Map without an array of [key, value] pairs`);
      stack.push([args, `${path}.args`]);
      continue;
    }
    if (args !== undefined) fail(`${where} is a ${String(type)} with "args"`);
    if (id === undefined) fail(`${where} is a ${String(type)} without a "buffer_id"`);
    if (!Number.isInteger(id) || bufferLengths[id as number] === undefined) {
      fail(`${where} is a ${String(type)} over buffer ${describeJson(id)}; the file has ${bufferLengths.length === 0 ? 'no buffers' : `buffers 0 to ${bufferLengths.length - 1}`}`);
    }
    if (bufferLengths[id as number]! % elementBytes! !== 0) {
      fail(`${where} is a ${String(type)} over buffer ${String(id)} of ${bufferLengths[id as number]} bytes, not a whole number of ${elementBytes}-byte elements`);
    }
  }
}

/** A JSON value for a message: at most 60 characters of it. */
function describeJson(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Write a minimal well-formed state file (for tests and for documenting the layout). */
export function writeV86StateFile(state: unknown[], buffers: readonly Uint8Array[]): Uint8Array {
  const infos: { offset: number; length: number }[] = [];
  let total = 0;
  for (const b of buffers) {
    infos.push({ offset: total, length: b.byteLength });
    total = (total + b.byteLength + 3) & ~3;
  }
  const info = new TextEncoder().encode(JSON.stringify({ buffer_infos: infos, state }));
  const blockStart = (HEADER_BYTES + info.byteLength + 3) & ~3;
  const file = new Uint8Array(blockStart + total);
  const dv = new DataView(file.buffer);
  dv.setUint32(0, V86_STATE_MAGIC, true);
  dv.setInt32(4, V86_STATE_VERSION, true);
  dv.setInt32(8, file.byteLength, true);
  dv.setInt32(12, info.byteLength, true);
  file.set(info, HEADER_BYTES);
  buffers.forEach((b, i) => file.set(b, blockStart + infos[i]!.offset));
  return file;
}
