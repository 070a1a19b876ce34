// Loads the built-in guest program (dist/guests/sweep.bin, assembled by
// scripts/build-guests.mjs) into guest RAM together with everything it expects there:
// the long-mode tables and the parameter block.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../errors.js';
import { CODE_ADDR, CODE_MAX } from './layout.js';
import { writeLongModeTables } from './long-mode.js';
import { writeGuestParams } from './params.js';
import type { GuestSpec } from './spec.js';
import { sweepRange } from './spec.js';
import { HIGH_RAM_BASE } from '../hypervisor/ram-layout.js';

/** Where `npm run build` puts the assembled guest, relative to this compiled file (dist/src/guests/). */
export const SWEEP_IMAGE_URL = new URL('../../guests/sweep.bin', import.meta.url);
export const SWEEP_BOOTSECTOR_URL = new URL('../../guests/sweep-bootsector.bin', import.meta.url);

let cached: Uint8Array | undefined;

export function readSweepImage(): Uint8Array {
  if (cached) return cached;
  const path = fileURLToPath(SWEEP_IMAGE_URL);
  try {
    cached = new Uint8Array(readFileSync(path));
  } catch (err) {
    throw new ConfigError(`Cannot read the built-in guest ${path}: run \`npm run build\` (it needs GNU binutils: apt-get install binutils)`, { cause: err });
  }
  return cached;
}

/** RAM that goes on above 4 GiB, past a 32-bit hole (ram-layout.ts). */
export interface HighRam {
  /** Where the hole begins: the end of RAM below 4 GiB. */
  readonly lowRamLimit: number;
  /** Guest-physical end of RAM above 4 GiB. */
  readonly end: number;
  /** Whether the vCPU offers 1 GiB pages, with which the page tables map that RAM. */
  readonly pages1G: boolean;
}

/**
 * Put the built-in guest for `spec` into RAM (guest address 0 = ram[0]): page tables and
 * GDT, the parameter block, and the code at CODE_ADDR. The vCPU is then entered with
 * longModeSpecialRegisters() and longModeEntryRegisters().
 */
export function loadBuiltinGuest(ram: Uint8Array, spec: GuestSpec, memorySize: number, image = readSweepImage(), reportEvery?: number, high?: HighRam): void {
  if (image.byteLength > CODE_MAX - CODE_ADDR) {
    throw new ConfigError(`Built-in guest image of ${image.byteLength} bytes exceeds the ${CODE_MAX - CODE_ADDR} bytes reserved at 0x${CODE_ADDR.toString(16)}`);
  }
  if (spec.kind === 'random') {
    throw new ConfigError('Guest builtin:random exists only for the sim accelerator; on kvm use builtin:sweep, builtin:hot or builtin:idle');
  }
  writeLongModeTables(ram, high?.pages1G ? high.end : undefined);
  const range = sweepRange(spec, memorySize, high?.lowRamLimit);
  if (high && !high.pages1G && range && range.to > HIGH_RAM_BASE) {
    throw new ConfigError('The built-in guest cannot sweep RAM above 4 GiB on this CPU: its page tables map that RAM with 1 GiB pages, which CPUID does not offer (pdpe1gb)');
  }
  writeGuestParams(ram, spec, memorySize, reportEvery, high?.lowRamLimit);
  ram.set(image, CODE_ADDR);
}
