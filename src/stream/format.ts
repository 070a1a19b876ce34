// QEMU's migration stream framing (savevm.c, version 3): the file header and the
// CONFIGURATION section, section headers and footers, EOF, and the vmdesc JSON that
// lets scripts/analyze-migration.py decode a stream without knowing the devices.

import { StreamFormatError } from '../errors.js';
import type { StreamReader } from './reader.js';
import type { StreamWriter } from './writer.js';

export const QEMU_VM_FILE_MAGIC = 0x5145564d;
export const QEMU_VM_FILE_VERSION = 3;
/** Version 2 streams: QEMU refuses them ("SaveVM v2 format is obsolete"), and so do we. */
export const QEMU_VM_FILE_VERSION_COMPAT = 2;

export const QEMU_VM_EOF = 0x00;
export const QEMU_VM_SECTION_START = 0x01;
export const QEMU_VM_SECTION_PART = 0x02;
export const QEMU_VM_SECTION_END = 0x03;
export const QEMU_VM_SECTION_FULL = 0x04;
export const QEMU_VM_SUBSECTION = 0x05;
export const QEMU_VM_VMDESCRIPTION = 0x06;
export const QEMU_VM_CONFIGURATION = 0x07;
/** Commands between sections: be16 command, be16 length, data (savevm.c qemu_savevm_command_send). */
export const QEMU_VM_COMMAND = 0x08;
export const QEMU_VM_SECTION_FOOTER = 0x7e;

/** Caps applied when decoding (input is hostile). */
export const MAX_MACHINE_TYPE_LENGTH = 1024;
export const MAX_VMDESC_LENGTH = 16 * 1024 * 1024;
/** Nesting of structs/subsections accepted in a vmdesc. */
export const MAX_VMDESC_DEPTH = 32;

/** QEMU's configuration/ subsection names and the page size Ferry supports. */
export const TARGET_PAGE_BITS = 12;
const CONFIG_SUB_PAGE_BITS = 'configuration/target-page-bits';
const CONFIG_SUB_CAPABILITIES = 'configuration/capabilities';
const CONFIG_SUB_UUID = 'configuration/uuid';
const MAX_CONFIG_CAPABILITIES = 256;

// ---- vmdesc, in QEMU's vocabulary (vmstate.c vmsd_desc_field_start/end, savevm.c) ----

/** One field: scalars carry their type name ("uint32", "buffer", …), structs their description. */
export interface VmdescField {
  name: string;
  /** A compressed array: this entry stands for `array_len` identical elements. */
  array_len?: number;
  /** One element of an array whose elements differ in shape. */
  index?: number;
  type: string;
  struct?: VmdescStruct;
  /** Bytes this field (or one element of it) took in the stream. */
  size: number;
}

/** A (sub)section's or struct's description. */
export interface VmdescStruct {
  vmsd_name: string;
  version: number;
  fields: VmdescField[];
  subsections?: VmdescStruct[];
}

/** One FULL section: `name` is the section idstr, which with `instance_id` keys it. */
export interface VmdescDevice extends VmdescStruct {
  name: string;
  instance_id: number;
}

export interface Vmdesc {
  page_size: number;
  devices: VmdescDevice[];
}

// ---- header ----

export interface StreamHeader {
  machineType: string;
  /** From configuration/target-page-bits when present (QEMU sends it only when not the default). */
  targetPageBits?: number;
  /** From configuration/capabilities: the capabilities the source asks the destination to match. */
  capabilities?: string[];
  /** From configuration/uuid (16 bytes). */
  uuid?: Uint8Array;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8');

/** idstr bytes with QEMU's u8 length limit enforced on the writing side too. */
function shortString(w: StreamWriter, what: string, text: string): Uint8Array {
  const bytes = encoder.encode(text);
  if (bytes.byteLength > 255) {
    throw new StreamFormatError(`Cannot write ${what} "${text.slice(0, 40)}…": ${bytes.byteLength} bytes, at most 255`, w.bytesWritten, text);
  }
  return bytes;
}

function checkU32(w: StreamWriter, what: string, v: number, section?: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new StreamFormatError(`Cannot write ${what} ${v}: not a 32-bit unsigned integer`, w.bytesWritten, section);
  }
}

