// The Ferry-vs-QEMU benchmark's results as data: cells, runs, medians with min–max, the
// Ferry/QEMU ratios, and the Markdown table. Shared by bench/vs-qemu.ts (which measures)
// and bench-report.ts (which draws), so the table and the page cannot disagree.

import { formatBytes } from '../format.js';
import type { MigrationRecord } from './migration-record.js';
import { formatMs, formatRate } from '../format.js';

export type Side = 'ferry' | 'qemu';
export type BenchTransport = 'tcp' | 'unix' | 'exec-file';

export interface BenchCell {
  readonly key: string;
  readonly memoryMiB: number;
  readonly transport: BenchTransport;
  readonly downtimeLimitMs: number;
  readonly guest: 'sweep' | 'idle';
}

export type RunStatus = 'completed' | 'not-converged' | 'failed' | 'skipped';

export interface BenchRun {
  readonly side: Side;
  readonly cellKey: string;
  readonly rep: number;
  /** What ran the source's guest: "sim", "kvm" (Ferry); "tcg", "kvm" (QEMU). */
  readonly accelerator: string;
  readonly status: RunStatus;
  readonly totalMs?: number;
  readonly downtimeMs?: number;
  /**
   * How long the guest was paused as its users saw it: from the source's STOP event to the
   * destination's RESUME (QMP timestamps, one host clock). It covers what `downtime` leaves
   * out — the destination loading the last of the stream and starting the vCPUs — and is
   * measured the same way on both sides. None without a destination (exec to a file).
   */
  readonly pauseMs?: number;
  readonly setupMs?: number;
  readonly bytes?: number;
  /** Bytes sent over total time. */
  readonly throughput?: number;
  readonly passes?: number;
  /** How fast the guest dirtied pages just before the migration (pages/s, measured). */
  readonly guestPagesPerSec?: number;
  /** Median of query-migrate's ram.dirty-pages-rate while active (pages/s): the same field on both sides. */
  readonly dirtyPagesRate?: number;
  /** The destination's run state after the migration (running, for a good one). */
  readonly destinationStatus?: string;
  /** Ferry only, when the downtime overran the limit: the engine's account of where it went (its completion trace). */
  readonly downtimeBreakdown?: string;
  /** Ferry only: switchovers its downtime guard called off (the guest ran again), when there were any. */
  readonly switchoversCalledOff?: number;
  readonly error?: string;
  /** The whole run for the HTML page; dropped from the JSON to keep it small. */
  readonly record?: MigrationRecord;
}

export interface Stat {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly n: number;
}

export interface SideSummary {
  readonly tried: number;
  readonly completed: number;
  readonly notConverged: number;
  readonly failed: number;
  readonly skipped: number;
  readonly totalMs: Stat | undefined;
  readonly downtimeMs: Stat | undefined;
  readonly pauseMs: Stat | undefined;
  readonly throughput: Stat | undefined;
  readonly bytes: Stat | undefined;
  readonly guestPagesPerSec: Stat | undefined;
  readonly dirtyPagesRate: Stat | undefined;
}

export type Metric = 'totalMs' | 'downtimeMs' | 'pauseMs' | 'throughput' | 'bytes';
export const METRICS: readonly Metric[] = ['totalMs', 'downtimeMs', 'pauseMs', 'throughput', 'bytes'];

export interface CellSummary {
  readonly cell: BenchCell;
  readonly ferry: SideSummary;
  readonly qemu: SideSummary;
  /** Ferry's median over QEMU's, per metric; undefined when either side has no completed run. */
  readonly ratios: Readonly<Record<Metric, number | undefined>>;
}

export interface HostInfo {
  readonly cpus: number;
  readonly cpuModel: string;
  readonly memoryBytes: number;
  readonly kernel: string;
  readonly node: string;
  readonly loadAverageAtStart: readonly number[];
}

export interface CeilingFigures {
  readonly tcpBytesPerSec: number;
  readonly unixBytesPerSec: number;
  readonly memcpyBytesPerSec: number;
}

export interface BenchResults {
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly command: string;
  readonly host: HostInfo;
  readonly qemuVersion: string;
  readonly accelerators: Readonly<Record<Side, string>>;
  /** The sim workload's rate per RAM size (pages/s), when Ferry ran sim. */
  readonly ferryRates: Readonly<Record<string, number>>;
  readonly reps: number;
  readonly capMs: number;
  readonly ceilings: CeilingFigures | undefined;
  readonly cells: readonly BenchCell[];
  readonly runs: readonly BenchRun[];
}

export function cellKey(cell: Omit<BenchCell, 'key'>): string {
  const size = cell.memoryMiB >= 1024 ? `${cell.memoryMiB / 1024} GiB` : `${cell.memoryMiB} MiB`;
  return `${size} ${cell.guest === 'idle' ? 'idle' : 'sweep'}, ${cell.transport}, limit ${cell.downtimeLimitMs} ms`;
}

