// Turns what Node reports for a broken socket, pipe or file (ECONNREFUSED, EPIPE, …)
// into a TransportError that names the channel, so every transport words failures alike.

import { getSystemErrorName } from 'node:util';
import { TransportError } from '../errors.js';

/** The errno-style code of a Node system error, if it has one. */
export function errorCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}

/**
 * Wrap `err` unless it already is a TransportError. `action` is a gerund phrase that
 * reads before the description: "connecting to", "reading from", "writing to".
 */
export function toTransportError(err: unknown, description: string, action: string): TransportError {
  if (err instanceof TransportError) return err;
  const code = errorCode(err);
  const detail = err instanceof Error ? err.message : String(err);
  switch (code) {
    case 'ECONNREFUSED':
      return new TransportError(`Connection refused at ${description}`, { cause: err });
    case 'ECONNRESET':
      return new TransportError(`Connection reset by the peer while ${action} ${description}`, { cause: err });
    case 'EPIPE':
      return new TransportError(`The peer closed the connection while ${action} ${description} (broken pipe)`, { cause: err });
    case 'ENOENT':
      return new TransportError(`Failed ${action} ${description}: no such file or socket`, { cause: err });
    case 'EADDRINUSE':
      return new TransportError(`Failed ${action} ${description}: the address is already in use`, { cause: err });
    case 'ETIMEDOUT':
      return new TransportError(`Timed out ${action} ${description}`, { cause: err });
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return new TransportError(`Failed ${action} ${description}: no route to the host (${code})`, { cause: err });
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new TransportError(`Failed ${action} ${description}: the host name does not resolve (${code})`, {
        cause: err,
      });
    default:
      return new TransportError(`Failed ${action} ${description}: ${detail}`, { cause: err });
  }
}

/** A failed system call on a channel's descriptor (`-errno` as the libc wrappers return it), worded as toTransportError words Node's errors. */
export function syscallError(call: string, negativeErrno: number, description: string, action: string): TransportError {
  const code = getSystemErrorName(negativeErrno);
  return toTransportError(Object.assign(new Error(`${call}: ${code}`), { code }), description, action);
}
