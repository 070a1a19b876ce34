// The downtime guard's pieces (Ferry's, not QEMU 7.2's): once the source has stopped the
// guest for the switchover, the rest of the RAM must reach the destination in time for the
// downtime limit, or the switchover is called off and the guest runs again. Here: the
// stopped guest's RAM sent against the limit, where the deadlines fall, when a stop is
// hopeless, and the device state saved ahead of the RAM.

import { PAGE_SIZE } from '../hypervisor/types.js';
import type { Channel } from '../transport/channel.js';
import { StreamWriter } from '../stream/writer.js';
import { writeSectionFooter, writeSectionStart } from '../stream/format.js';
import type { VmdescDevice } from '../stream/format.js';
import { writeSectionPart } from '../stream/format.js';
import type { SaveVmEntry } from './savevm.js';
import type { RamHandler } from './ram.js';
import type { OutgoingDelivery } from './outgoing-delivery.js';
import { settledBy } from './deadline.js';

/** What the guard needs at a stop. */
export interface GuardedStop {
  readonly ram: RamHandler;
  /** The RAM section's id: its pages go in a PART section. */
  readonly sectionId: number;
  /** The non-iterative handlers: their state is saved ahead, into memory. */
  readonly devices: readonly SaveVmEntry[];
  readonly io: OutgoingDelivery;
  readonly now: () => number;
  readonly limitMs: number;
  /** The bandwidth counted on (bandwidth.ts). */
  readonly bytesPerMs: number;
  /** When the stop began, and when the vCPUs were stopped (engine clock). */
  readonly stopStart: number;
  readonly pausedAt: number;
  /** Bytes the destination had taken when the vCPUs were stopped. */
  readonly deliveredAtStop: number;
  /** Whether the guest ran before the stop. */
  readonly wasRunning: boolean;
}

/**
 * The guest is stopped: save its device state ahead, into memory — what it costs (the
 * time, its bytes) comes off the RAM's budget exactly, instead of a share of the limit
 * guessed for every kind of VM — then send the RAM still pending in a PART section
 * against the deadline. Nothing is final before the END section: the saved devices when
 * the RAM reached the destination in time, undefined when the switchover is to be called
 * off (the guest runs again and the passes go on, knowing the real rate).
 */
export async function sendRamWhileStopped(w: StreamWriter, g: GuardedStop): Promise<SavedDevices | undefined> {
  const { ram, io, now } = g;
  const saved = await saveDevicesAhead(g.devices, now);
  writeSectionPart(w, 'part', g.sectionId);
  const deadlines = stopDeadlines(g.stopStart, g.limitMs, saved.length, g.bytesPerMs);
  const { deadline } = deadlines;
  const pagesBefore = ram.stats.pagesSent;
  const giveUp = stopGiveUp({
    now,
    pausedAt: g.pausedAt,
    deadlines,
    deliveredAtStop: g.deliveredAtStop,
    written: () => io.written(w),
    unsent: () => io.unsent(),
    remainingPages: () => ram.stats.remainingPages,
  });
  const sent = await ram.sendWhileStopped(w, deadline, giveUp);
  writeSectionFooter(w, g.sectionId);
  // In the stream buffer is not yet on its way: the pages must reach the channel before
  // the deadline too, or the final flush would spend the downtime after the check —
  // waited for no longer than the deadline (a full socket can take seconds). And
  // the destination must have taken them, as far as the OS tells: a local socket holds
  // tens of MiB, which a destination slower than the source (one backing fresh memory)
  // took 84–133 ms more to read after RAM had "gone out" in time.
  const multifd = io.multifd;
  const flushed = sent && (await settledBy(multifd ? Promise.all([w.flush(), multifd.flush()]).then(() => {}) : w.flush(), deadline, now, giveUp));
  if (w.error) throw w.error;
  const delivered = flushed && (await io.waitDelivered(w, deadline, giveUp));
  // A paused guest's stop that sent no pages and flushed late met the channel's latency,
  // not the RAM's volume: more passes cannot make the next stop faster, and calling it
  // off would repeat it for ever. It completes (nobody waits on a paused guest). A
  // running guest's does not: it stays active, as a migration that cannot converge.
  const pagesWhileStopped = ram.stats.pagesSent - pagesBefore;
  const done = sent && ((delivered && now() <= deadline) || (!g.wasRunning && pagesWhileStopped === 0));
  return done ? saved : undefined;
}

/**
 * Once the guest is stopped (and its device state saved, into memory), RAM must be out
 * within this share of the downtime limit, or the switchover is called off...
 */
