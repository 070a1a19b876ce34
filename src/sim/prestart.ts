// Starting the sim's workload worker before the VM exists. A worker thread boots its own
// Node instance and loads koffi, which takes tens of milliseconds; `ferry run` starts one
// as soon as the command line says the sim will be used, so that happens while the main
// thread loads the VMM's modules instead of after. The accelerator then takes it and sends it
// what it would otherwise have got as workerData (control.ts: SimWorkerInit).

import { Worker } from 'node:worker_threads';

export const WORKLOAD_WORKER_URL = new URL('./workload-worker.js', import.meta.url);

/** Options for every workload worker. */
export function workloadWorkerOptions(): { execArgv: string[] } {
  // Workers inherit the process's flags; --input-type (from `node -e`) would make loading
  // a module file fail.
  return { execArgv: process.execArgv.filter((arg) => !arg.startsWith('--input-type')) };
}

let early: { worker: Worker; failed: boolean } | undefined;

/** Start a workload worker now, for the next sim accelerator to take. */
export function prestartWorkloadWorker(): void {
  if (early) return;
  const entry = { worker: new Worker(WORKLOAD_WORKER_URL, workloadWorkerOptions()), failed: false };
  // Until taken it must neither keep the process alive nor crash it with an unheard error.
  entry.worker.unref();
  entry.worker.once('error', () => { entry.failed = true; });
  entry.worker.once('exit', () => { entry.failed = true; });
  early = entry;
}

/** The prestarted worker, if one is waiting and healthy; it is the caller's from now on. */
export function takePrestartedWorker(): Worker | undefined {
  const entry = early;
  early = undefined;
  if (!entry) return undefined;
  if (entry.failed) {
    void entry.worker.terminate();
    return undefined;
  }
  entry.worker.ref();
  return entry.worker;
}
