// QMP socket addresses as Ferry and QEMU users write them: `unix:/path`, a bare path,
// `tcp:HOST:PORT`, `tcp:[::1]:PORT`, with QEMU's `,server=on,wait=off` options tolerated.

import { ConfigError } from '../errors.js';

export type QmpAddress =
  | { readonly kind: 'unix'; readonly path: string }
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number };

/** QEMU -qmp options that mean nothing more than "be a listening server" here. */
const IGNORED_OPTION = /^(server|wait|nowait|nodelay)(=(on|off|true|false|yes|no))?$/;

function stripQemuOptions(text: string, original: string): string {
  const [head, ...options] = text.split(',');
  for (const option of options) {
    if (!IGNORED_OPTION.test(option)) {
      throw new ConfigError(`Invalid QMP address "${original}": unknown option "${option}" (only server/wait are accepted)`);
    }
  }
  return head ?? '';
}

/**
 * Parse a QMP address. A string without a `unix:` or `tcp:` prefix is a unix socket path.
 * Port 0 asks the system for a free port (listen only).
 */
export function parseQmpAddress(text: string): QmpAddress {
  const original = text;
  const trimmed = text.trim();
  if (trimmed.startsWith('tcp:')) {
    const rest = stripQemuOptions(trimmed.slice(4), original);
    const match = /^(?:\[([^\]]*)\]|([^:[\]]*)):(\d{1,5})$/.exec(rest);
    if (!match) throw new ConfigError(`Invalid QMP address "${original}": expected tcp:HOST:PORT or tcp:[IPv6]:PORT`);
    const port = Number(match[3]);
    if (port > 65535) throw new ConfigError(`Invalid QMP address "${original}": port ${port} is above 65535`);
    const host = match[1] ?? match[2] ?? '';
    return { kind: 'tcp', host: host === '' ? '0.0.0.0' : host, port };
  }
  const path = stripQemuOptions(trimmed.startsWith('unix:') ? trimmed.slice(5) : trimmed, original);
  if (path === '') throw new ConfigError(`Invalid QMP address "${original}": the unix socket path is empty`);
  return { kind: 'unix', path };
}

export function formatQmpAddress(address: QmpAddress): string {
  if (address.kind === 'unix') return `unix:${address.path}`;
  return address.host.includes(':') ? `tcp:[${address.host}]:${address.port}` : `tcp:${address.host}:${address.port}`;
}
