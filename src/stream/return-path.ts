// The return path (QEMU's `return-path` capability): the source asks, in the stream, for
// the destination to answer on the same connection (MIG_CMD_OPEN_RETURN_PATH), and pings
// it; the destination answers each ping with a PONG and, once it has loaded the whole
// stream (or failed to), says so with SHUT — so the source completes only when the
// destination has the guest, and runs it again otherwise (migration.c, savevm.c).

import { StreamFormatError } from '../errors.js';
import { hex, QEMU_VM_COMMAND } from './format.js';
import type { StreamReader } from './reader.js';
import type { StreamWriter } from './writer.js';

/** savevm.c enum qemu_vm_cmd: the commands a precopy stream may carry. */
export const MIG_CMD_OPEN_RETURN_PATH = 1;
export const MIG_CMD_PING = 2;
/** migration.c enum mig_rp_message_type: messages from the destination. */
export const MIG_RP_MSG_SHUT = 1;
export const MIG_RP_MSG_PONG = 2;
/** The postcopy-only messages (REQ_PAGES_ID … RESUME_ACK) and anything above: refused. */
const MIG_RP_MSG_MAX = 7;

/** QEMU_VM_COMMAND with `data` (at most 65535 bytes). */
export function writeCommand(w: StreamWriter, command: number, data: Uint8Array = new Uint8Array(0)): void {
  w.u8(QEMU_VM_COMMAND);
  w.be16(command);
  w.be16(data.byteLength);
  w.bytes(data);
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

export type RpMessage = { type: 'shut'; value: number } | { type: 'pong'; value: number };

/**
 * The next return-path message, or null at a clean end of stream. Messages Ferry's
 * precopy source never asked for (postcopy page requests) and malformed ones are refused
 * with the offset, as QEMU's source_return_path_thread refuses them.
 */
export async function readRpMessage(r: StreamReader): Promise<RpMessage | null> {
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
  const what = type > MIG_RP_MSG_SHUT && type < MIG_RP_MSG_MAX ? ' (a postcopy request, and this is a precopy migration)' : '';
  throw new StreamFormatError(`Received invalid return-path message 0x${hex(type, 4)} length 0x${hex(len, 4)} at offset ${at}${what}`, at, 'return path');
}

/** What a precopy stream's command asks of the destination. */
export type PrecopyCommand = { type: 'open-return-path' } | { type: 'ping'; value: number };

/**
 * Check a QEMU_VM_COMMAND a precopy stream may carry — OPEN_RETURN_PATH (no data) and
 * PING (be32) — and refuse the rest (postcopy, packaged, COLO…) with the offset.
 */
export function precopyCommand(command: number, data: Uint8Array, offset: number): PrecopyCommand {
  if (command === MIG_CMD_OPEN_RETURN_PATH && data.byteLength === 0) return { type: 'open-return-path' };
  if (command === MIG_CMD_PING && data.byteLength === 4) return { type: 'ping', value: new DataView(data.buffer, data.byteOffset, 4).getUint32(0) };
  if (command === MIG_CMD_OPEN_RETURN_PATH || command === MIG_CMD_PING) {
    throw new StreamFormatError(`Command 0x${hex(command, 4)} at offset ${offset} carries ${data.byteLength} bytes, expected ${command === MIG_CMD_PING ? 4 : 0}`, offset, 'command');
  }
  throw new StreamFormatError(`Command 0x${hex(command, 4)} at offset ${offset} is not supported (a postcopy, packaged or COLO command; Ferry takes precopy streams)`, offset, 'command');
}