export function stat(values: readonly number[]): Stat | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]!, n: sorted.length };
}

export function summarizeSide(runs: readonly BenchRun[]): SideSummary {
  const done = runs.filter((r) => r.status === 'completed');
  const pick = (key: Metric | 'guestPagesPerSec' | 'dirtyPagesRate', from: readonly BenchRun[] = done): Stat | undefined =>
    stat(from.map((r) => r[key]).filter((v): v is number => typeof v === 'number' && Number.isFinite(v)));
  return {
    tried: runs.filter((r) => r.status !== 'skipped').length,
    completed: done.length,
    notConverged: runs.filter((r) => r.status === 'not-converged').length,
    failed: runs.filter((r) => r.status === 'failed').length,
    skipped: runs.filter((r) => r.status === 'skipped').length,
    totalMs: pick('totalMs'),
    downtimeMs: pick('downtimeMs'),
    pauseMs: pick('pauseMs'),
    throughput: pick('throughput'),
    bytes: pick('bytes'),
    guestPagesPerSec: pick('guestPagesPerSec', runs),
    dirtyPagesRate: pick('dirtyPagesRate', runs),
  };
}

export function summarize(results: Pick<BenchResults, 'cells' | 'runs'>): CellSummary[] {
  return results.cells.map((cell) => {
    const ferry = summarizeSide(results.runs.filter((r) => r.cellKey === cell.key && r.side === 'ferry'));
    const qemu = summarizeSide(results.runs.filter((r) => r.cellKey === cell.key && r.side === 'qemu'));
    const ratio = (metric: Metric): number | undefined => {
      const a = ferry[metric]?.median;
      const b = qemu[metric]?.median;
      return a !== undefined && b !== undefined && b > 0 ? a / b : undefined;
    };
    const ratios = Object.fromEntries(METRICS.map((m) => [m, ratio(m)])) as Record<Metric, number | undefined>;
    return { cell, ferry, qemu, ratios };
  });
}

export function formatMetric(metric: Metric, value: number): string {
  switch (metric) {
    case 'totalMs':
    case 'downtimeMs':
    case 'pauseMs':
      return formatMs(value);
    case 'throughput':
      return formatRate(value);
    case 'bytes':
      return formatBytes(value);
  }
}

/** "412 ms [380–450]", or why there is no figure: "did not converge (2/2)". */
export function formatStat(metric: Metric, side: SideSummary): string {
  const s = side[metric];
  if (s) {
    const text = s.n > 1 ? `${formatMetric(metric, s.median)} [${formatMetric(metric, s.min)}–${formatMetric(metric, s.max)}]` : formatMetric(metric, s.median);
    const partial = side.completed < side.tried ? ` (${side.completed}/${side.tried} done)` : '';
    return text + partial;
  }
  if (side.notConverged > 0) return `did not converge (${side.notConverged}/${side.tried})`;
  if (side.failed > 0) return `failed (${side.failed}/${side.tried})`;
  return side.tried === 0 ? 'not run' : '—';
}

export function formatRatio(ratio: number | undefined): string {
  return ratio === undefined ? '—' : `${ratio.toFixed(2)}×`;
}

const METRIC_TITLES: Readonly<Record<Metric, string>> = {
  totalMs: 'total time', downtimeMs: 'downtime', pauseMs: 'guest paused', throughput: 'throughput', bytes: 'bytes sent',
};

export function metricTitle(metric: Metric): string {
  return METRIC_TITLES[metric];
}

/** Pages per second, short: "4.70M", "250k", "—" when not measured. */
export function formatPagesPerSec(s: Stat | undefined): string {
  if (!s) return '—';
  return s.median >= 1e6 ? `${(s.median / 1e6).toFixed(2)}M` : `${Math.round(s.median / 1000)}k`;
}

/** The Markdown table: one row per cell, each metric as Ferry, QEMU and Ferry/QEMU. */
export function markdownTable(summaries: readonly CellSummary[]): string {
  const header = ['case', ...METRICS.flatMap((m) => [`Ferry ${METRIC_TITLES[m]}`, `QEMU ${METRIC_TITLES[m]}`, 'F/Q']), 'dirty-pages-rate F / Q'];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`];
  for (const s of summaries) {
    const cells = [
      s.cell.key,
      ...METRICS.flatMap((m) => [formatStat(m, s.ferry), formatStat(m, s.qemu), formatRatio(s.ratios[m])]),
      `${formatPagesPerSec(s.ferry.dirtyPagesRate)} / ${formatPagesPerSec(s.qemu.dirtyPagesRate)}`,
    ];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** The results without the per-run records (samples make them large), for the JSON file. */
export function resultsForJson(results: BenchResults): BenchResults {
  return { ...results, runs: results.runs.map(({ record: _record, ...run }) => run) };
}
