// The benchmark's HTML page: which accelerator each side ran, the ceilings, Ferry vs QEMU
// per cell for total time, downtime, guest pause, throughput and bytes (medians with min–max), the
// table with ratios, and each cell's representative run of either side in full.

import { formatBytes } from '../format.js';
import {
  formatPagesPerSec,
  formatRatio,
  formatStat,
  metricTitle,
  METRICS,
  summarize,
  type BenchCell,
  type BenchResults,
  type BenchRun,
  type CellSummary,
  type Metric,
  type Side,
  type SideSummary,
} from './bench-summary.js';
import { cards, escapeHtml, page, table } from './html.js';
import { formatMs, formatRate } from '../format.js';
import { migrationSection } from './migration-report.js';
import { barChart, PALETTE } from './svg-chart.js';

/** "256M tcp\n300 ms": short enough to sit under a group of bars. */
export function shortCellLabel(cell: BenchCell): string {
  const size = cell.memoryMiB >= 1024 ? `${cell.memoryMiB / 1024}G` : `${cell.memoryMiB}M`;
  const transport = cell.transport === 'exec-file' ? 'file' : cell.transport;
  return `${size}${cell.guest === 'idle' ? ' idle' : ''} ${transport}\n${cell.downtimeLimitMs} ms`;
}

/** Which way is better for a metric: less time, downtime and bytes; more throughput. */
function better(metric: Metric, ratio: number | undefined): string {
  if (ratio === undefined) return '';
  const good = metric === 'throughput' ? ratio > 1.05 : ratio < 0.95;
  const bad = metric === 'throughput' ? ratio < 0.95 : ratio > 1.05;
  return good ? 'better' : bad ? 'worse' : '';
}

export function acceleratorNotice(accelerators: Readonly<Record<Side, string>>, ferryRates: Readonly<Record<string, number>>): string {
  const parts: string[] = [];
  parts.push(`<b>Ferry ran the <code>${escapeHtml(accelerators.ferry)}</code> accelerator; QEMU ran <code>${escapeHtml(accelerators.qemu)}</code>.</b>`);
  if (accelerators.ferry === 'sim') {
    const rates = Object.entries(ferryRates).map(([size, rate]) => `${size}: ${Math.round(rate).toLocaleString('en-US')} pages/s`);
    parts.push(
      `With <code>sim</code> no guest code runs: a workload model writes guest RAM in the sweep guest's pattern (one counter per page, page after page) at a set rate` +
        (rates.length ? ` (${escapeHtml(rates.join(', '))})` : '') +
        ', and marks a dirty bitmap where KVM would keep a dirty log.',
    );
  }
  if (accelerators.qemu === 'tcg') {
    parts.push(
      'With <code>tcg</code> QEMU emulates the guest in software and tracks dirty pages itself; its guest runs the real boot-sector sweep, at whatever speed TCG gives it.',
    );
  }
  if (accelerators.ferry !== 'kvm' || accelerators.qemu !== 'kvm') {
    parts.push('So the engines are compared on the same kind of work, not on the same guest CPU: read the ratios as migration-engine figures, and compare the guests\' dirty rates (table below) before reading the downtimes.');
  }
  return `<div class="notice">${parts.join(' ')}</div>`;
}

function sideCell(metric: Metric, side: SideSummary): string {
  const text = escapeHtml(formatStat(metric, side));
  // A completed side without the figure has none to give (no destination to resume on a file).
  return side[metric] || side.completed > 0 ? text : `<span class="worse">${text}</span>`;
}

/** The run that stands for a side of a cell: the completed one with the median total time, else the first tried. */
export function representativeRun(runs: readonly BenchRun[]): BenchRun | undefined {
  const done = runs.filter((r) => r.status === 'completed' && r.record).sort((a, b) => (a.totalMs ?? 0) - (b.totalMs ?? 0));
  if (done.length > 0) return done[Math.floor((done.length - 1) / 2)];
  return runs.find((r) => r.record);
}

function comparisonChart(summaries: readonly CellSummary[], metric: Metric, results: BenchResults): string {
  const value = (side: SideSummary): number | null => {
    const s = side[metric];
    if (!s) return null;
    return metric === 'throughput' ? s.median / 1e6 : metric === 'bytes' ? s.median / 1048576 : s.median;
  };
  const range = (side: SideSummary): [number, number] | null => {
    const s = side[metric];
    if (!s || s.n < 2) return null;
    const k = metric === 'throughput' ? 1e6 : metric === 'bytes' ? 1048576 : 1;
    return [s.min / k, s.max / k];
  };
  const unit = metric === 'throughput' ? 'MB/s' : metric === 'bytes' ? 'MiB' : 'ms';
  const nullLabel = (side: SideSummary): string => (side.notConverged > 0 ? 'no conv.' : side.failed > 0 ? 'failed' : 'n/a');
  return barChart({
    id: `cmp-${metric}`,
    title: `${metricTitle(metric)[0]!.toUpperCase()}${metricTitle(metric).slice(1)} per case (median, whiskers min–max)${metric === 'throughput' ? ' — higher is better' : ' — lower is better'}`,
    yLabel: unit,
    width: Math.max(680, 80 * summaries.length + 100),
    height: 320,
    categories: summaries.map((s) => shortCellLabel(s.cell)),
    series: [
      {
        name: `Ferry (${results.accelerators.ferry})`,
        color: PALETTE.ferry,
        values: summaries.map((s) => value(s.ferry)),
        ranges: summaries.map((s) => range(s.ferry)),
        nullLabel: 'no conv.',
      },
      {
        name: `QEMU (${results.accelerators.qemu})`,
        color: PALETTE.qemu,
        values: summaries.map((s) => value(s.qemu)),
        ranges: summaries.map((s) => range(s.qemu)),
        nullLabel: summaries.some((s) => nullLabel(s.qemu) === 'failed') ? 'no result' : 'no conv.',
      },
    ],
  });
}