export const SWITCHOVER_RAM_SHARE = 0.9;
/**
 * ...unless, at that point, what is left (pages and bytes queued) would reach the
 * destination within this share, less the time the saved device state needs to follow,
 * at the rate the destination has taken bytes since the stop: then the RAM may run on until
 * then. A switchover is tried when the pending bytes just fit the estimate, and the
 * estimate is the rate the destination takes, so the stop's RAM often needs a few per cent
 * more than SWITCHOVER_RAM_SHARE (seen: 760 MB pending against a threshold of 777 MB, 40 MB
 * still unsent at 270 ms; called off, that migration took twice as long). The rest of the
 * limit is for the EOF, the vmdesc and the last flush.
 */
export const SWITCHOVER_RAM_SHARE_EXTENDED = 0.97;
/**
 * A stop is given up early only once it has lasted this long (the rate the destination
 * takes during it means something by then) and with at least this much left: a few bytes
 * in a unix socket's queue, taken at the pace an idle guest's stream trickles, would read
 * as hopeless, and an idle 1 GiB guest's switchovers were called off dozens of times in a row.
 */
export const STOP_RATE_MS = 20;
export const GIVE_UP_MIN_BYTES = 1024 * 1024;
/**
 * From this far into a stop, everything left counts at once — the pages still to send as
 * well as the queue — if at the rate so far it would take the stop past this multiple of
 * its whole budget: a destination that turned out far slower than the estimate (a lazy
 * one reaching memory the host never backed: 0.48 GB/s against 0.72–1.17 measured before
 * the stop) held its guest ~160 ms before the queue alone gave the stop up. The margin
 * keeps a stop that only began slowly (a collection on either side) going. Both the 50 ms
 * and the rate count from when the RAM began to go out: a stop whose dirty sync took
 * 150 ms had sent nothing by then, and read as hopeless.
 */
export const EARLY_EVIDENCE_MS = 50;
/** A stop's give-up test answers "go on" without looking for this long after it last looked. */
export const ASK_EVERY_MS = 1;
export const FAR_OFF_FACTOR = 1.5;

/** Where a stop's RAM must be out by: `soft` (then only if what is left fits) and `deadline`. */
export interface StopDeadlines {
  readonly soft: number;
  readonly deadline: number;
}

/**
 * The deadlines of a stop that began at `stopStart` under `limitMs`, with `deviceBytes` of
 * saved device state to follow the RAM at `bytesPerMs` (the estimate before the stop; its
 * share is at most what the guard kept back before it measured: an estimate of 0 B/ms,
 * after a called-off stop, must not put the deadline in the past and call every stop off).
 */
export function stopDeadlines(stopStart: number, limitMs: number, deviceBytes: number, bytesPerMs: number): StopDeadlines {
  const deviceMs = Math.min(deviceBytes / Math.max(bytesPerMs, 1), limitMs * (1 - SWITCHOVER_RAM_SHARE));
  const deadline = stopStart + limitMs * SWITCHOVER_RAM_SHARE_EXTENDED - deviceMs;
  return { soft: Math.min(deadline, stopStart + limitMs * SWITCHOVER_RAM_SHARE), deadline };
}

/** Where a stop stands: times on the engine's clock, bytes since the guest stopped. */
export interface StopProgress {
  readonly now: number;
  readonly pausedAt: number;
  /** Bytes written to the channel that the destination has not taken yet. */
  readonly unsent: number;
  /** Pages of RAM not yet handed to the channel. */
  readonly remainingPages: number;
  /** Bytes the destination has taken since the guest stopped. */
  readonly deliveredSinceStop: number;
  /**
   * When the stop's RAM began to go out (after its dirty sync and the device state's save,
   * which send nothing), and the bytes the destination has taken since: the rate a stop's
   * far-off test goes by. Undefined: the stop's own figures are used.
   */
  readonly sendingSince?: number;
  readonly deliveredSinceSending?: number;
}

/**
 * True when what is left cannot reach the destination by the deadline at the rate it has
 * taken bytes since the guest stopped (never in the first STOP_RATE_MS, nor for less than
 * GIVE_UP_MIN_BYTES). Before `soft`, only what the channel already holds counts: handing
 * out more pages is then pointless, and waiting for room for them would hold the guest
 * past the deadline (seen: a lazy destination taking 0.46 GB/s with 44 MB queued, and a
 * called-off guest paused 305–316 ms for a 300 ms limit). From `soft` on, the pages still
 * to send count too — and from EARLY_EVIDENCE_MS on, when all that is left is far off.
 */
