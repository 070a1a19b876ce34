// How long a migrated guest was paused as its users saw it: from the source's last STOP
// event (a called-off switchover stops it more than once) to the destination's RESUME, by
// the events' own timestamps. Both QEMU and Ferry stamp events from the host's wall clock,
// so on one host the two processes' stamps compare. query-migrate's downtime ends when the
// source has sent its last byte; this also covers the destination loading the rest of the
// stream and starting the vCPUs.

import type { QmpClient } from '../qmp/client.js';
import type { QmpEvent } from '../qmp/protocol.js';

/** Call before the migration starts: later STOP and RESUME events are then the migration's. */
export function forgetEvents(...clients: readonly (QmpClient | undefined)[]): void {
  for (const client of clients) client?.clearEvents();
}

/** Milliseconds from the source's last STOP to the destination's RESUME; undefined if either never came. */
export async function guestPause(source: QmpClient, destination: QmpClient, timeoutMs = 10_000): Promise<number | undefined> {
  const stop = source.bufferedEvents().filter((e) => e.event === 'STOP').at(-1);
  if (!stop) return undefined;
  const resume = await destination.waitForEvent('RESUME', undefined, timeoutMs).catch(() => undefined);
  if (!resume) return undefined;
  return eventMs(resume) - eventMs(stop);
}

/**
 * The source's pauses that did not end in the switchover, in ms, oldest first: each STOP
 * the source followed with a RESUME of its own — Ferry's downtime guard calling a
 * switchover off (the guest runs again and the passes go on), a failed or cancelled stop,
 * or someone's `stop` and `cont`. Its users saw these too.
 */
export function pausesWithoutSwitchover(source: QmpClient): number[] {
  const pauses: number[] = [];
  let stoppedAt: number | undefined;
  for (const event of source.bufferedEvents()) {
    if (event.event === 'STOP') stoppedAt = eventMs(event);
    else if (event.event === 'RESUME' && stoppedAt !== undefined) {
      pauses.push(eventMs(event) - stoppedAt);
      stoppedAt = undefined;
    }
  }
  return pauses;
}

function eventMs(event: QmpEvent): number {
  return event.timestamp.seconds * 1000 + event.timestamp.microseconds / 1000;
}
