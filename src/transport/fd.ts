// fd:N and fd:NAME — a descriptor this process already holds (inherited, or handed over
// by QMP getfd and resolved by name) becomes a Channel. The channel owns the descriptor
// and closes it when torn down, as QEMU does.

import { fstatSync } from 'node:fs';
import net from 'node:net';
import { ConfigError, TransportError } from '../errors.js';
import type { Channel, Listener } from './channel.js';
import { toTransportError } from './errors.js';
import { FileChannel } from './file-channel.js';
import { PooledReads } from './read-pool.js';
import { tuneIfLocal } from './socket-buffers.js';
import { socketFd } from './socket.js';
import { DEFAULT_READ_HIGH_WATER_MARK, DEFAULT_WRITE_HIGH_WATER_MARK, StreamChannel } from './stream-channel.js';
import type { MigrationUri } from './uri.js';

type FdUri = Extract<MigrationUri, { kind: 'fd' | 'fd-name' }>;

export interface FdOptions {
  /** Maps a getfd name to its descriptor (the QMP server's FdRegistry.take); needed for fd:NAME. */
  readonly resolveFdName?: (name: string) => number;
  readonly writeHighWaterMark?: number;
  readonly readHighWaterMark?: number;
}

/**
 * Which way the bytes go matters only for a pipe, which has one direction: the source
 * ('send') writes to it, the destination ('receive') reads from it. Sockets and files
 * are opened both ways.
 */
export type FdRole = 'send' | 'receive';

export function resolveFd(uri: FdUri, options: FdOptions): number {
  if (uri.kind === 'fd') return uri.fd;
  if (!options.resolveFdName) {
    throw new ConfigError(`Cannot use fd:${uri.name}: no descriptor named "${uri.name}" was passed with getfd`);
  }
  let fd: number;
  try {
    fd = options.resolveFdName(uri.name);
  } catch (err) {
    if (err instanceof ConfigError || err instanceof TransportError) throw err;
    throw new ConfigError(`Cannot use fd:${uri.name}: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
    });
  }
  if (!Number.isInteger(fd) || fd < 0) {
    throw new ConfigError(`Cannot use fd:${uri.name}: the name resolved to ${fd}, not a descriptor`);
  }
  return fd;
}

export function fdChannel(uri: FdUri, role: FdRole, options: FdOptions = {}): Channel {
  const fd = resolveFd(uri, options);
  const description = uri.kind === 'fd' ? `fd:${fd}` : `fd:${uri.name} (descriptor ${fd})`;
  let stats;
  try {
    stats = fstatSync(fd);
  } catch (err) {
    throw toTransportError(err, description, 'opening');
  }
  const writableHighWaterMark = options.writeHighWaterMark ?? DEFAULT_WRITE_HIGH_WATER_MARK;
  const readHighWaterMark = options.readHighWaterMark ?? DEFAULT_READ_HIGH_WATER_MARK;
  if (stats.isSocket() || stats.isFIFO()) {
    const pipe = stats.isFIFO();
    const readable = !pipe || role === 'receive';
    const pooledReads = readable ? new PooledReads() : undefined;
    let socket: net.Socket;
    try {
      socket = new net.Socket({
        fd,
        readable,
        writable: !pipe || role === 'send',
        allowHalfOpen: false,
        writableHighWaterMark,
        ...(pooledReads ? { onread: pooledReads.onread } : {}),
      } as net.SocketConstructorOpts);
    } catch (err) {
      throw toTransportError(err, description, 'opening');
    }
    const tcp = !pipe && socket.remoteFamily !== undefined;
    if (!pipe) {
      if (tcp) socket.setNoDelay(true);
      tuneIfLocal(fd, tcp, socket.remoteAddress, description);
    }
    return new StreamChannel({
      description,
      readable: readable ? socket : null,
      writable: !pipe || role === 'send' ? socket : null,
      readHighWaterMark,
      ...(pooledReads ? { pooledReads } : {}),
      // Guest pages by reference, as for tcp: and unix: (direct-writes.ts).
      ...((!pipe || role === 'send') && socketFd(socket) !== undefined ? { directFd: () => socketFd(socket) } : {}),
      // A unix socket takes them through a pipe, as unix: does (spliced-writes.ts).
      ...(!pipe && !tcp ? { spliceWrites: true } : {}),
    });
  }
  if (stats.isFile() || stats.isCharacterDevice()) {
    return new FileChannel(fd, description, { writeHighWaterMark: writableHighWaterMark });
  }
  throw new TransportError(`Cannot use ${description}: it is neither a socket, a pipe, a file nor a character device`);
}

/** The destination's side of fd:: the descriptor is already connected, so accept() hands it over once. */
export class SingleChannelListener implements Listener {
  readonly description: string;
  readonly address: string;
  #channel: Channel | null;
  #closed = false;

  constructor(channel: Channel, description: string) {
    this.#channel = channel;
    this.description = description;
    this.address = description;
  }

  accept(): Promise<Channel> {
    const channel = this.#channel;
    if (channel) {
      this.#channel = null;
      return Promise.resolve(channel);
    }
    const why = this.#closed ? 'was closed' : 'has only one connection, and it was already accepted';
    return Promise.reject(new TransportError(`Listener on ${this.description} ${why}`));
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#channel?.destroy();
    this.#channel = null;
    return Promise.resolve();
  }
}
