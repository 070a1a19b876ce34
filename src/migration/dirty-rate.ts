// calc-dirty-rate and query-dirty-rate, as QEMU 7.2 has them (migration/dirtyrate.c): how
// fast the guest dirties its memory, measured before a migration to judge whether it can
// converge within a downtime limit at a given bandwidth. Two ways to measure:
//
// - page-sampling (the default): hash a random sample of pages, wait, hash them again;
//   the share that changed, times the RAM's size, over the period. Reads memory only, so
//   it works under every accelerator and beside a running migration.
// - dirty-bitmap: the accelerator's dirty log over the period — exact, but the log is the
//   migration's, so the two exclude each other.
//
// (dirty-ring needs KVM's dirty ring, which Ferry does not use: it is refused, as QEMU
// refuses it where the ring is not enabled.) Either way the figure is distinct pages
// written per second, in MB/s: a page written twice counts once.

import { MigrationError } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { DirtyLog, GuestMemoryBlock } from '../hypervisor/types.js';
import { WORDS_PER_PAGE, popcount32, wordsOf } from './ram-pages.js';

export const DIRTY_RATE_MODES = ['page-sampling', 'dirty-ring', 'dirty-bitmap'] as const;
export type DirtyRateMode = (typeof DIRTY_RATE_MODES)[number];
export type DirtyRateStatus = 'unstarted' | 'measuring' | 'measured';

/** QEMU's limits and default (dirtyrate.h). */
export const MIN_CALC_TIME_S = 1;
export const MAX_CALC_TIME_S = 60;
export const MIN_SAMPLE_PAGES = 128;
export const MAX_SAMPLE_PAGES = 16384;
export const DEFAULT_SAMPLE_PAGES = 512;

/** query-dirty-rate's answer (QEMU's DirtyRateInfo). */
export interface DirtyRateInfo {
  /** MB/s, once measured. */
  'dirty-rate'?: number;
  status: DirtyRateStatus;
  /** When the measurement began: seconds on the host's monotonic clock, as QEMU reports it. */
  'start-time': number;
  /** The period asked for, in seconds. */
  'calc-time': number;
  /** Pages sampled per GiB (page-sampling); 0 before the first measurement. */
  'sample-pages': number;
  mode: DirtyRateMode;
}

export interface DirtyRateRequest {
  readonly calcTime: number;
  readonly samplePages?: number;
  readonly mode?: DirtyRateMode;
}

export interface DirtyRateMeterOptions {
  /** Guest RAM, fetched anew for each round (a block's view may be replaced meanwhile). */
  readonly memory: () => readonly GuestMemoryBlock[];
  readonly dirtyLog: DirtyLog;
  /** Why the dirty log cannot be had now (a migration holds it), or undefined. */
  readonly dirtyLogBusy: () => string | undefined;
  /** Milliseconds, monotonic. */
  readonly now: () => number;
  readonly sleep: (ms: number) => Promise<void>;
  /** Uniform in [0, 1): which pages are sampled (Math.random by default). */
  readonly random?: () => number;
  /** Seconds for start-time: QEMU gives the host's monotonic clock (QEMU_CLOCK_REALTIME); `now` / 1000 by default. */
  readonly clockSeconds?: () => number;
  /** Told when a measurement failed (it then reads as measured with no rate). */
  readonly onError?: (err: unknown) => void;
}

export class DirtyRateMeter {
  readonly #o: DirtyRateMeterOptions;
  #info: DirtyRateInfo = { status: 'unstarted', 'start-time': 0, 'calc-time': 0, 'sample-pages': 0, mode: 'page-sampling' };
  #holdsDirtyLog = false;

  constructor(options: DirtyRateMeterOptions) {
    this.#o = options;
  }

