// The commands a stream carries between sections (QEMU_VM_COMMAND) and the return path's
// messages back. Precopy: the source asks, in the stream, for the destination to answer on
// the same connection (MIG_CMD_OPEN_RETURN_PATH), and pings it; the destination answers
// each ping with a PONG and, once it has loaded the whole stream (or failed to), says so
// with SHUT — so the source completes only when the destination has the guest, and runs it
// again otherwise. Post-copy adds ADVISE (at the start), the RAM DISCARD lists, a PACKAGED
// stream (LISTEN, the device state, RUN) and, back, the destination's page requests
// (migration.c, savevm.c).

import { StreamFormatError } from '../errors.js';
import { hex, QEMU_VM_COMMAND } from './format.js';
import type { StreamReader } from './reader.js';
import type { StreamWriter } from './writer.js';

/** savevm.c enum qemu_vm_cmd. */
export const MIG_CMD_OPEN_RETURN_PATH = 1;
export const MIG_CMD_PING = 2;
export const MIG_CMD_POSTCOPY_ADVISE = 3;
export const MIG_CMD_POSTCOPY_LISTEN = 4;
export const MIG_CMD_POSTCOPY_RUN = 5;
export const MIG_CMD_POSTCOPY_RAM_DISCARD = 6;
export const MIG_CMD_PACKAGED = 7;
/** Post-copy recovery: the source resumes on a new connection (savevm.c). */
export const MIG_CMD_POSTCOPY_RESUME = 9;
export const MIG_CMD_RECV_BITMAP = 10;
/** ram.c RAMBLOCK_RECV_BITMAP_ENDING: the mark after a received bitmap. */
export const RECV_BITMAP_ENDING = 0x0123456789abcdefn;
/** migration.c MIGRATION_RESUME_ACK_VALUE. */
export const RESUME_ACK_VALUE = 1;
/** savevm.c MAX_VM_CMD_PACKAGED_SIZE: the largest package a destination reads. */
export const MAX_PACKAGED_BYTES = 1 << 24;
/** postcopy-ram.c: ranges per DISCARD command as QEMU's source sends them, and the version byte. */
export const MAX_DISCARDS_PER_COMMAND = 12;
const POSTCOPY_RAM_DISCARD_VERSION = 0;
/** migration.c enum mig_rp_message_type: messages from the destination. */
export const MIG_RP_MSG_SHUT = 1;
export const MIG_RP_MSG_PONG = 2;
export const MIG_RP_MSG_REQ_PAGES_ID = 3;
export const MIG_RP_MSG_REQ_PAGES = 4;
export const MIG_RP_MSG_RECV_BITMAP = 5;
export const MIG_RP_MSG_RESUME_ACK = 6;
/** Anything from here on: refused. */
const MIG_RP_MSG_MAX = 7;
/** The largest received bitmap taken: one of a 1 TiB block (Ferry's largest guest). */
const MAX_RECV_BITMAP_BYTES = 2 ** 40 / 4096 / 8;

/** QEMU_VM_COMMAND with `data` (at most 65535 bytes). */
export function writeCommand(w: StreamWriter, command: number, data: Uint8Array = new Uint8Array(0)): void {
  w.bytes(encodeCommand(command, data));
}

/** The bytes of a QEMU_VM_COMMAND: u8 0x08, be16 command, be16 length, data. */
export function encodeCommand(command: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  if (data.byteLength > 0xffff) throw new RangeError(`command 0x${hex(command, 4)} carries ${data.byteLength} bytes, more than 65535`);
  const out = new Uint8Array(5 + data.byteLength);
  const view = new DataView(out.buffer);
  view.setUint8(0, QEMU_VM_COMMAND);
  view.setUint16(1, command);
  view.setUint16(3, data.byteLength);
  out.set(data, 5);
  return out;
}

/** POSTCOPY_ADVISE's data: the source's page-size summary and target page size (be64 each). */
export function postcopyAdviseData(pageSizeSummary: number, targetPageSize: number): Uint8Array {
  const out = new Uint8Array(16);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(pageSizeSummary));
  view.setBigUint64(8, BigInt(targetPageSize));
  return out;
}

/** A byte range of a RAM block. */
export interface BlockRange {
  readonly start: number;
  readonly length: number;
}

/**
 * POSTCOPY_RAM_DISCARD's data (qemu_savevm_send_postcopy_ram_discard): u8 version 0, the
 * block's name as a counted string with a NUL after it, then be64 start and be64 length
 * per range, in bytes.
 */
