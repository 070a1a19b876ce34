// QEMU's migration URI forms (tcp:HOST:PORT, unix:PATH, fd:N / fd:NAME, exec:COMMAND)
// parsed into one tagged union, so every transport and every error message agrees on them.
// `defer` is not a transport: the destination's caller handles it before it gets here.

import { ConfigError } from '../errors.js';

export type MigrationUri =
  | {
      readonly kind: 'tcp';
      /** As written, without IPv6 brackets; '' means "any address" when listening, localhost when connecting. */
      readonly host: string;
      readonly port: number;
      /** From QEMU's `,ipv4` / `,ipv6` options: restrict name resolution to one family. */
      readonly family: 4 | 6 | undefined;
    }
  | { readonly kind: 'unix'; readonly path: string }
  | { readonly kind: 'fd'; readonly fd: number }
  | { readonly kind: 'fd-name'; readonly name: string }
  | { readonly kind: 'exec'; readonly command: string };

/** The longest unix socket path Linux takes (sun_path is 108 bytes, one for the NUL). */
export const UNIX_PATH_MAX = 107;

export function parseMigrationUri(uri: string): MigrationUri {
  const colon = uri.indexOf(':');
  if (colon < 0) {
    if (uri === 'defer') {
      throw new ConfigError('Migration URI "defer" is not a transport: use migrate-incoming to give the real URI');
    }
    throw new ConfigError(
      `Invalid migration URI "${uri}": expected tcp:HOST:PORT, unix:PATH, fd:N, fd:NAME or exec:COMMAND`,
    );
  }
  const scheme = uri.slice(0, colon);
  const rest = uri.slice(colon + 1);
  switch (scheme) {
    case 'tcp':
      return parseTcp(uri, rest);
    case 'unix':
      return parseUnix(uri, rest);
    case 'fd':
      return parseFd(uri, rest);
    case 'exec':
      if (rest.trim() === '') throw new ConfigError(`Invalid migration URI "${uri}": exec: needs a command`);
      return { kind: 'exec', command: rest };
    default:
      throw new ConfigError(
        `Invalid migration URI "${uri}": unknown transport "${scheme}" (expected tcp, unix, fd or exec)`,
      );
  }
}

/** The canonical text of a parsed URI, as used in Channel descriptions and messages. */
export function formatMigrationUri(parsed: MigrationUri): string {
  switch (parsed.kind) {
    case 'tcp': {
      const host = parsed.host.includes(':') ? `[${parsed.host}]` : parsed.host;
      const family = parsed.family === undefined ? '' : `,ipv${parsed.family}`;
      return `tcp:${host}:${parsed.port}${family}`;
    }
    case 'unix':
      return `unix:${parsed.path}`;
    case 'fd':
      return `fd:${parsed.fd}`;
    case 'fd-name':
      return `fd:${parsed.name}`;
    case 'exec':
      return `exec:${parsed.command}`;
  }
}

function parseTcp(uri: string, rest: string): MigrationUri {
  // QEMU (inet_parse) allows ",option" suffixes; only the address-family ones mean anything here.
  const [address = '', ...options] = rest.split(',');
  let family: 4 | 6 | undefined;
  for (const option of options) {
    if (option === 'ipv4' || option === 'ipv4=on') family = setFamily(uri, family, 4);
    else if (option === 'ipv6' || option === 'ipv6=on') family = setFamily(uri, family, 6);
    else throw new ConfigError(`Invalid migration URI "${uri}": unsupported tcp option "${option}"`);
  }
  let host: string;
  let portText: string;
  if (address.startsWith('[')) {
    const close = address.indexOf(']');
    if (close < 0) throw new ConfigError(`Invalid migration URI "${uri}": "[" of an IPv6 address is not closed`);
    host = address.slice(1, close);
    if (address[close + 1] !== ':') {
      throw new ConfigError(`Invalid migration URI "${uri}": expected ":PORT" after the IPv6 address [${host}]`);
    }
    portText = address.slice(close + 2);
    if (!host.includes(':')) {
      throw new ConfigError(`Invalid migration URI "${uri}": "${host}" in brackets is not an IPv6 address`);
    }
  } else {
    const lastColon = address.lastIndexOf(':');
    if (lastColon < 0) throw new ConfigError(`Invalid migration URI "${uri}": tcp: needs HOST:PORT`);
    host = address.slice(0, lastColon);
    portText = address.slice(lastColon + 1);
    if (host.includes(':')) {
      throw new ConfigError(`Invalid migration URI "${uri}": an IPv6 address must be written in brackets, [${host}]:PORT`);
    }
  }
  if (!/^\d{1,5}$/.test(portText)) {
    throw new ConfigError(`Invalid migration URI "${uri}": port "${portText}" is not a number from 0 to 65535`);
  }
  const port = Number(portText);
  if (port > 65535) throw new ConfigError(`Invalid migration URI "${uri}": port ${port} is above 65535`);
  if (/[\s/]/.test(host)) throw new ConfigError(`Invalid migration URI "${uri}": "${host}" is not a host name`);
  return { kind: 'tcp', host, port, family };
}

function setFamily(uri: string, current: 4 | 6 | undefined, wanted: 4 | 6): 4 | 6 {
  if (current !== undefined && current !== wanted) {
    throw new ConfigError(`Invalid migration URI "${uri}": ipv4 and ipv6 cannot both be asked for`);
  }
  return wanted;
}

function parseUnix(uri: string, path: string): MigrationUri {
  if (path === '') throw new ConfigError(`Invalid migration URI "${uri}": unix: needs a socket path`);
  if (path.includes('\0')) throw new ConfigError(`Invalid migration URI "${uri}": the socket path contains a NUL byte`);
  if (new TextEncoder().encode(path).length > UNIX_PATH_MAX) {
    throw new ConfigError(
      `Invalid migration URI "${uri}": the socket path is longer than ${UNIX_PATH_MAX} bytes, the limit of a unix socket address`,
    );
  }
  return { kind: 'unix', path };
}

function parseFd(uri: string, rest: string): MigrationUri {
  if (rest === '') throw new ConfigError(`Invalid migration URI "${uri}": fd: needs a descriptor number or a name from getfd`);
  // QEMU (monitor_fd_param) reads a leading digit as a number, anything else as a getfd name.
  if (/^\d/.test(rest)) {
    if (!/^\d+$/.test(rest) || !Number.isSafeInteger(Number(rest)) || Number(rest) > 0x7fffffff) {
      throw new ConfigError(`Invalid migration URI "${uri}": "${rest}" is not a file descriptor number`);
    }
    return { kind: 'fd', fd: Number(rest) };
  }
  if (/[\s,]/.test(rest)) throw new ConfigError(`Invalid migration URI "${uri}": "${rest}" is not a descriptor name`);
  return { kind: 'fd-name', name: rest };
}