  /** query-dirty-rate. */
  query(): DirtyRateInfo {
    return { ...this.#info };
  }

  /** Whether a dirty-bitmap measurement has the dirty log now (a migration must wait). */
  get holdsDirtyLog(): boolean {
    return this.#holdsDirtyLog;
  }

  /**
   * calc-dirty-rate: check the request (QEMU's order and words) and start measuring; the
   * result is read with query(). Returns the measurement, which never rejects.
   */
  start(request: DirtyRateRequest): Promise<void> {
    if (this.#info.status === 'measuring') throw new MigrationError('the dirty rate is already being measured.');
    const { calcTime } = request;
    if (!Number.isInteger(calcTime) || calcTime < MIN_CALC_TIME_S || calcTime > MAX_CALC_TIME_S) {
      throw new MigrationError(`calc-time is out of range[${MIN_CALC_TIME_S}, ${MAX_CALC_TIME_S}].`);
    }
    const mode = request.mode ?? 'page-sampling';
    if (request.samplePages !== undefined && mode !== 'page-sampling') {
      throw new MigrationError('either sample-pages or dirty-ring can be specified.');
    }
    const samplePages = request.samplePages ?? DEFAULT_SAMPLE_PAGES;
    if (!Number.isInteger(samplePages) || samplePages < MIN_SAMPLE_PAGES || samplePages > MAX_SAMPLE_PAGES) {
      throw new MigrationError(`sample-pages is out of range[${MIN_SAMPLE_PAGES}, ${MAX_SAMPLE_PAGES}].`);
    }
    if (mode === 'dirty-ring') throw new MigrationError('mode dirty-ring is not enabled, use other method instead.');
    if (mode === 'dirty-bitmap') {
      const busy = this.#o.dirtyLogBusy() ?? (this.#o.dirtyLog.active ? 'the dirty log is in use' : undefined);
      if (busy !== undefined) throw new MigrationError(`Cannot measure the dirty rate with the dirty bitmap: ${busy}; use mode page-sampling`);
    }
    const clock = this.#o.clockSeconds ?? (() => Math.floor(this.#o.now() / 1000));
    this.#info = {
      status: 'measuring', 'start-time': clock(), 'calc-time': calcTime,
      // Nothing is sampled in bitmap mode.
      'sample-pages': mode === 'page-sampling' ? samplePages : 0, mode,
    };
    const measuring = mode === 'dirty-bitmap' ? this.#byBitmap(calcTime) : this.#bySampling(calcTime, samplePages);
    return measuring.then(
      (rate) => {
        this.#info = { ...this.#info, status: 'measured', 'dirty-rate': rate };
      },
      (err: unknown) => {
        this.#o.onError?.(err);
        this.#info = { ...this.#info, status: 'measured' };
      },
    );
  }

  async #bySampling(calcTime: number, perGiB: number): Promise<number> {
    const random = this.#o.random ?? Math.random;
    const samples = this.#o.memory().map((block) => samplePageNumbers(block.size / PAGE_SIZE, Math.max(1, Math.floor((block.size * perGiB) / 2 ** 30)), random));
    const before = this.#hashSamples(samples);
    const start = this.#o.now();
    await this.#o.sleep(calcTime * 1000);
    const after = this.#hashSamples(samples);
    const ms = Math.max(1, this.#o.now() - start);
    let sampled = 0;
    let dirty = 0;
    let totalMB = 0;
    this.#o.memory().forEach((block, b) => {
      const pages = samples[b]!;
      sampled += pages.length;
      for (let i = 0; i < pages.length; i++) if (before[b]![i] !== after[b]![i]) dirty++;
      totalMB += block.size / 2 ** 20;
    });
    // dirtyrate.c update_dirtyrate: the dirty share of the samples, times the RAM, per period.
    return sampled === 0 ? 0 : Math.floor((dirty * totalMB * 1000) / (sampled * ms));
  }

  #hashSamples(samples: readonly Uint32Array[]): Uint32Array[] {
    const memory = this.#o.memory();
    return samples.map((pages, b) => {
      const words = wordsOf(memory[b]!);
      const hashes = new Uint32Array(pages.length);
      for (let i = 0; i < pages.length; i++) hashes[i] = pageHash(words, pages[i]! * WORDS_PER_PAGE);
      return hashes;
    });
  }

  async #byBitmap(calcTime: number): Promise<number> {
    const log = this.#o.dirtyLog;
    this.#holdsDirtyLog = true;
    log.start();
    try {
      const start = this.#o.now();
      await this.#o.sleep(calcTime * 1000);
      const bitmaps = log.sync();
      const ms = Math.max(1, this.#o.now() - start);
      const memory = this.#o.memory();
      let pages = 0;
      bitmaps.forEach((bitmap, b) => {
        // Bits past a block's last page (a bitmap rounded up by its accelerator) mean nothing.
        const blockPages = (memory[b]?.size ?? 0) / PAGE_SIZE;
        const words = Math.min(bitmap.length, Math.ceil(blockPages / 32));
        for (let i = 0; i < words; i++) {
          let bits = bitmap[i]!;
          if (i === words - 1 && blockPages % 32 !== 0) bits &= 2 ** (blockPages % 32) - 1;
          if (bits !== 0) pages += popcount32(bits);
        }
      });
      return Math.floor((pages * PAGE_SIZE * 1000) / (2 ** 20 * ms));
    } finally {
      log.stop();
      this.#holdsDirtyLog = false;
    }
  }
}

/**
 * A 32-bit FNV-1a hash of the page whose first word is `word` (QEMU hashes with crc32;
 * any hash that changes when the page does will do, and this one needs nothing but JS).
 */
export function pageHash(words: Uint32Array, word: number): number {
  let h = 0x811c9dc5;
  const end = word + WORDS_PER_PAGE;
  for (let i = word; i < end; i++) h = Math.imul(h ^ words[i]!, 0x01000193);
  return h >>> 0;
}

/** `count` distinct page numbers out of `pages`, sorted (all of them when count ≥ pages). */
export function samplePageNumbers(pages: number, count: number, random: () => number): Uint32Array {
  if (count >= pages) return Uint32Array.from({ length: pages }, (_, i) => i);
  const chosen = new Set<number>();
  while (chosen.size < count) chosen.add(Math.floor(random() * pages));
  return Uint32Array.from(chosen).sort();
}