/**
 * Magic, version, and the CONFIGURATION section carrying the machine type (savevm.c
 * qemu_savevm_state_header); with `capabilities`, its configuration/capabilities
 * subsection (those the destination must have on too: QEMU 7.2 validates x-ignore-shared
 * alone), and with `uuid` its configuration/uuid subsection (the validate-uuid capability:
 * the destination checks it against its own).
 */
export function writeHeader(w: StreamWriter, machineType: string, options?: { readonly uuid?: Uint8Array; readonly capabilities?: readonly string[] }): void {
  const name = encoder.encode(machineType);
  if (name.byteLength > MAX_MACHINE_TYPE_LENGTH) {
    throw new StreamFormatError(`Cannot write machine type of ${name.byteLength} bytes: at most ${MAX_MACHINE_TYPE_LENGTH}`, w.bytesWritten, 'configuration');
  }
  w.be32(QEMU_VM_FILE_MAGIC);
  w.be32(QEMU_VM_FILE_VERSION);
  w.u8(QEMU_VM_CONFIGURATION);
  // vmstate_configuration: VMSTATE_UINT32(len), VMSTATE_VBUFFER_ALLOC_UINT32(name, len); of its
  // subsections, a 4 KiB-page target with no validated capabilities needs only the UUID's.
  w.be32(name.byteLength);
  w.bytes(name);
  const capabilities = options?.capabilities ?? [];
  if (capabilities.length > 0) {
    // VMSTATE_UINT32_V(caps_count), then each as QEMU's put_capability: a length byte and the name.
    writeSubsectionName(w, CONFIG_SUB_CAPABILITIES);
    w.be32(capabilities.length);
    for (const capability of capabilities) {
      const bytes = shortString(w, 'capability', capability);
      w.u8(bytes.byteLength);
      w.bytes(bytes);
    }
  }
  const uuid = options?.uuid;
  if (uuid !== undefined) {
    if (uuid.byteLength !== 16) throw new StreamFormatError(`Cannot write a UUID of ${uuid.byteLength} bytes: it has 16`, w.bytesWritten, 'configuration');
    writeSubsectionName(w, CONFIG_SUB_UUID);
    w.bytes(uuid);
  }
}

/** A configuration subsection's marker, name and version (1). */
function writeSubsectionName(w: StreamWriter, name: string): void {
  const sub = encoder.encode(name);
  w.u8(QEMU_VM_SUBSECTION);
  w.u8(sub.byteLength);
  w.bytes(sub);
  w.be32(1);
}

/** Read magic, version and CONFIGURATION (with its optional subsections). */
export async function readHeader(r: StreamReader): Promise<StreamHeader> {
  const section = 'configuration';
  await r.ensure(9, 'header');
  const start = r.offset;
  const magic = r.be32();
  if (magic !== QEMU_VM_FILE_MAGIC) {
    throw new StreamFormatError(`Not a migration stream: magic 0x${hex(magic, 8)} at offset ${start} is not 0x${hex(QEMU_VM_FILE_MAGIC, 8)} ("QEVM")`, start, 'header');
  }
  const version = r.be32();
  if (version === QEMU_VM_FILE_VERSION_COMPAT) {
    throw new StreamFormatError('Cannot load stream: version 2 (SaveVM v2) is obsolete', start + 4, 'header');
  }
  if (version !== QEMU_VM_FILE_VERSION) {
    throw new StreamFormatError(`Cannot load stream: version ${version} is not ${QEMU_VM_FILE_VERSION}`, start + 4, 'header');
  }
  const kind = r.u8();
  if (kind !== QEMU_VM_CONFIGURATION) {
    throw new StreamFormatError(`Configuration section missing: found byte 0x${hex(kind, 2)} at offset ${start + 8}`, start + 8, section);
  }
  await r.ensure(4, section);
  const len = r.be32();
  if (len > MAX_MACHINE_TYPE_LENGTH) {
    throw new StreamFormatError(`Cannot load configuration: machine type length ${len} exceeds ${MAX_MACHINE_TYPE_LENGTH}`, r.offset - 4, section);
  }
  await r.ensure(len, section);
  const header: StreamHeader = { machineType: decoder.decode(r.bytes(len)) };
  await readConfigurationSubsections(r, header);
  return header;
}

