// The HTML report of one migration: headline figures, pages sent and dirtied per pass,
// throughput and RAM left over time with the passes and the switchover marked, and the
// downtime against its limit. `ferry migrate --report` and the QEMU benchmark use it.

import { formatBytes, formatMs, formatRate } from '../format.js';
import { cards, escapeHtml, page, table } from './html.js';
import type { MigrationRecord, MigrationSample } from './migration-record.js';
import { barChart, lineChart, PALETTE, type Marker } from './svg-chart.js';

/** Throughput between consecutive samples (bytes/s at the later sample's time): what the wire really carried. */
export function throughputSeries(samples: readonly MigrationSample[]): Array<[number, number]> {
  const points: Array<[number, number]> = [];
  let previous: MigrationSample | undefined;
  for (const sample of samples) {
    if (!sample.info.ram) continue;
    if (previous?.info.ram && sample.atMs > previous.atMs) {
      const bytes = sample.info.ram.transferred - previous.info.ram.transferred;
      points.push([sample.atMs, Math.max(0, (bytes * 1000) / (sample.atMs - previous.atMs))]);
    }
    previous = sample;
  }
  return points;
}

/** Average throughput of a finished run: bytes sent over total time. */
export function averageThroughput(record: MigrationRecord): number | undefined {
  const total = record.final['total-time'];
  const bytes = record.final.ram?.transferred;
  if (!total || bytes === undefined) return undefined;
  return (bytes * 1000) / total;
}

function timeMarkers(record: MigrationRecord): Marker[] {
  // Many short passes would bury the chart in labels: name about a dozen of them.
  const every = Math.ceil(record.passEvents.length / 12);
  const markers: Marker[] = record.passEvents.map((e, i) => ({ at: e.atMs, label: i % every === 0 ? `pass ${e.pass}` : '', color: PALETTE.muted }));
  if (record.switchoverMs !== undefined) {
    const end = record.final['total-time'];
    markers.push({
      at: record.switchoverMs,
      ...(end !== undefined && end > record.switchoverMs ? { to: end } : {}),
      label: record.passSource === 'engine' ? 'switchover (guest stopped)' : 'switchover (est.)',
      color: PALETTE.limit,
    });
  }
  return markers;
}


