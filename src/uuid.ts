// UUIDs as QEMU takes and prints them (-uuid, query-uuid, the migration stream's
// configuration/uuid): 16 bytes, written 8-4-4-4-12 in lowercase hex.

import { ConfigError } from './errors.js';

const UUID_TEXT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The 16 bytes of "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", or undefined when it is not one. */
export function parseUuid(text: string): Uint8Array | undefined {
  if (!UUID_TEXT.test(text)) return undefined;
  const hex = text.replace(/-/g, '');
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 16; i++) bytes[i] = Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return bytes;
}

export function formatUuid(bytes: Uint8Array): string {
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** The 16 bytes of a --uuid value; a ConfigError that shows the expected form otherwise. */
export function uuidOption(text: string): Uint8Array {
  const uuid = parseUuid(text);
  if (uuid === undefined) throw new ConfigError(`Invalid --uuid "${text}": expected 32 hex digits as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`);
  return uuid;
}

/** QEMU's UUID when -uuid was not given. */
export const NIL_UUID = new Uint8Array(16);