/** QEMU's vmstate_subsection_load for "configuration": only names with the "configuration/" prefix are subsections. */
async function readConfigurationSubsections(r: StreamReader, header: StreamHeader): Promise<void> {
  const section = 'configuration';
  for (;;) {
    if (!(await r.fill(2)) || r.peekU8(0) !== QEMU_VM_SUBSECTION) return;
    const len = r.peekU8(1);
    if (!(await r.fill(2 + len))) return;
    const name = peekString(r, 2, len);
    if (!name.startsWith('configuration/')) return;
    const at = r.offset;
    r.skip(2 + len);
    await r.ensure(4, section);
    const version = r.be32();
    if (version !== 1) {
      throw new StreamFormatError(`Cannot load subsection "${name}": version ${version} is ${version > 1 ? 'newer than' : 'older than'} 1`, r.offset - 4, section);
    }
    switch (name) {
      case CONFIG_SUB_PAGE_BITS: {
        await r.ensure(4, section);
        const bits = r.be32();
        if (bits !== TARGET_PAGE_BITS) {
          throw new StreamFormatError(`Received TARGET_PAGE_BITS is ${bits} but local is ${TARGET_PAGE_BITS}`, r.offset - 4, section);
        }
        header.targetPageBits = bits;
        break;
      }
      case CONFIG_SUB_CAPABILITIES: {
        await r.ensure(4, section);
        const count = r.be32();
        if (count > MAX_CONFIG_CAPABILITIES) {
          throw new StreamFormatError(`Cannot load configuration: ${count} capabilities exceed ${MAX_CONFIG_CAPABILITIES}`, r.offset - 4, section);
        }
        const caps: string[] = [];
        for (let i = 0; i < count; i++) {
          await r.ensure(1, section);
          const n = r.u8();
          await r.ensure(n, section);
          caps.push(decoder.decode(r.bytes(n)));
        }
        header.capabilities = caps;
        break;
      }
      case CONFIG_SUB_UUID:
        await r.ensure(16, section);
        header.uuid = r.bytes(16);
        break;
      default:
        throw new StreamFormatError(`Cannot load configuration: unknown subsection "${name}"`, at, section);
    }
  }
}

function peekString(r: StreamReader, at: number, len: number): string {
  const bytes = new Uint8Array(len);
  for (let i = 0; i < len; i++) bytes[i] = r.peekU8(at + i);
  return decoder.decode(bytes);
}

// ---- sections ----

/** START/FULL header (savevm.c save_section_header). */
export function writeSectionStart(w: StreamWriter, kind: 'start' | 'full', sectionId: number, idstr: string, instanceId: number, versionId: number): void {
  const name = shortString(w, 'section idstr', idstr);
  checkU32(w, 'section id', sectionId, idstr);
  checkU32(w, 'instance id', instanceId, idstr);
  checkU32(w, 'version id', versionId, idstr);
  w.u8(kind === 'start' ? QEMU_VM_SECTION_START : QEMU_VM_SECTION_FULL);
  w.be32(sectionId);
  w.u8(name.byteLength);
  w.bytes(name);
  w.be32(instanceId);
  w.be32(versionId);
}

/** PART/END header: only the section id, the destination knows the rest. */
export function writeSectionPart(w: StreamWriter, kind: 'part' | 'end', sectionId: number): void {
  checkU32(w, 'section id', sectionId);
  w.u8(kind === 'part' ? QEMU_VM_SECTION_PART : QEMU_VM_SECTION_END);
  w.be32(sectionId);
}

/** After each section's data (QEMU's send_section_footer, on by default since 2.4). */
export function writeSectionFooter(w: StreamWriter, sectionId: number): void {
  checkU32(w, 'section id', sectionId);
  w.u8(QEMU_VM_SECTION_FOOTER);
  w.be32(sectionId);
}