export function renderBenchReport(results: BenchResults): string {
  const summaries = summarize(results);
  const c = results.ceilings;
  const head =
    `<h1>Ferry vs ${escapeHtml(results.qemuVersion)}: live migration, side by side</h1>` +
    `<p class="lead">Both sides driven through QMP by the same client code (<code>runMigration</code>) and read back with <code>query-migrate</code>, so a field means the same on both. ` +
    `Each case ran ${results.reps} time(s) per side, alternating QEMU and Ferry; max-bandwidth unlimited on both; a run that had not converged after ${formatMs(results.capMs)} was cancelled and is shown as <i>did not converge</i>. ` +
    `Command: <code>${escapeHtml(results.command)}</code>, ${escapeHtml(results.startedAt)} → ${escapeHtml(results.finishedAt)}.</p>` +
    acceleratorNotice(results.accelerators, results.ferryRates) +
    cards([
      ['host', `${results.host.cpus} CPUs, ${formatBytes(results.host.memoryBytes)}`],
      ['load average at start', results.host.loadAverageAtStart.map((l) => l.toFixed(1)).join(' ')],
      ['Node', results.host.node],
      ['loopback tcp (Node)', c ? formatRate(c.tcpBytesPerSec) : 'not measured'],
      ['unix socket (Node)', c ? formatRate(c.unixBytesPerSec) : 'not measured'],
      ['memcpy (warm)', c ? formatRate(c.memcpyBytesPerSec) : 'not measured'],
    ]);
  const charts = `<h2>Ferry vs QEMU per case</h2><div class="grid">${METRICS.map((m) => `<div class="panel">${comparisonChart(summaries, m, results)}</div>`).join('')}</div>`;
  const columns = [
    { header: 'case', left: true, cell: (s: CellSummary) => s.cell.key },
    ...METRICS.flatMap((m) => [
      { header: `Ferry ${metricTitle(m)}`, html: true, cell: (s: CellSummary) => sideCell(m, s.ferry) },
      { header: `QEMU ${metricTitle(m)}`, html: true, cell: (s: CellSummary) => sideCell(m, s.qemu) },
      {
        header: 'F/Q',
        html: true,
        cell: (s: CellSummary) => {
          const cls = better(m, s.ratios[m]);
          return `<span${cls ? ` class="${cls}"` : ''}>${escapeHtml(formatRatio(s.ratios[m]))}</span>`;
        },
      },
    ]),
    {
      header: 'guest rate before, F / Q',
      cell: (s: CellSummary) => (s.cell.guest === 'idle' ? 'idle' : `${formatPagesPerSec(s.ferry.guestPagesPerSec)} / ${formatPagesPerSec(s.qemu.guestPagesPerSec)}`),
    },
    {
      header: 'dirty-pages-rate during, F / Q',
      cell: (s: CellSummary) => `${formatPagesPerSec(s.ferry.dirtyPagesRate)} / ${formatPagesPerSec(s.qemu.dirtyPagesRate)}`,
    },
  ];
  const tableHtml =
    `<h2>Table</h2><p class="lead">Median [min–max] over completed runs; F/Q is Ferry's median over QEMU's (green: Ferry better by more than 5%, red: worse). ` +
    `Throughput is bytes sent over total time. A figure marked (k/n done) comes from the k runs of n that converged. ` +
    `The last two columns are pages/s: how fast each guest wrote before the migration (from its pass counter), and query-migrate's dirty-pages-rate while it ran — the same field on both sides, the load each engine had to outrun.</p>` +
    table(summaries, columns);
  const details = summaries
    .map((s, i) => {
      const runsOf = (side: Side): BenchRun[] => results.runs.filter((r) => r.cellKey === s.cell.key && r.side === side);
      const sections = (['qemu', 'ferry'] as const)
        .map((side) => {
          const run = representativeRun(runsOf(side));
          if (!run?.record) return `<h3>${side === 'ferry' ? 'Ferry' : 'QEMU'}: no run recorded</h3>`;
          return `<h3>${escapeHtml(run.record.title)}</h3>` + migrationSection(run.record, `cell${i}-${side}`);
        })
        .join('');
      return `<details><summary>${escapeHtml(s.cell.key)}: the median run of each side</summary>${sections}</details>`;
    })
    .join('');
  const body =
    head +
    charts +
    tableHtml +
    `<h2>Each case in detail</h2>${details}` +
    `<footer>Written by npm run bench:vs-qemu. Every figure is query-migrate's, read over QMP from the source.</footer>`;
  return page(`Ferry vs ${results.qemuVersion}`, body);
}