export function discardData(idstr: string, ranges: readonly BlockRange[]): Uint8Array {
  const name = new TextEncoder().encode(idstr);
  if (name.byteLength === 0 || name.byteLength > 255) throw new RangeError(`RAM block name "${idstr}" must be 1 to 255 bytes`);
  const out = new Uint8Array(3 + name.byteLength + 16 * ranges.length);
  const view = new DataView(out.buffer);
  out[0] = POSTCOPY_RAM_DISCARD_VERSION;
  out[1] = name.byteLength;
  out.set(name, 2);
  let at = 3 + name.byteLength;
  for (const { start, length } of ranges) {
    view.setBigUint64(at, BigInt(start));
    view.setBigUint64(at + 8, BigInt(length));
    at += 16;
  }
  return out;
}

/**
 * A page request (migrate_send_rp_message_req_pages): be64 start, be32 length, and — when
 * it names another block than the last request did — the block's name as a counted string
 * (REQ_PAGES_ID); without it REQ_PAGES.
 */
export function encodePageRequest(start: number, length: number, idstr?: string): Uint8Array {
  const name = idstr === undefined ? undefined : new TextEncoder().encode(idstr);
  if (name !== undefined && (name.byteLength === 0 || name.byteLength > 255)) throw new RangeError(`RAM block name "${idstr}" must be 1 to 255 bytes`);
  const data = new Uint8Array(12 + (name === undefined ? 0 : 1 + name.byteLength));
  const view = new DataView(data.buffer);
  view.setBigUint64(0, BigInt(start));
  view.setUint32(8, length);
  if (name !== undefined) {
    data[12] = name.byteLength;
    data.set(name, 13);
  }
  return encodeRpMessage(name === undefined ? MIG_RP_MSG_REQ_PAGES : MIG_RP_MSG_REQ_PAGES_ID, data);
}

export function be32Bytes(value: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value >>> 0);
  return out;
}

/** A return-path message: be16 type, be16 length, data (migrate_send_rp_message). */
export function encodeRpMessage(type: number, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + data.byteLength);
  const view = new DataView(out.buffer);
  view.setUint16(0, type);
  view.setUint16(2, data.byteLength);
  out.set(data, 4);
  return out;
}

/** RECV_BITMAP's data: the block's name as a counted string (qemu_savevm_send_recv_bitmap). */
export function recvBitmapData(idstr: string): Uint8Array {
  const name = new TextEncoder().encode(idstr);
  if (name.byteLength === 0 || name.byteLength > 255) throw new RangeError(`RAM block name "${idstr}" must be 1 to 255 bytes`);
  const out = new Uint8Array(1 + name.byteLength);
  out[0] = name.byteLength;
  out.set(name, 1);
  return out;
}

/**
 * A destination's answer to RECV_BITMAP (migrate_send_rp_recv_bitmap, then
 * ramblock_recv_bitmap_send): the message with the block's name, then — on the return
 * path, outside the message — be64 the bitmap's size in bytes (a multiple of 8), the
 * bitmap (bit i of byte i / 8 for page i, set where the page has arrived) and be64
 * RECV_BITMAP_ENDING.
 */
export function encodeRecvBitmap(idstr: string, bitmap: Uint8Array): Uint8Array {
  const message = encodeRpMessage(MIG_RP_MSG_RECV_BITMAP, recvBitmapData(idstr));
  const size = Math.ceil(bitmap.byteLength / 8) * 8;
  const out = new Uint8Array(message.byteLength + 8 + size + 8);
  const view = new DataView(out.buffer);
  out.set(message, 0);
  view.setBigUint64(message.byteLength, BigInt(size));
  out.set(bitmap, message.byteLength + 8);
  view.setBigUint64(message.byteLength + 8 + size, RECV_BITMAP_ENDING);
  return out;
}

export type RpMessage =
  | { type: 'shut'; value: number }
  | { type: 'pong'; value: number }
  /** A post-copy page request; `idstr` absent: the block the last request named. */
  | { type: 'req-pages'; start: number; length: number; idstr?: string }
  /** Post-copy recovery: the pages of block `idstr` the destination has (bit set: arrived). */
  | { type: 'recv-bitmap'; idstr: string; bitmap: Uint8Array }
  | { type: 'resume-ack'; value: number };

/**
 * The next return-path message, or null at a clean end of stream. Page requests only
 * where `postcopy` says they may come; those, other messages (post-copy recovery's) and
 * malformed ones are refused with the offset, as QEMU's source_return_path_thread
 * refuses them.
 */
