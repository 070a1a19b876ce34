// The transport layer's front door: a migration URI in, a Channel (source) or a Listener
// (destination) out. Each URI kind lives in its own file; this one only dispatches.

import { debuglog } from 'node:util';
import { ConfigError } from '../errors.js';
import type { Channel, Listener } from './channel.js';
import { execChannel } from './exec.js';
import { fdChannel, SingleChannelListener } from './fd.js';
import { connectSocket, listenSocket } from './socket.js';
import { formatMigrationUri, parseMigrationUri, type MigrationUri } from './uri.js';
import type { TlsSetup } from './tls.js';

export interface TransportOptions {
  /** Maps a getfd name to its descriptor (the QMP server's FdRegistry.take); needed for fd:NAME. */
  readonly resolveFdName?: (name: string) => number;
  /** write() resolves at once while fewer bytes than this are queued (default 8 MiB). */
  readonly writeHighWaterMark?: number;
  /** Reading from the OS pauses while this many received bytes wait for read() (default 8 MiB). */
  readonly readHighWaterMark?: number;
  /** tcp:/unix: connect only: give up after this long. */
  readonly connectTimeoutMs?: number;
  /** tcp:/unix: each socket's kernel buffers, both ways, instead of the large ones a peer on this host gets. */
  readonly socketBufferBytes?: number;
  /** exec: only: the shell that runs the command with -c (default /bin/sh). */
  readonly shell?: string;
  /**
   * tcp:/unix: make every connection a TLS session, Node's TLS on the socket itself; the
   * channels then say `tls`. Other transports leave it to the caller (tls.ts wraps any channel).
   */
  readonly tls?: TlsSetup;
}

const debug = debuglog('ferry');

/** Source side: open the URI and return a connected Channel. */
export async function connect(uri: string | MigrationUri, options: TransportOptions = {}): Promise<Channel> {
  const parsed = typeof uri === 'string' ? parseMigrationUri(uri) : uri;
  debug('transport: connecting to %s', formatMigrationUri(parsed));
  switch (parsed.kind) {
    case 'tcp':
      if (parsed.port === 0) {
        throw new ConfigError(`Cannot connect to ${formatMigrationUri(parsed)}: port 0 is only meaningful when listening`);
      }
      return connectSocket(parsed, options);
    case 'unix':
      return connectSocket(parsed, options);
    case 'fd':
    case 'fd-name':
      return fdChannel(parsed, 'send', options);
    case 'exec':
      return execChannel(parsed.command, options);
  }
}

/** Destination side: start listening on the URI (for tcp, port 0 picks a free port; see Listener.address). */
export async function listen(uri: string | MigrationUri, options: TransportOptions = {}): Promise<Listener> {
  const parsed = typeof uri === 'string' ? parseMigrationUri(uri) : uri;
  debug('transport: listening on %s', formatMigrationUri(parsed));
  switch (parsed.kind) {
    case 'tcp':
    case 'unix':
      return listenSocket(parsed, options);
    case 'fd':
    case 'fd-name': {
      const channel = fdChannel(parsed, 'receive', options);
      return new SingleChannelListener(channel, channel.description);
    }
    case 'exec': {
      const channel = await execChannel(parsed.command, options);
      return new SingleChannelListener(channel, channel.description);
    }
  }
}
