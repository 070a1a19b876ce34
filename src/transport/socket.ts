// tcp: and unix: — connecting and listening stream sockets, as QEMU's migration/socket.c
// does for both. A connection becomes a StreamChannel; a listener queues connections.

import net from 'node:net';
import { lookup } from 'node:dns/promises';
import { lstat, unlink } from 'node:fs/promises';
import { debuglog } from 'node:util';
import { TransportError } from '../errors.js';
import type { Channel, Listener } from './channel.js';
import { toTransportError } from './errors.js';
import { adoptWithPooledReads, PooledReads } from './read-pool.js';
import { tuneIfLocal, sizeSocketBuffers, isLoopbackAddress, holdReceiveBuffer } from './socket-buffers.js';
import { secureSocketChannel, type TlsSetup } from './tls.js';
import { useLoopbackCongestion } from './loopback-congestion.js';
import { closeFd, setSocketBufferSize, tcpSocket } from '../sys/libc.js';
import { DEFAULT_READ_HIGH_WATER_MARK, DEFAULT_WRITE_HIGH_WATER_MARK, StreamChannel } from './stream-channel.js';
import { formatMigrationUri, type MigrationUri } from './uri.js';

const debug = debuglog('ferry');

type SocketUri = Extract<MigrationUri, { kind: 'tcp' | 'unix' }>;

export interface SocketOptions {
  readonly writeHighWaterMark?: number;
  readonly readHighWaterMark?: number;
  /** Give up connecting after this long (default: the OS's own timeout). */
  readonly connectTimeoutMs?: number;
  /**
   * Each socket's kernel buffers, both ways, instead of the large ones a peer on this host
   * gets (socket-buffers.ts). The warm-up's scratch migrations use small ones so that
   * their sockets fill up as a real migration's do.
   */
  readonly socketBufferBytes?: number;
  /** Make every connection a TLS session (Node's TLS on the socket itself: tls.ts). */
  readonly tls?: TlsSetup;
}

/**
 * A connected socket as a TLS session (tls.ts): tuned as socketChannel() tunes a plain one,
 * then the handshake; the socket is destroyed if it fails.
 */
function secureChannel(socket: net.Socket, description: string, options: SocketOptions, setup: TlsSetup): Promise<Channel> {
  const tcp = socket.remoteFamily !== undefined;
  if (tcp) socket.setNoDelay(true);
  const fd = socketFd(socket);
  if (fd !== undefined) tuneIfLocal(fd, tcp, socket.remoteAddress, description);
  return secureSocketChannel(socket, setup, description, fd, tcp && fd !== undefined ? (bytes) => holdReceiveBuffer(fd, bytes, description) : undefined);
}

/**
 * Wrap a connected socket; tcp sockets get TCP_NODELAY so the last small write is not held
 * back, and a socket to this host large kernel buffers (socket-buffers.ts) and, over tcp, a
 * congestion control that does not pace (loopback-congestion.ts). `pooledReads` is given
 * when the socket was created with its `onread`.
 */
export function socketChannel(
  socket: net.Socket,
  description: string,
  options: SocketOptions,
  pooledReads?: PooledReads,
): Channel {
  const tcp = socket.remoteFamily !== undefined;
  if (tcp) socket.setNoDelay(true);
  const fd = socketFd(socket);
  if (fd !== undefined) {
    tuneIfLocal(fd, tcp, socket.remoteAddress, description);
    if (options.socketBufferBytes !== undefined) {
      setSocketBufferSize(fd, 'send', options.socketBufferBytes);
      setSocketBufferSize(fd, 'receive', options.socketBufferBytes);
    }
  }
  return new StreamChannel({
    description,
    readable: socket,
    writable: socket,
    readHighWaterMark: options.readHighWaterMark ?? DEFAULT_READ_HIGH_WATER_MARK,
    ...(pooledReads ? { pooledReads } : {}),
    // Guest pages go from guest RAM to the kernel in one writev (see direct-writes.ts).
    ...(socketFd(socket) !== undefined ? { directFd: () => socketFd(socket) } : {}),
    // Over a unix socket, by reference through a pipe: the peer's read is the only copy.
    ...(tcp ? {} : { spliceWrites: true }),
    // A unix socket's unread bytes stay charged to the sender, which sees them (socket-buffers.ts).
    ...(tcp && fd !== undefined ? { receiveBuffer: (bytes: number) => holdReceiveBuffer(fd, bytes, description) } : {}),
  });
}

