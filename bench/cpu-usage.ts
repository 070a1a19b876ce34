// Where a benchmark's CPU went, from /proc: per process, its main thread and the rest of
// its threads (workers, V8's helpers, libuv's pool); for the machine, how busy its cores
// were. Read before and after the measured stretch; Linux only (clock ticks are 10 ms).

import { readFileSync, readdirSync } from 'node:fs';

const TICK_MS = 10;

export interface ProcessCpu {
  /** The process's first thread (for Node, the one that runs JavaScript's event loop). */
  readonly mainMs: number;
  /** Every other thread together. */
  readonly otherMs: number;
}

export interface CpuSample {
  readonly processes: ReadonlyMap<number, ProcessCpu>;
  /** Busy and total jiffies over all cores. */
  readonly machine: { readonly busy: number; readonly total: number };
}

function threadMs(pid: number, tid: string): number {
  const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  // Fields after the command name, which may hold spaces: utime is the 14th, stime the 15th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * TICK_MS;
}

function processCpu(pid: number): ProcessCpu {
  let mainMs = 0;
  let otherMs = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const ms = threadMs(pid, tid);
      if (Number(tid) === pid) mainMs = ms;
      else otherMs += ms;
    } catch {
      // The thread ended between listing and reading.
    }
  }
  return { mainMs, otherMs };
}

export function sampleCpu(pids: readonly number[]): CpuSample {
  const processes = new Map(pids.map((pid) => [pid, processCpu(pid)] as const));
  const jiffies = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = (jiffies[3] ?? 0) + (jiffies[4] ?? 0); // idle + iowait
  const total = jiffies.reduce((a, b) => a + b, 0);
  return { processes, machine: { busy: total - idle, total } };
}

/** CPU used between two samples: per process, and the machine's busy share (0–1). */
export function cpuBetween(before: CpuSample, after: CpuSample): { processes: Map<number, ProcessCpu>; machineBusy: number } {
  const processes = new Map<number, ProcessCpu>();
  for (const [pid, end] of after.processes) {
    const start = before.processes.get(pid);
    if (start) processes.set(pid, { mainMs: end.mainMs - start.mainMs, otherMs: end.otherMs - start.otherMs });
  }
  const total = after.machine.total - before.machine.total;
  return { processes, machineBusy: total > 0 ? (after.machine.busy - before.machine.busy) / total : Number.NaN };
}

/**
 * Wait until the machine's cores were less than `busyBelow` (0–1) busy over a 200 ms
 * window, or `maxMs` passed; returns the last window's share. (After a process with GiBs
 * of RAM quits, the kernel goes on freeing and reporting its memory for a while.)
 */
export async function waitForQuiet(busyBelow = 0.15, maxMs = 3000): Promise<number> {
  const end = Date.now() + maxMs;
  for (;;) {
    const before = sampleCpu([]);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const busy = cpuBetween(before, sampleCpu([])).machineBusy;
    if (busy < busyBelow || Date.now() >= end) return busy;
  }
}
