// Which congestion control a tcp migration socket to this host uses. On loopback there is
// no path to model and no queue to keep short, but the system's choice still applies —
// on these machines bbr, which paces: the kernel sends from a timer at the rate bbr
// estimates, and with the two processes on two cores those sends run on whichever core the
// timer fires while the source's own writev sends from the other. Loopback hands each
// packet to the receiving side on the core that sent it, so the destination sees segments
// out of order, asks again for what it already has, and the source resends up to 4 % of
// the stream and cuts its window on each false loss. A loss-based algorithm sends only from
// the writer and from ACKs, in order: the same 1 GiB migrations then resent almost nothing
// and ran about half as fast again (figures in bench/NOTES.md). It is
// set before the handshake where Ferry connects (socket.ts): a socket switched once
// connected keeps the kernel's pacing. Over a real network the system's choice stands:
// there the path is what it is for.

import { debuglog } from 'node:util';
import { setTcpCongestion, tcpCongestion } from '../sys/libc.js';

const debug = debuglog('ferry');

/**
 * The algorithms a loopback migration socket may use, best first: cubic (Linux's default)
 * and reno, which every kernel has and net.ipv4.tcp_allowed_congestion_control lets any
 * process choose by default — cubic may need CAP_NET_ADMIN where it is not in that list.
 */
export const LOOPBACK_CONGESTION: readonly string[] = ['cubic', 'reno'];

/**
 * What to ask for, in order, for a socket using `current`: nothing when it is one of
 * LOOPBACK_CONGESTION already, else each of those in turn until one is accepted.
 */
export function loopbackCongestionChoices(current: string): readonly string[] {
  return LOOPBACK_CONGESTION.includes(current) ? [] : LOOPBACK_CONGESTION;
}

/**
 * Switch a connected loopback tcp socket to a loss-based congestion control. Never fails:
 * a socket that keeps the system's algorithm still works, only slower. Returns the
 * algorithm it uses afterwards.
 */
export function useLoopbackCongestion(fd: number, description: string): string {
  let current: string;
  try {
    current = tcpCongestion(fd);
  } catch (err) {
    debug('transport: %s: the congestion control could not be read (%s)', description, (err as Error).message);
    return 'unknown';
  }
  for (const name of loopbackCongestionChoices(current)) {
    const errno = setTcpCongestion(fd, name);
    if (errno === 0) {
      debug('transport: %s: congestion control %s instead of %s (a loopback peer)', description, name, current);
      return name;
    }
    debug('transport: %s: congestion control %s refused (errno %d)', description, name, errno);
  }
  return current;
}