export async function readRpMessage(r: StreamReader, postcopy = false): Promise<RpMessage | null> {
  if (await r.atEnd()) return null;
  await r.ensure(4, 'return path');
  const at = r.offset;
  const type = r.be16();
  const len = r.be16();
  await r.ensure(len, 'return path');
  if (type === MIG_RP_MSG_SHUT || type === MIG_RP_MSG_PONG) {
    if (len !== 4) {
      throw new StreamFormatError(`Return-path message 0x${hex(type, 4)} at offset ${at}: length ${len}, expected 4`, at, 'return path');
    }
    const value = r.be32();
    return type === MIG_RP_MSG_SHUT ? { type: 'shut', value } : { type: 'pong', value };
  }
  if (postcopy && (type === MIG_RP_MSG_REQ_PAGES || type === MIG_RP_MSG_REQ_PAGES_ID)) {
    const data = r.bytes(len);
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const idLength = type === MIG_RP_MSG_REQ_PAGES_ID && len >= 13 ? data[12]! : 0;
    const expected = type === MIG_RP_MSG_REQ_PAGES ? 12 : 13 + idLength;
    if (len !== expected || (type === MIG_RP_MSG_REQ_PAGES_ID && idLength === 0)) {
      throw new StreamFormatError(`Return-path message 0x${hex(type, 4)} at offset ${at}: length ${len}, expected ${type === MIG_RP_MSG_REQ_PAGES ? 12 : '13 + a block name of 1 to 255 bytes'}`, at, 'return path');
    }
    const start = Number(view.getBigUint64(0));
    const length = view.getUint32(8);
    if (type === MIG_RP_MSG_REQ_PAGES) return { type: 'req-pages', start, length };
    return { type: 'req-pages', start, length, idstr: new TextDecoder().decode(data.subarray(13, 13 + idLength)) };
  }
  if (postcopy && type === MIG_RP_MSG_RESUME_ACK) {
    if (len !== 4) throw new StreamFormatError(`Return-path message 0x${hex(type, 4)} at offset ${at}: length ${len}, expected 4`, at, 'return path');
    return { type: 'resume-ack', value: r.be32() };
  }
  if (postcopy && type === MIG_RP_MSG_RECV_BITMAP) {
    const data = r.bytes(len);
    if (len < 2 || data[0] !== len - 1) {
      throw new StreamFormatError(`Return-path message 0x${hex(type, 4)} at offset ${at}: length ${len} does not hold its block name`, at, 'return path');
    }
    const idstr = new TextDecoder().decode(data.subarray(1));
    await r.ensure(8, 'return path');
    const size = r.be64();
    if (size % 8n !== 0n || size > BigInt(MAX_RECV_BITMAP_BYTES)) {
      throw new StreamFormatError(`Received bitmap of "${idstr}" at offset ${at}: ${size} bytes, not a multiple of 8 up to ${MAX_RECV_BITMAP_BYTES}`, at, 'return path');
    }
    await r.ensure(Number(size) + 8, 'return path');
    const bitmap = r.bytes(Number(size));
    const ending = r.be64();
    if (ending !== RECV_BITMAP_ENDING) {
      throw new StreamFormatError(`Received bitmap of "${idstr}" at offset ${at}: end mark 0x${ending.toString(16)}, expected 0x${RECV_BITMAP_ENDING.toString(16)}`, at, 'return path');
    }
    return { type: 'recv-bitmap', idstr, bitmap };
  }
  const what = type > MIG_RP_MSG_SHUT && type < MIG_RP_MSG_MAX ? ' (a post-copy message, and this migration is not doing post-copy)' : '';
  throw new StreamFormatError(`Received invalid return-path message 0x${hex(type, 4)} length 0x${hex(len, 4)} at offset ${at}${what}`, at, 'return path');
}

/** What a stream's command asks of the destination. */
export type StreamCommand =
  | { type: 'open-return-path' }
  | { type: 'ping'; value: number }
  /** Without page sizes: the source will not do post-copy (it sends an empty ADVISE then). */
  | { type: 'postcopy-advise'; pageSizeSummary?: number; targetPageSize?: number }
  | { type: 'postcopy-listen' }
  | { type: 'postcopy-run' }
  | { type: 'postcopy-ram-discard'; idstr: string; ranges: BlockRange[] }
  /** `length` bytes of a stream of their own follow the command. */
  | { type: 'packaged'; length: number }
  /** Post-copy recovery, on the new connection: send back which pages of `idstr` arrived, then resume. */
  | { type: 'recv-bitmap'; idstr: string }
  | { type: 'postcopy-resume' };

/** The commands the return path answers. */
export type ReturnPathCommand = Extract<StreamCommand, { type: 'open-return-path' | 'ping' }>;

/**
 * Check a QEMU_VM_COMMAND's data as QEMU's loadvm_process_command does, and say what it
 * asks; COLO and post-copy recovery's commands, unknown ones and malformed ones are
 * refused with the offset.
 */
