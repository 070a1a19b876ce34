#!/usr/bin/env node
// The `ferry` command's entry point. It loads almost nothing itself: for `ferry run` it
// first starts the worker thread the guest will run on — the sim's workload, or vCPU 0
// under KVM — which needs ~100 ms to boot its own Node instance and load koffi, and only
// then loads the command line (cli.ts) and through it the VMM, so the two overlap on the
// machine's cores (src/sys/early-worker.ts). A wrong guess costs nothing but the thread.

import { existsSync } from 'node:fs';
import { prestartWorker } from '../sys/early-worker.js';
import { WORKLOAD_WORKER_NAME, WORKLOAD_WORKER_URL } from '../sim/workload-worker-url.js';
import { VCPU_WORKER_URL, vcpuThreadName } from '../kvm/vcpu-worker-url.js';

/** The accelerator `ferry run` will most likely use, guessed from the raw arguments. */
function likelyAccelerator(args: readonly string[]): string | undefined {
  if (args[0] !== 'run' || args.includes('--help') || args.includes('-h')) return undefined;
  const at = args.indexOf('--accel');
  const accel = at >= 0 ? args[at + 1] : args.find((a) => a.startsWith('--accel='))?.slice('--accel='.length);
  return accel ?? (existsSync('/dev/kvm') ? 'kvm' : 'sim');
}

try {
  const accel = likelyAccelerator(process.argv.slice(2));
  if (accel === 'sim') prestartWorker(WORKLOAD_WORKER_URL, { name: WORKLOAD_WORKER_NAME });
  // Not without /dev/kvm: the run fails at once, and a process that exits while a worker is
  // still loading koffi dies with a fatal N-API error instead of the one-line message.
  else if (accel === 'kvm' && existsSync('/dev/kvm')) prestartWorker(VCPU_WORKER_URL, { name: vcpuThreadName(0) });
} catch {
  // The accelerator starts its own worker and reports any failure then.
}

await import('./cli.js');
