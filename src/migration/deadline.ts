// Waiting with a deadline on the engine's clock: the downtime guard's stopped guest must not
// wait for a channel that cannot take its RAM in time.

/** How often a wait with a `giveUp` test asks it again. */
const GIVE_UP_CHECK_MS = 5;

/**
 * Wait for `work` until `until` on the engine's clock (`now`): true when it finished first,
 * false when the deadline came — or, with `giveUp`, as soon as that says the wait is
 * pointless (asked first, then every few ms). A rejection of `work` while waiting rejects
 * this; one after it is left to whoever reports the failure of that work (a stream
 * writer's error).
 */
export async function settledBy(work: Promise<void>, until: number, now: () => number, giveUp?: () => boolean): Promise<boolean> {
  let done = false;
  const finished = work.then(() => {
    done = true;
  });
  finished.catch(() => {});
  for (;;) {
    if (done) return true;
    if (now() >= until || giveUp?.() === true) return false;
    const wake = giveUp === undefined ? until : Math.min(until, now() + GIVE_UP_CHECK_MS);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([finished, new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, wake - now()))))]);
    } finally {
      clearTimeout(timer);
    }
  }
}