/** The charts and figures of one run, as an HTML fragment; `id` keeps element ids unique on a page. */
export function migrationSection(record: MigrationRecord, id: string): string {
  const final = record.final;
  // A cancelled run's final answer has no RAM figures: show where it had got to.
  const lastSample = [...record.samples].reverse().find((s) => s.info.ram);
  const ram = final.ram ?? lastSample?.info.ram;
  const average = averageThroughput(record) ?? (ram && lastSample && lastSample.atMs > 0 ? (ram.transferred * 1000) / lastSample.atMs : undefined);
  const headline = cards([
    ['status', record.cancelledAfterMs !== undefined ? `did not converge (cancelled at ${formatMs(record.cancelledAfterMs)})` : record.status],
    ['total time', final['total-time'] !== undefined ? formatMs(final['total-time']) : '—'],
    ['downtime', final.downtime !== undefined ? `${formatMs(final.downtime)} (limit ${record.downtimeLimitMs} ms)` : `— (limit ${record.downtimeLimitMs} ms)`],
    ['passes', ram ? String(ram['dirty-sync-count']) + (final.ram ? '' : ' before the cancel') : '—'],
    ['sent', ram ? formatBytes(ram.transferred) + (final.ram ? '' : ' before the cancel') : '—'],
    ['average throughput', average !== undefined ? formatRate(average) : '—'],
  ]);
  const facts =
    `<p class="lead"><b>${escapeHtml(record.peer)}</b>, accelerator <b>${escapeHtml(record.accelerator)}</b>, ` +
    `${escapeHtml(formatBytes(record.memoryBytes))} RAM, to <code>${escapeHtml(record.uri)}</code>, downtime-limit ${record.downtimeLimitMs} ms, ` +
    `max-bandwidth ${record.maxBandwidth === undefined ? 'peer default' : record.maxBandwidth >= 2 ** 40 ? 'unlimited' : formatRate(record.maxBandwidth)}. ` +
    `${record.samples.length} query-migrate samples; per-pass figures ${record.passSource === 'engine' ? 'from the engine (x-ferry-query-migrate-passes)' : 'derived from the samples (deltas between dirty-sync-count changes; a pass shorter than the poll interval merges into the next)'}.` +
    record.notes.map((note) => ` ${escapeHtml(note)}`).join('') +
    `</p>`;

  const passes = record.passes;
  const passChart = barChart({
    id: `${id}-passes`,
    title: 'Pages per pass: sent, zero, and dirtied while it was sent',
    yLabel: 'pages',
    categories: passes.map((p) => `pass ${p.pass}`),
    series: [
      { name: 'pages sent', color: PALETTE.ferry, values: passes.map((p) => p.pagesSent) },
      { name: 'zero pages', color: PALETTE.third, values: passes.map((p) => p.zeroPages) },
      { name: 'dirtied meanwhile', color: PALETTE.qemu, values: passes.map((p) => p.dirtyPages) },
    ],
  });
  const markers = timeMarkers(record);
  const throughput = throughputSeries(record.samples);
  const throughputChart = lineChart({
    id: `${id}-throughput`,
    title: 'Throughput over time (bytes sent between polls)',
    xLabel: 'ms since migrate',
    yLabel: 'MB/s',
    series: [{ name: 'throughput', color: PALETTE.ferry, points: throughput.map(([t, v]): [number, number] => [t, v / 1e6]) }],
    xMarkers: markers,
  });
  const MIB = 1048576;
  const remaining = record.samples.filter((s) => s.info.ram).map((s): [number, number] => [s.atMs, s.info.ram!.remaining / MIB]);
  const sent = record.samples.filter((s) => s.info.ram).map((s): [number, number] => [s.atMs, s.info.ram!.transferred / MIB]);
  const progressChart = lineChart({
    id: `${id}-progress`,
    title: 'RAM left to send, and bytes sent so far',
    xLabel: 'ms since migrate',
    yLabel: 'MiB',
    series: [
      { name: 'remaining', color: PALETTE.qemu, points: remaining },
      { name: 'sent', color: PALETTE.ferry, points: sent, dashed: true },
    ],
    xMarkers: markers,
  });
  const expected = record.samples
    .filter((s) => s.info['expected-downtime'] !== undefined)
    .map((s): [number, number] => [s.atMs, s.info['expected-downtime']!]);
  const downtimeChart = barChart({
    id: `${id}-downtime`,
    title: 'Downtime against the limit',
    yLabel: 'ms',
    width: 340,
    categories: ['downtime'],
    series: [{ name: 'downtime', color: PALETTE.ferry, values: [final.downtime ?? null], nullLabel: record.status === 'completed' ? 'n/a' : 'did not finish' }],
    yMarkers: [{ at: record.downtimeLimitMs, label: `limit ${record.downtimeLimitMs} ms`, color: PALETTE.limit }],
  });
  const expectedChart = lineChart({
    id: `${id}-expected`,
    title: 'Expected downtime while active',
    xLabel: 'ms since migrate',
    yLabel: 'ms',
    width: 370,
    series: [{ name: 'expected-downtime', color: PALETTE.fourth, points: expected }],
    yMarkers: [{ at: record.downtimeLimitMs, label: 'limit', color: PALETTE.limit }],
  });
  const passTable = table(passes, [
    { header: 'pass', cell: (p) => String(p.pass) },
    { header: 'from', cell: (p) => formatMs(p.startMs) },
    { header: 'to', cell: (p) => formatMs(p.endMs) },
    { header: 'pages sent', cell: (p) => String(p.pagesSent) },
    { header: 'zero pages', cell: (p) => String(p.zeroPages) },
    { header: 'bytes', cell: (p) => formatBytes(p.bytesSent) },
    { header: 'dirtied meanwhile', cell: (p) => String(p.dirtyPages) },
    { header: 'rate', cell: (p) => (p.endMs > p.startMs ? formatRate((p.bytesSent * 1000) / (p.endMs - p.startMs)) : '—') },
  ]);
  return (
    headline +
    facts +
    (final['error-desc'] ? `<p class="notice">error: ${escapeHtml(final['error-desc'])}</p>` : '') +
    `<div class="grid"><div class="panel">${throughputChart}</div><div class="panel">${progressChart}</div>` +
    `<div class="panel">${passChart}</div><div class="panel">${downtimeChart}</div><div class="panel">${expectedChart}</div></div>` +
    `<details><summary>Per-pass figures (${passes.length} passes)</summary>${passTable}</details>`
  );
}

/** One migration as a whole, self-contained page. */
export function renderMigrationReport(record: MigrationRecord): string {
  const body =
    `<h1>${escapeHtml(record.title)}</h1>` +
    migrationSection(record, 'run') +
    `<footer>Written by ferry migrate --report at ${escapeHtml(new Date().toISOString())}. Figures are query-migrate's, polled from the source over QMP; times are from the moment migrate was sent.</footer>`;
  return page(record.title, body);
}