export function writeEof(w: StreamWriter): void {
  w.u8(QEMU_VM_EOF);
}

/** After EOF: QEMU_VM_VMDESCRIPTION, be32 length, the JSON (no NUL bytes, as analyze-migration.py searches for the last NUL). */
export function writeVmdesc(w: StreamWriter, vmdesc: Vmdesc): void {
  const json = encoder.encode(JSON.stringify(vmdesc));
  if (json.byteLength > MAX_VMDESC_LENGTH) {
    throw new StreamFormatError(`Cannot write vmdesc of ${json.byteLength} bytes: at most ${MAX_VMDESC_LENGTH}`, w.bytesWritten, 'vmdesc');
  }
  w.u8(QEMU_VM_VMDESCRIPTION);
  w.be32(json.byteLength);
  w.bytes(json);
}

export type SectionHeader =
  | { kind: 'start' | 'full'; sectionId: number; idstr: string; instanceId: number; versionId: number }
  | { kind: 'part' | 'end'; sectionId: number }
  | { kind: 'command'; command: number; data: Uint8Array; offset: number }
  | { kind: 'eof' };

/** The next section header, or EOF. Anything else at a section boundary is a format error. */
export async function readSectionHeader(r: StreamReader): Promise<SectionHeader> {
  await r.ensure(1, 'section header');
  const at = r.offset;
  const type = r.u8();
  switch (type) {
    case QEMU_VM_EOF:
      return { kind: 'eof' };
    case QEMU_VM_SECTION_START:
    case QEMU_VM_SECTION_FULL: {
      await r.ensure(5, 'section header');
      const sectionId = r.be32();
      const len = r.u8();
      await r.ensure(len + 8, 'section header');
      const idstr = decoder.decode(r.bytes(len));
      const instanceId = r.be32();
      const versionId = r.be32();
      return { kind: type === QEMU_VM_SECTION_START ? 'start' : 'full', sectionId, idstr, instanceId, versionId };
    }
    case QEMU_VM_SECTION_PART:
    case QEMU_VM_SECTION_END: {
      await r.ensure(4, 'section header');
      return { kind: type === QEMU_VM_SECTION_PART ? 'part' : 'end', sectionId: r.be32() };
    }
    case QEMU_VM_COMMAND: {
      await r.ensure(4, 'command');
      const command = r.be16();
      const len = r.be16();
      await r.ensure(len, 'command');
      return { kind: 'command', command, data: r.bytes(len), offset: at };
    }
    default:
      throw new StreamFormatError(`Unknown section type 0x${hex(type, 2)} (${sectionTypeName(type)}) at offset ${at}`, at, 'section header');
  }
}

function sectionTypeName(type: number): string {
  switch (type) {
    case QEMU_VM_SUBSECTION:
      return 'a subsection outside a section';
    case QEMU_VM_VMDESCRIPTION:
      return 'a vmdesc before EOF';
    case QEMU_VM_CONFIGURATION:
      return 'a second configuration section';
    case QEMU_VM_SECTION_FOOTER:
      return 'a footer without a section';
    default:
      return 'not a QEMU section type';
  }
}

/** Check the footer after section `sectionId`'s data (savevm.c check_section_footer). */
export async function readSectionFooter(r: StreamReader, sectionId: number, sectionName: string): Promise<void> {
  await r.ensure(5, sectionName);
  const at = r.offset;
  const marker = r.u8();
  if (marker !== QEMU_VM_SECTION_FOOTER) {
    throw new StreamFormatError(`Missing section footer for "${sectionName}": found byte 0x${hex(marker, 2)} at offset ${at}`, at, sectionName);
  }
  const id = r.be32();
  if (id !== sectionId) {
    throw new StreamFormatError(`Mismatched section id in footer for "${sectionName}": read ${id}, expected ${sectionId}`, at + 1, sectionName);
  }
}

