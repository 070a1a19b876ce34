// postcopy-blocktime (QEMU's PostcopyBlocktimeContext, destination side): how long the
// guest's vCPUs slept on pages that had not arrived. A fault names the thread that took
// it; a vCPU's thread waits from its fault until the page is placed. Two figures, as
// QEMU's query-migrate gives them: each vCPU's time blocked, and the total time during
// which every vCPU was blocked at once — when the guest as a whole made no progress.
//
// The clock starts when this process reads the fault, not when the vCPU took it (the
// kernel's message carries no time): both figures are a little short, by how long the
// fault waited to be read.

/** A fault attributed to a vCPU waits on this page: block index × 2^32 + page. */
export type PageKey = number;

const NOT_WAITING = -1;

export interface BlocktimeFigures {
  /** Milliseconds during which every vCPU was blocked at once (QEMU's postcopy-blocktime). */
  readonly total: number;
  /** Milliseconds each vCPU was blocked, by vCPU index (QEMU's postcopy-vcpu-blocktime). */
  readonly perVcpu: readonly number[];
}

export class PostcopyBlocktime {
  readonly #threadIds: () => readonly number[];
  #tids: readonly number[];
  readonly #vcpus: number;
  /** Per vCPU: the page it waits on, or NOT_WAITING. */
  readonly #waitingOn: number[];
  /** Per vCPU: when its current wait began (ms). */
  readonly #since: Float64Array;
  /** Per vCPU: the time blocked in waits that have ended (ms). */
  readonly #blocked: Float64Array;
  /** vCPUs waiting now. */
  #down = 0;
  /** When the last wait began: with every vCPU waiting, the moment the guest stopped as a whole. */
  #lastBegin = 0;
  #total = 0;
  /** Faults from threads that are no vCPU's (not counted). */
  #otherFaults = 0;

  /** `threadIds`: the host thread of each vCPU, by index (0 for one not started yet); asked again for a thread it does not list. */
  constructor(threadIds: () => readonly number[]) {
    this.#threadIds = threadIds;
    this.#tids = threadIds();
    this.#vcpus = this.#tids.length;
    this.#waitingOn = new Array<number>(this.#vcpus).fill(NOT_WAITING);
    this.#since = new Float64Array(this.#vcpus);
    this.#blocked = new Float64Array(this.#vcpus);
  }

  get vcpus(): number {
    return this.#vcpus;
  }

  /** Whether any vCPU waits for a page now. */
  get waiting(): boolean {
    return this.#down > 0;
  }

  /** Faults seen from threads that run no vCPU. */
  get otherFaults(): number {
    return this.#otherFaults;
  }

  /** Thread `tid` faulted on page `key` at `now`; false when it is no vCPU's thread (nothing counted). */
  begin(tid: number, key: PageKey, now: number): boolean {
    const cpu = this.#vcpuOf(tid);
    if (cpu < 0) {
      this.#otherFaults++;
      return false;
    }
    if (this.#waitingOn[cpu] === NOT_WAITING) {
      this.#down++;
    } else {
      // It faults again: its earlier wait is over (it ran on to this fault), whatever woke it;
      // with every vCPU waiting, the guest's stop goes on from here.
      this.#blocked[cpu] = this.#blocked[cpu]! + now - this.#since[cpu]!;
      if (this.#down === this.#vcpus) this.#total += now - this.#lastBegin;
    }
    this.#waitingOn[cpu] = key;
    this.#since[cpu] = now;
    this.#lastBegin = now;
    return true;
  }

  /** Page `key` was placed at `now`: every vCPU waiting on it runs again. */
  end(key: PageKey, now: number): void {
    if (this.#down === 0) return;
    const allDown = this.#down === this.#vcpus;
    let woken = 0;
    for (let cpu = 0; cpu < this.#vcpus; cpu++) {
      if (this.#waitingOn[cpu] !== key) continue;
      this.#blocked[cpu] = this.#blocked[cpu]! + now - this.#since[cpu]!;
      this.#waitingOn[cpu] = NOT_WAITING;
      woken++;
    }
    if (woken === 0) return;
    if (allDown) this.#total += now - this.#lastBegin;
    this.#down -= woken;
  }

  /** The figures at `now` in whole milliseconds, waits still going on counted up to `now`. */
  figures(now: number): BlocktimeFigures {
    const perVcpu: number[] = [];
    for (let cpu = 0; cpu < this.#vcpus; cpu++) {
      const ongoing = this.#waitingOn[cpu] === NOT_WAITING ? 0 : now - this.#since[cpu]!;
      perVcpu.push(Math.round(this.#blocked[cpu]! + ongoing));
    }
    const ongoing = this.#down === this.#vcpus && this.#vcpus > 0 ? now - this.#lastBegin : 0;
    return { total: Math.round(this.#total + ongoing), perVcpu };
  }

  #vcpuOf(tid: number): number {
    if (tid === 0) return -1;
    let cpu = this.#tids.indexOf(tid);
    if (cpu < 0) {
      // A vCPU thread started (or restarted) since the last look.
      this.#tids = this.#threadIds();
      cpu = this.#tids.indexOf(tid);
    }
    return cpu < this.#vcpus ? cpu : -1;
  }
}
