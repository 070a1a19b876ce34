// Decoding device sections from the vmdesc alone, as QEMU's analyze-migration.py does:
// no VmStateDescription needed, so Ferry can read (and tests can check against) streams
// written by QEMU itself. Also finds the vmdesc at the end of a complete stream file.

import { StreamFormatError } from '../errors.js';
import { checkVmdesc, MAX_VMDESC_DEPTH, MAX_VMDESC_LENGTH, QEMU_VM_SUBSECTION, QEMU_VM_VMDESCRIPTION } from './format.js';
import type { Vmdesc, VmdescField, VmdescStruct } from './format.js';
import type { StreamReader } from './reader.js';

/** No single vmdesc field is larger than this (QEMU's largest are framebuffer-sized buffers). */
export const MAX_VMDESC_FIELD_SIZE = 64 * 1024 * 1024;
/** Fields an array_len may expand to. */
const MAX_ARRAY_LEN = 1 << 20;

/** A decoded value: integers as number (≤ 4 bytes) or bigint, bools, raw bytes, nested records, arrays. */
export type DecodedValue = number | bigint | boolean | Uint8Array | DecodedRecord | DecodedValue[];
export interface DecodedRecord {
  [name: string]: DecodedValue;
}

const decoder = new TextDecoder('utf-8');

/**
 * Read one section's (or struct's) data as `desc` says: fields by their type and size,
 * arrays (array_len / index), structs, then exactly the subsections listed, in order.
 */
export async function decodeByVmdesc(r: StreamReader, desc: VmdescStruct, section: string): Promise<DecodedRecord> {
  return decodeStruct(r, desc, section, 0);
}

async function decodeStruct(r: StreamReader, desc: VmdescStruct, section: string, depth: number): Promise<DecodedRecord> {
  if (depth > MAX_VMDESC_DEPTH) throw new StreamFormatError(`vmdesc for "${section}" nests deeper than ${MAX_VMDESC_DEPTH}`, r.offset, section);
  const out: DecodedRecord = {};
  for (const field of desc.fields) {
    const copies = field.array_len ?? 1;
    if (!Number.isSafeInteger(copies) || copies > MAX_ARRAY_LEN) {
      throw new StreamFormatError(`vmdesc field "${field.name}" of "${section}" has array_len ${copies}`, r.offset, section);
    }
    const values: DecodedValue[] = [];
    for (let i = 0; i < copies; i++) values.push(await decodeField(r, field, section, depth));
    if (field.array_len !== undefined) {
      out[field.name] = values;
    } else if (field.index !== undefined) {
      const list = out[field.name];
      const arr: DecodedValue[] = Array.isArray(list) ? list : [];
      if (arr.length !== field.index) {
        throw new StreamFormatError(`vmdesc field "${field.name}" of "${section}": element index ${field.index} out of order (have ${arr.length})`, r.offset, section);
      }
      arr.push(values[0]!);
      out[field.name] = arr;
    } else {
      out[field.name] = values[0]!;
    }
  }
  for (const sub of desc.subsections ?? []) {
    await r.ensure(2, section);
    const at = r.offset;
    const marker = r.u8();
    if (marker !== QEMU_VM_SUBSECTION) {
      throw new StreamFormatError(`Subsection "${sub.vmsd_name}" of "${section}" not found at offset ${at} (byte 0x${marker.toString(16)})`, at, section);
    }
    const len = r.u8();
    await r.ensure(len + 4, section);
    const name = decoder.decode(r.bytes(len));
    r.be32(); // the subsection's version: its vmdesc already describes what follows
    out[name] = await decodeStruct(r, sub, section, depth + 1);
  }
  return out;
}

async function decodeField(r: StreamReader, field: VmdescField, section: string, depth: number): Promise<DecodedValue> {
  if (field.type === 'struct' && field.struct) return decodeStruct(r, field.struct, section, depth + 1);
  const size = field.size;
  if (size > MAX_VMDESC_FIELD_SIZE) {
    throw new StreamFormatError(`vmdesc field "${field.name}" of "${section}" is ${size} bytes, more than ${MAX_VMDESC_FIELD_SIZE}`, r.offset, section);
  }
  await r.ensure(size, section);
  const bytes = r.bytes(size);
  const type = field.type;
  if (type === 'bool' && size === 1) return bytes[0] !== 0;
  const int = /^(u?)int(8|16|32|64)( equal| le)?$/.exec(type);
  if (int && size >= 1 && size <= 8) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, size);
    const littleEndian = int[3] === ' le';
    let v = 0n;
    for (let i = 0; i < size; i++) v = (v << 8n) | BigInt(dv.getUint8(littleEndian ? size - 1 - i : i));
    if (int[1] !== 'u') v = BigInt.asIntN(size * 8, v);
    return size <= 4 ? Number(v) : v;
  }
  return bytes;
}

/**
 * Find the vmdesc at the end of a complete stream file: the QEMU_VM_VMDESCRIPTION byte
 * whose be32 length reaches exactly to the end, followed by "{". JSON text cannot hold a
 * raw 0x06, so scanning back from the end finds the real one first (analyze-migration.py's
 * "last NUL byte" guess fails when the length itself contains a "{"). Null when absent.
 */
export function findVmdesc(stream: Uint8Array): Vmdesc | null {
  const end = stream.byteLength;
  const dv = new DataView(stream.buffer, stream.byteOffset, end);
  const lowest = Math.max(0, end - 5 - MAX_VMDESC_LENGTH);
  for (let p = end - 6; p >= lowest; p--) {
    if (stream[p] !== QEMU_VM_VMDESCRIPTION || stream[p + 5] !== 0x7b || dv.getUint32(p + 1) !== end - p - 5) continue;
    const start = p + 5;
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(stream.subarray(start, end)));
    } catch (err) {
      throw new StreamFormatError(`Cannot parse vmdesc JSON at offset ${start}: ${err instanceof Error ? err.message : String(err)}`, start, 'vmdesc', { cause: err });
    }
    return checkVmdesc(parsed, start);
  }
  return null;
}