/** The vmdesc after EOF; null when the stream ends right after EOF (QEMU omits it for some targets). */
export async function readVmdesc(r: StreamReader): Promise<Vmdesc | null> {
  if (await r.atEnd()) return null;
  const section = 'vmdesc';
  await r.ensure(5, section);
  const at = r.offset;
  const type = r.u8();
  if (type !== QEMU_VM_VMDESCRIPTION) {
    throw new StreamFormatError(`Expected the vmdesc (0x06) after EOF, found byte 0x${hex(type, 2)} at offset ${at}`, at, section);
  }
  const len = r.be32();
  if (len > MAX_VMDESC_LENGTH) {
    throw new StreamFormatError(`Cannot load vmdesc: length ${len} exceeds ${MAX_VMDESC_LENGTH}`, at + 1, section);
  }
  await r.ensure(len, section);
  const jsonAt = r.offset;
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(r.bytes(len)));
  } catch (err) {
    throw new StreamFormatError(`Cannot parse vmdesc JSON (${len} bytes at offset ${jsonAt}): ${err instanceof Error ? err.message : String(err)}`, jsonAt, section, { cause: err });
  }
  return checkVmdesc(parsed, jsonAt);
}

/** Validate the shape of parsed vmdesc JSON, so nothing downstream meets a surprise type. */
export function checkVmdesc(value: unknown, offset = 0): Vmdesc {
  const fail = (path: string, what: string): never => {
    throw new StreamFormatError(`Invalid vmdesc: ${path} ${what}`, offset, 'vmdesc');
  };
  const obj = (v: unknown, path: string): Record<string, unknown> =>
    typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : fail(path, 'is not an object');
  const int = (v: unknown, path: string): number =>
    typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : fail(path, 'is not a non-negative integer');
  const str = (v: unknown, path: string): string => (typeof v === 'string' ? v : fail(path, 'is not a string'));
  const arr = (v: unknown, path: string): unknown[] => (Array.isArray(v) ? v : fail(path, 'is not an array'));

  const struct = (v: unknown, path: string, depth: number): VmdescStruct => {
    if (depth > MAX_VMDESC_DEPTH) fail(path, `nests deeper than ${MAX_VMDESC_DEPTH}`);
    const o = obj(v, path);
    // QEMU's old-style (non-VMSD) sections carry neither vmsd_name nor version.
    const out: VmdescStruct = {
      vmsd_name: o['vmsd_name'] === undefined ? '' : str(o['vmsd_name'], `${path}.vmsd_name`),
      version: o['version'] === undefined ? 0 : int(o['version'], `${path}.version`),
      fields: arr(o['fields'], `${path}.fields`).map((f, i) => field(f, `${path}.fields[${i}]`, depth)),
    };
    if (o['subsections'] !== undefined) {
      out.subsections = arr(o['subsections'], `${path}.subsections`).map((s, i) => struct(s, `${path}.subsections[${i}]`, depth + 1));
    }
    return out;
  };
  const field = (v: unknown, path: string, depth: number): VmdescField => {
    const o = obj(v, path);
    const out: VmdescField = { name: str(o['name'], `${path}.name`), type: str(o['type'], `${path}.type`), size: int(o['size'], `${path}.size`) };
    if (o['array_len'] !== undefined) out.array_len = int(o['array_len'], `${path}.array_len`);
    if (o['index'] !== undefined) out.index = int(o['index'], `${path}.index`);
    if (o['struct'] !== undefined) out.struct = struct(o['struct'], `${path}.struct`, depth + 1);
    else if (out.type === 'struct') fail(path, 'has type "struct" but no "struct" description');
    return out;
  };

  const root = obj(value, 'the root');
  const devices = arr(root['devices'], 'devices').map((d, i): VmdescDevice => {
    const path = `devices[${i}]`;
    const o = obj(d, path);
    const body = struct(o, path, 0);
    return { name: str(o['name'], `${path}.name`), instance_id: int(o['instance_id'], `${path}.instance_id`), ...body };
  });
  return { page_size: int(root['page_size'], 'page_size'), devices };
}

export function hex(v: number, digits: number): string {
  return v.toString(16).padStart(digits, '0');
}
