// How much a migration socket's kernel buffers may hold. A migration is two busy processes
// joined by one socket: each stalls now and then (a garbage collection, the end of a time
// slice, the other's turn on a shared core), and whatever the socket can hold is what the
// other side keeps working on meanwhile. Loopback tcp sizes its buffers by itself up to
// tcp_wmem/tcp_rmem's maximum (4 MiB to send on these machines); with 32 MiB on each side
// the same migrations ran faster (figures in bench/NOTES.md). Memory is
// only taken while bytes are queued. Only local peers get them (unix sockets, loopback
// tcp): over a real network tcp's own sizing follows the path's bandwidth-delay product,
// and a send buffer of tens of MiB would fill at once and make the first bandwidth windows
// read far above what the link carries.
//
// The receiving side of a tcp socket is held smaller, and fixed: the source measures the
// bandwidth that decides the switchover on the bytes the destination has taken, and it
// can see only its own queue (SIOCOUTQ) — whatever waits in the destination's receive
// queue looks delivered. With 32 MiB there (64 MiB as the kernel counts it, and tcp
// grows it that far by itself on these machines), a destination backing fresh memory at
// 0.5 GB/s read as 1.1 GB/s in the first window, and 256 MiB migrations went 5 times in 6
// over the downtime limit (305–382 ms against 300). With 8 MiB, the same loopback
// migrations ran as fast (figures in bench/NOTES.md), and what hides there drains in ~16 ms
// even at that rate. A unix socket's unread bytes stay charged to the sender: it sees all.

import { readFileSync } from 'node:fs';
import { debuglog } from 'node:util';
import { EPERM, setSocketBufferSize, socketBufferSize, type SocketBuffer } from '../sys/libc.js';
import { useLoopbackCongestion } from './loopback-congestion.js';

const debug = debuglog('ferry');

/** What a migration socket asks for on its sending side. */
export const MIGRATION_SOCKET_BUFFER = 32 * 1024 * 1024;
/** What a loopback tcp migration socket's receiving side is set to. */
export const MIGRATION_RECEIVE_BUFFER = 8 * 1024 * 1024;

export interface BufferLimits {
  /** net.core.wmem_max / rmem_max: the most the unprivileged option gives. */
  readonly cap: number;
  /**
   * tcp_wmem[2] / tcp_rmem[2]: the size tcp grows the buffer to by itself (in the kernel's
   * doubled accounting); undefined for a unix socket, which does not grow its own.
   */
  readonly autotuneMax: number | undefined;
}

/**
 * The size to ask for with the plain option once the privileged one was refused, or
 * undefined to leave the buffer alone: a size set by hand turns tcp's own sizing off, which
 * is only worth it when the cap lets the buffer grow past what tcp would reach.
 */
export function fallbackBufferRequest(wanted: number, limits: BufferLimits): number | undefined {
  const request = Math.min(wanted, limits.cap);
  // The kernel doubles a request; tcp's own maximum is already in doubled bytes.
  if (limits.autotuneMax !== undefined && 2 * request <= limits.autotuneMax) return undefined;
  return request;
}

/**
 * Size the buffers of a migration socket (connected or listening; an accepted socket
 * inherits its listener's): the sending side of either kind to MIGRATION_SOCKET_BUFFER,
 * and a tcp socket's receiving side to MIGRATION_RECEIVE_BUFFER (a unix socket's does not
 * limit a stream). With CAP_NET_ADMIN the sizes are taken as asked; without, the sending
 * side as fallbackBufferRequest() says, the receiving side capped at rmem_max — set even
 * so, since left alone tcp would grow it to hide more. Never fails: a socket that keeps
 * the kernel's sizes still works.
 */
export function sizeSocketBuffers(fd: number, tcp: boolean, description: string): void {
  const sides: SocketBuffer[] = tcp ? ['send', 'receive'] : ['send'];
  for (const which of sides) {
    const wanted = which === 'send' ? MIGRATION_SOCKET_BUFFER : MIGRATION_RECEIVE_BUFFER;
    let errno = setSocketBufferSize(fd, which, wanted, true);
    if (errno === EPERM) {
      const limits = bufferLimits(which, tcp);
      const request = which === 'send' ? fallbackBufferRequest(wanted, limits) : Math.min(wanted, limits.cap);
      errno = request === undefined ? 0 : setSocketBufferSize(fd, which, request);
    }
    if (errno !== 0) debug('transport: %s: the %s buffer was not sized (errno %d)', description, which, errno);
  }
  if (debug.enabled) {
    debug('transport: %s: socket buffers: send %d B, receive %d B', description, socketBufferSize(fd, 'send'), socketBufferSize(fd, 'receive'));
  }
}

/**
 * A tcp socket's receiving side set to `bytes` (the kernel doubles it), taken as asked with
 * CAP_NET_ADMIN, else capped at rmem_max; never fails. Used where a receiver takes its
 * bytes slower than they can arrive (Channel.holdReceived).
 */
export function holdReceiveBuffer(fd: number, bytes: number, description: string): void {
  let errno = setSocketBufferSize(fd, 'receive', bytes, true);
  if (errno === EPERM) errno = setSocketBufferSize(fd, 'receive', Math.min(bytes, bufferLimits('receive', true).cap));
  if (errno !== 0) debug('transport: %s: the receive buffer was not set to %d B (errno %d)', description, bytes, errno);
}

/**
 * A connected migration socket whose peer is on this host (always for unix): its buffers
 * as sizeSocketBuffers() says, and a tcp one a congestion control that does not pace
 * (loopback-congestion.ts).
 */
export function tuneIfLocal(fd: number, tcp: boolean, remoteAddress: string | undefined, description: string): void {
  if (tcp && !isLoopbackAddress(remoteAddress)) return;
  sizeSocketBuffers(fd, tcp, description);
  if (tcp) useLoopbackCongestion(fd, description);
}

/** Whether a tcp peer is this host (127.0.0.0/8, ::1, or an IPv4-mapped 127.x address). */
export function isLoopbackAddress(address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice('::ffff:'.length) : address;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4) || address === '::1';
}

function bufferLimits(which: SocketBuffer, tcp: boolean): BufferLimits {
  const send = which === 'send';
  return {
    cap: sysctlNumbers(send ? 'net/core/wmem_max' : 'net/core/rmem_max')[0] ?? 0,
    autotuneMax: tcp ? sysctlNumbers(send ? 'net/ipv4/tcp_wmem' : 'net/ipv4/tcp_rmem')[2] : undefined,
  };
}

function sysctlNumbers(name: string): number[] {
  try {
    return readFileSync(`/proc/sys/${name}`, 'utf8').trim().split(/\s+/).map(Number);
  } catch {
    return [];
  }
}