export function connectSocket(uri: SocketUri, options: SocketOptions = {}): Promise<Channel> {
  const description = formatMigrationUri(uri);
  const highWaterMark = options.writeHighWaterMark ?? DEFAULT_WRITE_HIGH_WATER_MARK;
  return new Promise<Channel>((resolve, reject) => {
    // A TLS session reads the socket itself: no pooled reads under it.
    const pooledReads = options.tls ? undefined : new PooledReads();
    const common = { writableHighWaterMark: highWaterMark, ...(pooledReads ? { onread: pooledReads.onread } : {}) } as net.SocketConstructorOpts;
    let socket: net.Socket | undefined;
    let timer: NodeJS.Timeout | undefined;
    let settled = false;
    const fail = (err: unknown): void => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      socket?.destroy();
      reject(toTransportError(err, description, 'connecting to'));
    };
    const onConnect = (): void => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      if (options.tls) secureChannel(socket!, description, options, options.tls).then(resolve, reject);
      else resolve(socketChannel(socket!, description, options, pooledReads));
    };
    if (options.connectTimeoutMs !== undefined) {
      timer = setTimeout(
        () => fail(new TransportError(`Timed out after ${options.connectTimeoutMs} ms connecting to ${description}`)),
        options.connectTimeoutMs,
      );
    }
    const attempt = (plain: boolean): void => {
      openSocket(uri, description, common, plain).then((opened) => {
        if (settled) {
          opened.socket.destroy();
          return;
        }
        socket = opened.socket;
        const onError = (err: Error): void => {
          // A name that resolves to more than one address (localhost: ::1 and 127.0.0.1):
          // the first one refused, Node's own connect tries them all.
          if (opened.byName && (err as NodeJS.ErrnoException).code === 'ECONNREFUSED' && !settled) {
            opened.socket.destroy();
            attempt(true);
            return;
          }
          fail(err);
        };
        socket.on('error', onError);
        socket.once('connect', () => {
          socket!.off('error', onError);
          onConnect();
        });
        opened.connect();
      }, fail);
    };
    attempt(false);
  });
}

/**
 * The socket connectSocket() connects, not yet connected. A tcp peer on this host gets a
 * socket made here first, so that its buffers and congestion control are set before the
 * handshake: one that connects with bbr keeps the kernel's pacing after it switches to a
 * loss-based algorithm (loopback-congestion.ts), and the window scale the handshake offers
 * should fit the buffers. A host name is looked up for that; if the lookup fails, or its
 * first address refuses (`plain` then), Node's own connect goes the usual way.
 */
async function openSocket(
  uri: SocketUri,
  description: string,
  common: net.SocketConstructorOpts,
  plain: boolean,
): Promise<{ socket: net.Socket; connect(): void; byName: boolean }> {
  if (uri.kind === 'unix') {
    const socket = new net.Socket(common);
    return { socket, connect: () => socket.connect({ path: uri.path }), byName: false };
  }
  const host = uri.host === '' ? 'localhost' : uri.host;
  const local = plain ? undefined : await loopbackPeer(host, uri.family);
  if (local === undefined) {
    const socket = new net.Socket(common);
    return { socket, connect: () => socket.connect({ host, port: uri.port, ...(uri.family === undefined ? {} : { family: uri.family }) }), byName: false };
  }
  let fd: number | undefined;
  try {
    fd = tcpSocket(local.family);
    sizeSocketBuffers(fd, true, description);
    useLoopbackCongestion(fd, description);
    const socket = new net.Socket({ ...common, fd, readable: true, writable: true });
    return { socket, connect: () => socket.connect({ host: local.address, port: uri.port }), byName: net.isIP(host) === 0 };
  } catch (err) {
    // Made here only to be faster: if that fails, Node's own socket still connects.
    debug('transport: %s: connecting the usual way (%s)', description, err instanceof Error ? err.message : String(err));
    if (fd !== undefined) closeFd(fd);
    return openSocket(uri, description, common, true);
  }
}

