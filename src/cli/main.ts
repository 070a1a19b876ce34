#!/usr/bin/env node
// The `ferry` command's entry point. It loads almost nothing itself: for `ferry run` with
// the sim accelerator it first starts the workload worker thread (src/sim/prestart.ts),
// which needs ~100 ms to boot its own Node instance, and only then loads the command line
// (cli.ts) and through it the VMM — so the two overlap on the machine's cores.

import { existsSync } from 'node:fs';
import { prestartWorkloadWorker } from '../sim/prestart.js';

/** A guess from the raw arguments; if wrong, the unused worker is dropped when the process ends. */
function simLikely(args: readonly string[]): boolean {
  if (args[0] !== 'run' || args.includes('--help') || args.includes('-h')) return false;
  const at = args.indexOf('--accel');
  const accel = at >= 0 ? args[at + 1] : args.find((a) => a.startsWith('--accel='))?.slice('--accel='.length);
  if (accel !== undefined) return accel === 'sim';
  return !existsSync('/dev/kvm');
}

if (simLikely(process.argv.slice(2))) {
  try {
    prestartWorkloadWorker();
  } catch {
    // The accelerator starts its own worker and reports any failure then.
  }
}

await import('./cli.js');