export function streamCommand(command: number, data: Uint8Array, offset: number): StreamCommand {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const len = data.byteLength;
  const wrongLength = (expected: string): StreamFormatError =>
    new StreamFormatError(`Command 0x${hex(command, 4)} (${COMMAND_NAMES[command]}) at offset ${offset} carries ${len} bytes, expected ${expected}`, offset, 'command');
  switch (command) {
    case MIG_CMD_OPEN_RETURN_PATH:
      if (len !== 0) throw wrongLength('0');
      return { type: 'open-return-path' };
    case MIG_CMD_PING:
      if (len !== 4) throw wrongLength('4');
      return { type: 'ping', value: view.getUint32(0) };
    case MIG_CMD_POSTCOPY_ADVISE:
      if (len === 0) return { type: 'postcopy-advise' };
      if (len !== 16) throw wrongLength('0 or 16');
      return { type: 'postcopy-advise', pageSizeSummary: Number(view.getBigUint64(0)), targetPageSize: Number(view.getBigUint64(8)) };
    case MIG_CMD_POSTCOPY_LISTEN:
      if (len !== 0) throw wrongLength('0');
      return { type: 'postcopy-listen' };
    case MIG_CMD_POSTCOPY_RUN:
      if (len !== 0) throw wrongLength('0');
      return { type: 'postcopy-run' };
    case MIG_CMD_POSTCOPY_RAM_DISCARD: {
      if (len < 1 + 1 + 1 + 1 + 16) throw wrongLength('at least 20');
      if (data[0] !== POSTCOPY_RAM_DISCARD_VERSION) {
        throw new StreamFormatError(`CMD_POSTCOPY_RAM_DISCARD at offset ${offset}: version ${data[0]}, expected ${POSTCOPY_RAM_DISCARD_VERSION}`, offset, 'command');
      }
      const nameLength = data[1]!;
      if (nameLength === 0 || 3 + nameLength > len) {
        throw new StreamFormatError(`CMD_POSTCOPY_RAM_DISCARD at offset ${offset}: a block name of ${nameLength} bytes does not fit its ${len}`, offset, 'command');
      }
      if (data[2 + nameLength] !== 0) {
        throw new StreamFormatError(`CMD_POSTCOPY_RAM_DISCARD at offset ${offset}: the block name is not followed by its NUL`, offset, 'command');
      }
      const rangeBytes = len - 3 - nameLength;
      if (rangeBytes === 0 || rangeBytes % 16 !== 0) {
        throw new StreamFormatError(`CMD_POSTCOPY_RAM_DISCARD at offset ${offset}: ${rangeBytes} bytes of ranges, not a whole number of 16-byte ranges`, offset, 'command');
      }
      const ranges: BlockRange[] = [];
      for (let at = 3 + nameLength; at < len; at += 16) {
        ranges.push({ start: Number(view.getBigUint64(at)), length: Number(view.getBigUint64(at + 8)) });
      }
      return { type: 'postcopy-ram-discard', idstr: new TextDecoder().decode(data.subarray(2, 2 + nameLength)), ranges };
    }
    case MIG_CMD_PACKAGED: {
      if (len !== 4) throw wrongLength('4');
      const length = view.getUint32(0);
      if (length > MAX_PACKAGED_BYTES) {
        throw new StreamFormatError(`CMD_PACKAGED at offset ${offset}: ${length} bytes, more than the ${MAX_PACKAGED_BYTES} a package may hold`, offset, 'command');
      }
      return { type: 'packaged', length };
    }
    case MIG_CMD_POSTCOPY_RESUME:
      if (len !== 0) throw wrongLength('0');
      return { type: 'postcopy-resume' };
    case MIG_CMD_RECV_BITMAP:
      if (len < 2 || data[0] !== len - 1) throw wrongLength('1 + the length of the block name it starts with');
      return { type: 'recv-bitmap', idstr: new TextDecoder().decode(data.subarray(1)) };
    default:
      throw new StreamFormatError(`Command 0x${hex(command, 4)} at offset ${offset} is not supported (${COMMAND_NAMES[command] ?? 'unknown'}; Ferry takes precopy and post-copy streams)`, offset, 'command');
  }
}

/** savevm.c's names of the commands, for errors. */
const COMMAND_NAMES: Record<number, string> = {
  1: 'OPEN_RETURN_PATH', 2: 'PING', 3: 'POSTCOPY_ADVISE', 4: 'POSTCOPY_LISTEN', 5: 'POSTCOPY_RUN',
  6: 'POSTCOPY_RAM_DISCARD', 7: 'PACKAGED', 8: 'ENABLE_COLO', 9: 'POSTCOPY_RESUME', 10: 'RECV_BITMAP',
};
