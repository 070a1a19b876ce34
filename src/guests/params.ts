// The parameter block of the built-in guests (see layout.ts): written by the VMM before
// boot, updated by the guest, and read back by checks after a migration.

import { ConfigError } from '../errors.js';
import type { GuestSpec } from './spec.js';
import { sweepRange } from './spec.js';
import { GuestPhysical, type RamPiece } from './guest-physical.js';
import {
  GUEST_MODE_IDLE, GUEST_MODE_SWEEP, PAGE_COUNTER_OFFSET, PARAMS_ADDR, PARAMS_MAGIC,
  PARAM_FROM_OFFSET, PARAM_MAGIC_OFFSET, PARAM_MODE_OFFSET, PARAM_PASS_OFFSET,
  PARAM_REPORT_EVERY_OFFSET, PARAM_TO_OFFSET,
} from './layout.js';

const PAGE = 4096;

function view(ram: Uint8Array): DataView {
  return new DataView(ram.buffer, ram.byteOffset, ram.byteLength);
}

/** Write the parameter block for `spec` into guest RAM (which starts at guest address 0). */
/** `reportEvery`: print "pass N" every this many passes (default: the spec's `report=`, else every pass). */
/** `lowRamLimit`: where the 32-bit hole begins in RAM that goes on above 4 GiB (see sweepRange). */
export function writeGuestParams(ram: Uint8Array, spec: GuestSpec, memorySize: number, reportEvery?: number, lowRamLimit?: number): void {
  const every = reportEvery ?? ('report' in spec ? spec.report : undefined) ?? 1;
  if (ram.byteLength < PARAMS_ADDR + PAGE) throw new ConfigError(`Guest RAM of ${ram.byteLength} bytes is too small for the built-in guest`);
  const dv = view(ram);
  const range = sweepRange(spec, memorySize, lowRamLimit);
  dv.setUint32(PARAMS_ADDR + PARAM_MAGIC_OFFSET, PARAMS_MAGIC, true);
  dv.setUint32(PARAMS_ADDR + PARAM_MODE_OFFSET, range ? GUEST_MODE_SWEEP : GUEST_MODE_IDLE, true);
  dv.setBigUint64(PARAMS_ADDR + PARAM_FROM_OFFSET, BigInt(range?.from ?? 0), true);
  dv.setBigUint64(PARAMS_ADDR + PARAM_TO_OFFSET, BigInt(range?.to ?? 0), true);
  dv.setBigUint64(PARAMS_ADDR + PARAM_PASS_OFFSET, 0n, true);
  dv.setUint32(PARAMS_ADDR + PARAM_REPORT_EVERY_OFFSET, every, true);
}

export interface GuestParams {
  readonly mode: number;
  readonly from: number;
  readonly to: number;
  readonly pass: number;
}

/** Read the parameter block back; undefined when no built-in guest wrote one. */
export function readGuestParams(ram: Uint8Array): GuestParams | undefined {
  if (ram.byteLength < PARAMS_ADDR + PAGE) return undefined;
  const dv = view(ram);
  if (dv.getUint32(PARAMS_ADDR + PARAM_MAGIC_OFFSET, true) !== PARAMS_MAGIC) return undefined;
  return {
    mode: dv.getUint32(PARAMS_ADDR + PARAM_MODE_OFFSET, true),
    from: Number(dv.getBigUint64(PARAMS_ADDR + PARAM_FROM_OFFSET, true)),
    to: Number(dv.getBigUint64(PARAMS_ADDR + PARAM_TO_OFFSET, true)),
    pass: Number(dv.getBigUint64(PARAMS_ADDR + PARAM_PASS_OFFSET, true)),
  };
}

export interface SweepCheck {
  readonly ok: boolean;
  /** Completed passes according to the parameter block. */
  readonly pass: number;
  /** Pages already incremented in the pass under way (counter = pass + 1). */
  readonly ahead: number;
  readonly problem?: string;
}

/**
 * The check QEMU's migration test makes: with the guest stopped, every swept page's
 * counter equals the completed pass count or is one ahead of it (the current pass has
 * reached it), and the pages one ahead form a prefix of the range.
 */
export function checkSweepCounters(ram: Uint8Array | readonly RamPiece[]): SweepCheck {
  const pieces = ram instanceof Uint8Array ? [{ guestAddress: 0, bytes: ram }] : ram;
  const low = pieces.find((p) => p.guestAddress === 0);
  const params = low ? readGuestParams(low.bytes) : undefined;
  if (!params) return { ok: false, pass: 0, ahead: 0, problem: 'no built-in guest parameter block in RAM' };
  if (params.mode !== GUEST_MODE_SWEEP) return { ok: true, pass: params.pass, ahead: 0 };
  const memory = new GuestPhysical(pieces);
  if (!memory.contains(params.from, PAGE) || !memory.contains(params.to - PAGE, PAGE)) {
    return { ok: false, pass: params.pass, ahead: 0, problem: `the swept range 0x${params.from.toString(16)}..0x${params.to.toString(16)} is not in guest RAM` };
  }
  const expectLow = params.pass >>> 0;
  const expectHigh = (params.pass + 1) >>> 0;
  let ahead = 0;
  let inPrefix = true;
  for (let addr = params.from; addr < params.to; addr += PAGE) {
    const counter = memory.getUint32(addr + PAGE_COUNTER_OFFSET);
    if (counter === expectHigh && inPrefix) {
      ahead++;
    } else if (counter === expectLow) {
      inPrefix = false;
    } else {
      return {
        ok: false, pass: params.pass, ahead,
        problem: `page at 0x${addr.toString(16)} has counter ${counter}; expected ${expectLow}${inPrefix ? ` or ${expectHigh}` : ''} (pass ${params.pass})`,
      };
    }
  }
  return { ok: true, pass: params.pass, ahead };
}