/** The address `host` names when it is this host's loopback, else undefined (a failed lookup too). */
async function loopbackPeer(host: string, family: 4 | 6 | undefined): Promise<{ address: string; family: 4 | 6 } | undefined> {
  let address = host;
  let kind = net.isIP(host);
  if (kind === 0) {
    try {
      ({ address, family: kind } = await lookup(host, family === undefined ? {} : { family }));
    } catch {
      return undefined;
    }
  }
  if (!isLoopbackAddress(address)) return undefined;
  return { address, family: kind === 6 ? 6 : 4 };
}

export async function listenSocket(uri: SocketUri, options: SocketOptions = {}): Promise<Listener> {
  const description = formatMigrationUri(uri);
  const highWaterMark = options.writeHighWaterMark ?? DEFAULT_WRITE_HIGH_WATER_MARK;
  let listenOptions: net.ListenOptions;
  if (uri.kind === 'tcp') {
    let host: string | undefined = uri.host === '' ? undefined : uri.host;
    if (host !== undefined && uri.family !== undefined && net.isIP(host) === 0) {
      try {
        host = (await lookup(host, { family: uri.family })).address;
      } catch (err) {
        throw toTransportError(err, description, 'listening on');
      }
    }
    listenOptions = { port: uri.port, ...(host === undefined ? {} : { host }), ...(uri.family === 6 ? { ipv6Only: true } : {}) };
  } else {
    await removeStaleSocket(uri.path, description);
    listenOptions = { path: uri.path };
  }
  const server = net.createServer({ highWaterMark, pauseOnConnect: true } as net.ServerOpts);
  await new Promise<void>((resolve, reject) => {
    // Stays attached on failure too: a server that never listened must not throw later.
    server.on('error', (err) => reject(toTransportError(err, description, 'listening on')));
    server.listen(listenOptions, () => resolve());
  });
  // Connections accepted later inherit these sizes, and tcp's handshake already offers a
  // window scale that fits them: for a listener only local peers can reach.
  const listenFd = serverFd(server);
  const bound = server.address();
  const local = uri.kind === 'unix' || (bound !== null && typeof bound === 'object' && isLoopbackAddress(bound.address));
  if (listenFd !== undefined && local) {
    sizeSocketBuffers(listenFd, uri.kind === 'tcp', description);
    // Accepted sockets start on the listener's algorithm, never on a pacing one.
    if (uri.kind === 'tcp') useLoopbackCongestion(listenFd, description);
  }
  return new SocketListener(server, uri, description, options);
}

/** QEMU unlinks a leftover socket file before binding; anything that is not a socket is left alone. */
async function removeStaleSocket(path: string, description: string): Promise<void> {
  try {
    const stats = await lstat(path);
    if (!stats.isSocket()) {
      throw new TransportError(`Cannot listen on ${description}: ${path} exists and is not a socket`);
    }
    await unlink(path);
  } catch (err) {
    if (err instanceof TransportError) throw err;
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw toTransportError(err, description, 'listening on');
  }
}

