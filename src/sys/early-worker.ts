// Worker threads started before they are needed. A worker boots its own Node instance and
// loads its modules (koffi among them), ~100 ms on these machines; `ferry` starts the one
// the guest will run on (the sim's workload, or vCPU 0 under KVM) as its very first step,
// so that this overlaps the main thread loading the VMM. Whoever later needs a worker from
// that module takes the waiting one and sends it, in one message, what it would otherwise
// have got as workerData. This module imports nothing but node:worker_threads, so the
// entry point can load it at once.

import { Worker, parentPort, workerData } from 'node:worker_threads';
import type { TransferListItem } from 'node:worker_threads';

/** The one message a prestarted worker waits for: what workerData would have held. */
export interface WorkerInit<T> {
  readonly type: 'init';
  readonly data: T;
}

export interface WorkerStartOptions {
  /** The thread's name (shown by debuggers and in `top -H`). */
  readonly name?: string;
  /** Objects in the data that move to the worker rather than being copied (a MessagePort). */
  readonly transferList?: readonly TransferListItem[];
}

/** Options for every worker Ferry starts. */
export function workerOptions(options?: WorkerStartOptions): { execArgv?: string[]; name?: string } {
  const execArgv = workerExecArgv(process.execArgv);
  return {
    ...(execArgv !== undefined ? { execArgv } : {}),
    ...(options?.name !== undefined ? { name: options.name } : {}),
  };
}

/**
 * Node's own flags that a worker's execArgv may carry. Node refuses V8's flags there
 * (`--perf-basic-prof` for perf, `--trace-deopt`, `--max-old-space-size`) and those that
 * act on the whole process (`--title`, `--expose-gc`); those hold for every thread anyway.
 */
const WORKER_FLAG_PREFIXES = ['--experimental-', '--no-experimental-', '--conditions', '-C', '--import', '--require', '-r', '--loader', '--experimental-loader', '--enable-source-maps', '--no-warnings', '--no-deprecation', '--pending-deprecation', '--throw-deprecation', '--trace-warnings', '--trace-uncaught', '--unhandled-rejections', '--inspect'];

/**
 * The execArgv a worker is given: undefined — inherit the process's own, which Node takes
 * whole, V8's flags and all — unless the process has --input-type (`node -e`), which
 * would make loading a module file fail in the worker. Then an explicit list without it,
 * which Node checks: only its own flags that a worker takes are kept, each with its value.
 */
export function workerExecArgv(argv: readonly string[]): string[] | undefined {
  if (!argv.some((arg) => arg.startsWith('--input-type'))) return undefined;
  const kept: string[] = [];
  let keepValue = false;
  for (const arg of argv) {
    if (!arg.startsWith('-')) {
      // The value of the flag before it (`--require ./x.js`): kept with it or dropped with it.
      if (keepValue) kept.push(arg);
      keepValue = false;
      continue;
    }
    const name = arg.split('=', 1)[0]!;
    keepValue = name !== '--input-type' && WORKER_FLAG_PREFIXES.some((prefix) => name === prefix || (prefix.endsWith('-') && name.startsWith(prefix)));
    if (keepValue) kept.push(arg);
    if (arg.includes('=')) keepValue = false;
  }
  return kept;
}

interface Waiting {
  readonly worker: Worker;
  failed: boolean;
  /** Set to 1 by the worker once its modules are loaded and it waits for its data. */
  readonly loaded: Int32Array;
}

/** The workerData key of a prestarted worker: the flag it sets once loaded (see workerInput). */
const PRESTARTED = 'ferryPrestartedLoadedFlag';

/** At most one waiting worker per module. */
const waiting = new Map<string, Waiting>();

/** Start a worker running `url` now, for the next startWorker(url, …) to take. A second call for the same module keeps the first. */
export function prestartWorker(url: URL, options?: WorkerStartOptions): void {
  if (waiting.has(url.href)) return;
  const loaded = new Int32Array(new SharedArrayBuffer(4));
  const entry: Waiting = { worker: new Worker(url, { ...workerOptions(options), workerData: { [PRESTARTED]: loaded.buffer } }), failed: false, loaded };
  // Until taken it must neither keep the process alive nor crash it with an unheard error.
  entry.worker.unref();
  entry.worker.once('error', () => { entry.failed = true; });
  entry.worker.once('exit', () => { entry.failed = true; });
  waiting.set(url.href, entry);
}

/** The prestarted worker for `url`, if one is waiting and healthy; it is the caller's from now on. */
export function takePrestartedWorker(url: URL): Worker | undefined {
  const entry = waiting.get(url.href);
  waiting.delete(url.href);
  if (!entry) return undefined;
  if (entry.failed) {
    void entry.worker.terminate();
    return undefined;
  }
  entry.worker.ref();
  return entry.worker;
}

/**
 * Before the process exits early (bad input, a failed start): end every prestarted worker
 * no one took, once it has finished loading. A process that exits while a worker is still
 * loading koffi dies with a fatal N-API error ("napi_throw") in place of its one-line
 * message — seen when `ferry run -m 1000B` failed on a slow machine. Waits `timeoutMs` at most.
 */
export async function settlePrestartedWorkers(timeoutMs = 3_000): Promise<void> {
  const entries = [...waiting.values()];
  waiting.clear();
  const deadline = Date.now() + timeoutMs;
  await Promise.all(
    entries.map(async (entry) => {
      while (!entry.failed && Atomics.load(entry.loaded, 0) === 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      await entry.worker.terminate();
    }),
  );
}

/**
 * A worker running `url` with `data`: the prestarted one, sent its data now, or a new
 * one with the data as workerData. `early` says which (for tests and traces).
 */
export function startWorker<T>(url: URL, data: T, options?: WorkerStartOptions): { worker: Worker; early: boolean } {
  const early = takePrestartedWorker(url);
  const transferList = options?.transferList ? [...options.transferList] : [];
  if (early) {
    early.postMessage({ type: 'init', data } satisfies WorkerInit<T>, transferList);
    return { worker: early, early: true };
  }
  return { worker: new Worker(url, { workerData: data, transferList, ...workerOptions(options) }), early: false };
}

/**
 * In a worker: its data — workerData when it was started with it, otherwise the init
 * message of a worker that was started ahead of its VM.
 */
export async function workerInput<T>(): Promise<T> {
  const flag = (workerData as Record<string, unknown> | undefined | null)?.[PRESTARTED];
  if (!(flag instanceof SharedArrayBuffer)) return workerData as T;
  const port = parentPort;
  if (!port) throw new Error('workerInput() called outside a worker thread');
  // Loaded: from here the main thread may end this worker safely (settlePrestartedWorkers).
  const loaded = new Int32Array(flag);
  Atomics.store(loaded, 0, 1);
  Atomics.notify(loaded, 0);
  return new Promise<T>((resolve) => {
    port.once('message', (message: WorkerInit<T>) => resolve(message.data));
  });
}