export function stopIsHopeless(p: StopProgress, d: StopDeadlines): boolean {
  const elapsed = p.now - p.pausedAt;
  if (elapsed < STOP_RATE_MS) return false;
  const rate = Math.max(p.deliveredSinceStop / elapsed, 1);
  const pages = p.remainingPages * (PAGE_SIZE + 8);
  const sendingMs = p.now - (p.sendingSince ?? p.pausedAt);
  if (sendingMs >= EARLY_EVIDENCE_MS && p.unsent + pages >= GIVE_UP_MIN_BYTES) {
    const sendingRate = Math.max((p.deliveredSinceSending ?? p.deliveredSinceStop) / sendingMs, 1);
    const projectedStop = elapsed + (p.unsent + pages) / sendingRate;
    if (projectedStop > FAR_OFF_FACTOR * (d.deadline - p.pausedAt)) return true;
  }
  const left = p.unsent + (p.now >= d.soft ? pages : 0);
  if (left < GIVE_UP_MIN_BYTES) return false;
  return p.now + left / rate > d.deadline;
}

/** What a stop's give-up test reads, each time it is asked. */
export interface StopWatch {
  readonly now: () => number;
  readonly pausedAt: number;
  readonly deadlines: StopDeadlines;
  /** Bytes the destination had taken when the guest stopped. */
  readonly deliveredAtStop: number;
  /** Bytes written to the stream so far; less what the channel still holds, the bytes taken. */
  readonly written: () => number;
  readonly unsent: () => number;
  readonly remainingPages: () => number;
}

/**
 * The give-up test of one stop, for its RAM loop to ask as it sends: stopIsHopeless() on
 * the stop's figures. It is first asked once the RAM goes out, after the stop's dirty sync
 * and the device state's save; the far-off test's rate is taken from there.
 */
export function stopGiveUp(watch: StopWatch): () => boolean {
  let sendingSince: number | undefined;
  let deliveredAtSending = 0;
  let askedAt = -Infinity;
  let answer = false;
  return () => {
    const now = watch.now();
    // The RAM loop asks every 64 pages — every ~60 µs at 4 GB/s — and each answer reads the
    // socket's queue (an ioctl); nothing it weighs moves much in a millisecond.
    if (answer || now - askedAt < ASK_EVERY_MS) return answer;
    askedAt = now;
    const unsent = watch.unsent();
    const delivered = watch.written() - unsent;
    if (sendingSince === undefined) {
      sendingSince = now;
      deliveredAtSending = delivered;
    }
    answer = stopIsHopeless(
      {
        now,
        pausedAt: watch.pausedAt,
        unsent,
        remainingPages: watch.remainingPages(),
        deliveredSinceStop: delivered - watch.deliveredAtStop,
        sendingSince,
        deliveredSinceSending: delivered - deliveredAtSending,
      },
      watch.deadlines,
    );
    return answer;
  };
}

/** The device state saved at a stop, ahead of the RAM. */
export interface SavedDevices {
  readonly chunks: readonly Uint8Array[];
  readonly length: number;
  readonly devices: readonly VmdescDevice[];
  readonly ms: number;
}

/** The buffer the device state is encoded into at a switchover (more are added if it is larger). */
const DEVICE_STATE_BUFFER_BYTES = 64 * 1024;

/**
 * With the guest stopped: every non-iterative handler's FULL section, written into memory
 * rather than the stream (nothing goes out before the RAM's END), with the vmdesc entries,
 * the bytes, and how long it took. A called-off switchover drops it; the next stop saves again.
 */
export async function saveDevicesAhead(entries: readonly SaveVmEntry[], now: () => number): Promise<SavedDevices> {
  const start = now();
  const chunks: Uint8Array[] = [];
  let length = 0;
  const collect: Channel = {
    description: 'the device state, kept until the RAM is out',
    read: () => Promise.resolve(null),
    // Kept as handed over: without `done` the writer never reuses a buffer it gave away.
    write: (data) => {
      chunks.push(data);
      length += data.byteLength;
      return Promise.resolve();
    },
    end: () => Promise.resolve(),
    destroy: () => {},
  };
  // A small buffer: device state is kilobytes, and a fresh 1 MiB one (the default) is a
  // new mapping per switchover, its first page faulted in during the downtime.
  const w = new StreamWriter(collect, { bufferSize: DEVICE_STATE_BUFFER_BYTES });
  const devices: VmdescDevice[] = [];
  for (const { sectionId, handler } of entries) {
    writeSectionStart(w, 'full', sectionId, handler.idstr, handler.instanceId, handler.version);
    const entry = await handler.complete(w);
    writeSectionFooter(w, sectionId);
    if (entry) devices.push(entry);
  }
  await w.flush();
  if (w.error) throw w.error;
  return { chunks, length, devices, ms: now() - start };
}