class SocketListener implements Listener {
  readonly description: string;
  readonly address: string;
  readonly #server: net.Server;
  readonly #uri: SocketUri;
  readonly #options: SocketOptions;
  /** Connections accepted and not yet taken; with TLS, each once its handshake ends (or fails). */
  #pending: Promise<Channel>[] = [];
  #waiters: { resolve(channel: Channel): void; reject(error: Error): void }[] = [];
  #error: Error | null = null;
  #closePromise: Promise<void> | null = null;

  constructor(server: net.Server, uri: SocketUri, description: string, options: SocketOptions) {
    this.#server = server;
    this.#uri = uri;
    this.#options = options;
    this.description = description;
    const bound = server.address();
    if (uri.kind === 'tcp' && bound !== null && typeof bound === 'object') {
      const host = bound.family === 'IPv6' || bound.address.includes(':') ? `[${bound.address}]` : bound.address;
      this.address = `tcp:${host}:${bound.port}`;
    } else {
      this.address = description;
    }
    server.removeAllListeners('error');
    server.on('error', (err) => this.#fail(toTransportError(err, description, 'listening on')));
    server.on('connection', (socket) => this.#onConnection(socket));
  }

  accept(): Promise<Channel> {
    const channel = this.#pending.shift();
    if (channel) return channel;
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  close(): Promise<void> {
    if (this.#closePromise) return this.#closePromise;
    this.#fail(new TransportError(`Listener on ${this.address} was closed`));
    for (const channel of this.#pending) channel.then((c) => c.destroy(), () => {});
    this.#pending = [];
    // Stop listening only: the server's close callback would also wait for every accepted
    // connection to end, and those belong to whoever accepted them.
    this.#server.close();
    this.#closePromise = this.#uri.kind === 'unix' ? unlink(this.#uri.path).catch(() => {}) : Promise.resolve();
    return this.#closePromise;
  }

  #onConnection(accepted: net.Socket): void {
    if (this.#closePromise) {
      accepted.destroy();
      return;
    }
    const peerOf = (socket: net.Socket): string =>
      this.#uri.kind === 'tcp' && socket.remoteAddress !== undefined
        ? ` from ${socket.remoteAddress.includes(':') ? `[${socket.remoteAddress}]` : socket.remoteAddress}:${socket.remotePort}`
        : '';
    let channel: Promise<Channel>;
    const tls = this.#options.tls;
    if (tls) {
      // The TLS session reads the socket itself.
      channel = secureChannel(accepted, `${this.address}${peerOf(accepted)}`, this.#options, tls);
    } else {
      const highWaterMark = this.#options.writeHighWaterMark ?? DEFAULT_WRITE_HIGH_WATER_MARK;
      // net.Server has no `onread` option: the accepted socket (taken paused, before any
      // read) is rebuilt around the same handle with one.
      const { socket, pooledReads } = adoptWithPooledReads(accepted, { writable: true, writableHighWaterMark: highWaterMark });
      channel = Promise.resolve(socketChannel(socket, `${this.address}${peerOf(socket)}`, this.#options, pooledReads));
    }
    // Handed out in the order the connections came (the first is the main stream).
    channel.catch(() => {});
    const waiter = this.#waiters.shift();
    if (waiter) channel.then(waiter.resolve, waiter.reject);
    else this.#pending.push(channel);
  }

  #fail(error: Error): void {
    if (!this.#error) this.#error = error;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) waiter.reject(this.#error);
  }
}

/**
 * The descriptor under a net.Socket (its libuv handle's), or undefined when it is closed
 * or not on Linux. Node has no public API for it; `_handle.fd` has been there on POSIX in
 * every supported release.
 */
export function socketFd(socket: net.Socket): number | undefined {
  return socket.destroyed ? undefined : handleFd(socket);
}

/** The listening descriptor under a net.Server, as socketFd() for a socket. */
function serverFd(server: net.Server): number | undefined {
  return handleFd(server);
}

function handleFd(owner: net.Socket | net.Server): number | undefined {
  if (process.platform !== 'linux') return undefined;
  const fd = (owner as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}
