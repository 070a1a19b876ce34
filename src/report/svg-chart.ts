// A small SVG chart renderer for the reports: line charts with markers and grouped bar
// charts with min–max whiskers, as strings, so a report is one self-contained page that
// needs no script or network to show. Every data point is an element tests can count.

import { escapeHtml } from './html.js';

export const PALETTE = { ferry: '#2563eb', qemu: '#d97706', third: '#059669', fourth: '#9333ea', limit: '#dc2626', muted: '#6b7280' };

export interface LineSeries {
  readonly name: string;
  readonly color: string;
  readonly points: readonly (readonly [number, number])[];
  /** Draw the points as dots too (default true when there are few of them). */
  readonly dots?: boolean;
  readonly dashed?: boolean;
}

export interface Marker {
  readonly at: number;
  readonly label: string;
  readonly color: string;
  /** A shaded span from `at` to `to` instead of a line. */
  readonly to?: number;
}

export interface LineChartSpec {
  readonly id: string;
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: readonly LineSeries[];
  readonly xMarkers?: readonly Marker[];
  readonly yMarkers?: readonly Marker[];
  readonly xFormat?: (value: number) => string;
  readonly yFormat?: (value: number) => string;
  readonly width?: number;
  readonly height?: number;
}

export interface BarSeries {
  readonly name: string;
  readonly color: string;
  /** One value per category; null draws a labelled gap (no result, e.g. did not converge). */
  readonly values: readonly (number | null)[];
  /** Optional whiskers per category (min, max). */
  readonly ranges?: readonly (readonly [number, number] | null)[];
  /** Text for a null value (default "n/a"). */
  readonly nullLabel?: string;
}

export interface BarChartSpec {
  readonly id: string;
  readonly title: string;
  readonly yLabel: string;
  readonly categories: readonly string[];
  readonly series: readonly BarSeries[];
  readonly yMarkers?: readonly Marker[];
  readonly yFormat?: (value: number) => string;
  readonly width?: number;
  readonly height?: number;
}

const MARGIN = { top: 56, right: 20, bottom: 54, left: 72 };
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, sans-serif"';

/** Round tick values covering [min, max] (about `count` of them): 1, 2, 2.5 or 5 × 10^n apart. */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [0];
  if (max <= min) max = min + (min === 0 ? 1 : Math.abs(min));
  const raw = (max - min) / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
  const start = Math.floor(min / step) * step;
  const ticks: number[] = [];
  for (let v = start; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1]! < max) ticks.push(Number((ticks[ticks.length - 1]! + step).toPrecision(12)));
  return ticks;
}

/** Axis figures without exponents: 1250 → "1.25k", 0.5 → "0.5". */
export function shortNumber(value: number): string {
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${Number((value / 1e6).toPrecision(3))}M`;
  if (abs >= 1e4) return `${Number((value / 1e3).toPrecision(3))}k`;
  if (abs >= 100) return String(Math.round(value));
  return String(Number(value.toPrecision(3)));
}

const fmt = shortNumber;

function n(value: number): string {
  return Number.isFinite(value) ? value.toFixed(1) : '0';
}

function frame(id: string, title: string, width: number, height: number, kind: string, count: number, body: string): string {
  return (
    `<svg id="${escapeHtml(id)}" class="chart" data-kind="${kind}" data-points="${count}" viewBox="0 0 ${width} ${height}" ` +
    `width="${width}" height="${height}" role="img" aria-label="${escapeHtml(title)}" xmlns="http://www.w3.org/2000/svg" ${FONT}>` +
    `<text x="${MARGIN.left}" y="22" font-size="15" font-weight="600" fill="#111827">${escapeHtml(title)}</text>` +
    body +
    `</svg>`
  );
}

/** The legend sits on its own row under the title, so long titles and names never collide. */
function legend(items: readonly { name: string; color: string; dashed?: boolean }[], width: number): string {
  let x = MARGIN.left;
  let y = 32;
  let out = '';
  for (const item of items) {
    const itemWidth = item.name.length * 6.4 + 30;
    if (x + itemWidth > width - MARGIN.right && x > MARGIN.left) {
      x = MARGIN.left;
      y += 14;
    }
    out +=
      `<g class="legend-item"><rect x="${n(x)}" y="${y}" width="14" height="10" rx="2" fill="${item.color}"${item.dashed ? ' fill-opacity="0.45"' : ''}/>` +
      `<text x="${n(x + 18)}" y="${y + 9}" font-size="12" fill="#374151">${escapeHtml(item.name)}</text></g>`;
    x += itemWidth;
  }
  return out;
}

function yAxis(ticks: readonly number[], scale: (v: number) => number, x0: number, x1: number, format: (v: number) => string, label: string, height: number): string {
  let out = '';
  for (const t of ticks) {
    const y = scale(t);
    out += `<line x1="${x0}" x2="${n(x1)}" y1="${n(y)}" y2="${n(y)}" stroke="#e5e7eb"/>`;
    out += `<text x="${x0 - 6}" y="${n(y + 4)}" font-size="11" text-anchor="end" fill="#4b5563">${escapeHtml(format(t))}</text>`;
  }
  const mid = (MARGIN.top + height - MARGIN.bottom) / 2;
  out += `<text transform="translate(14 ${n(mid)}) rotate(-90)" font-size="12" text-anchor="middle" fill="#374151">${escapeHtml(label)}</text>`;
  return out;
}

/** A line chart; every point is a <circle class="point"> (hidden when dots are off) so it can be counted. */
export function lineChart(spec: LineChartSpec): string {
  const width = spec.width ?? 680;
  const height = spec.height ?? 300;
  const xFormat = spec.xFormat ?? fmt;
  const yFormat = spec.yFormat ?? fmt;
  const all = spec.series.flatMap((s) => s.points);
  const xs = [...all.map((p) => p[0]), ...(spec.xMarkers ?? []).flatMap((m) => [m.at, m.to ?? m.at])];
  const ys = [0, ...all.map((p) => p[1]), ...(spec.yMarkers ?? []).map((m) => m.at)];
  const xTicks = niceTicks(xs.length ? Math.min(0, ...xs) : 0, xs.length ? Math.max(...xs) : 1, 6);
  const yTicks = niceTicks(0, Math.max(...ys), 5);
  const x0 = MARGIN.left;
  const x1 = width - MARGIN.right;
  const y0 = height - MARGIN.bottom;
  const y1 = MARGIN.top;
  const xMin = xTicks[0]!;
  const xMax = xTicks[xTicks.length - 1]!;
  const yMax = yTicks[yTicks.length - 1]!;
  const sx = (v: number): number => x0 + ((v - xMin) / (xMax - xMin || 1)) * (x1 - x0);
  const sy = (v: number): number => y0 - (v / (yMax || 1)) * (y0 - y1);

  let body = yAxis(yTicks, sy, x0, x1, yFormat, spec.yLabel, height);
  for (const t of xTicks) {
    body += `<text x="${n(sx(t))}" y="${y0 + 16}" font-size="11" text-anchor="middle" fill="#4b5563">${escapeHtml(xFormat(t))}</text>`;
  }
  body += `<line x1="${x0}" x2="${x1}" y1="${y0}" y2="${y0}" stroke="#9ca3af"/>`;
  body += `<text x="${n((x0 + x1) / 2)}" y="${height - 12}" font-size="12" text-anchor="middle" fill="#374151">${escapeHtml(spec.xLabel)}</text>`;
  // Line markers' labels go on two rows; one that would overlap a label on both rows is
  // left out (its line stays, with the label as a tooltip). Spans (the switchover) always
  // get a third row of their own.
  const rowEnds = [Number.NEGATIVE_INFINITY, Number.NEGATIVE_INFINITY];
  (spec.xMarkers ?? []).forEach((m) => {
    const x = sx(m.at) + 3;
    const row = m.to !== undefined ? 2 : rowEnds.findIndex((end) => x > end + 4);
    const labelY = y1 + 12 + Math.max(0, row) * 13;
    const label = row >= 0 ? m.label : '';
    if (row >= 0 && row < 2 && label) rowEnds[row] = x + label.length * 6;
    if (m.to !== undefined) {
      body += `<rect class="marker" x="${n(sx(m.at))}" y="${y1}" width="${n(Math.max(1.5, sx(m.to) - sx(m.at)))}" height="${y0 - y1}" fill="${m.color}" fill-opacity="0.15"><title>${escapeHtml(m.label)}</title></rect>`;
      if (label) body += `<text x="${n(x)}" y="${labelY}" font-size="11" fill="${m.color}">${escapeHtml(label)}</text>`;
    } else {
      body += `<line class="marker" x1="${n(sx(m.at))}" x2="${n(sx(m.at))}" y1="${y1}" y2="${y0}" stroke="${m.color}" stroke-dasharray="4 3"><title>${escapeHtml(m.label)}</title></line>`;
      if (label) body += `<text x="${n(x)}" y="${labelY}" font-size="11" fill="${m.color}">${escapeHtml(label)}</text>`;
    }
  });
  for (const m of spec.yMarkers ?? []) {
    body += `<line class="marker" x1="${x0}" x2="${x1}" y1="${n(sy(m.at))}" y2="${n(sy(m.at))}" stroke="${m.color}" stroke-dasharray="6 3"/>`;
    body += `<text x="${x1 - 4}" y="${n(sy(m.at) - 4)}" font-size="11" text-anchor="end" fill="${m.color}">${escapeHtml(m.label)}</text>`;
  }
  let count = 0;
  for (const s of spec.series) {
    if (s.points.length === 0) continue;
    const path = s.points.map((p) => `${n(sx(p[0]))},${n(sy(p[1]))}`).join(' ');
    body += `<polyline class="series" data-series="${escapeHtml(s.name)}" points="${path}" fill="none" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5 3"' : ''} stroke-linejoin="round"/>`;
    const dots = s.dots ?? s.points.length <= 60;
    for (const p of s.points) {
      count++;
      // Hidden points (long series) carry no tooltip: it is most of a large page's weight.
      body += dots
        ? `<circle class="point" data-series="${escapeHtml(s.name)}" cx="${n(sx(p[0]))}" cy="${n(sy(p[1]))}" r="3" fill="${s.color}">` +
          `<title>${escapeHtml(`${s.name}: ${yFormat(p[1])} at ${xFormat(p[0])}`)}</title></circle>`
        : `<circle class="point" cx="${n(sx(p[0]))}" cy="${n(sy(p[1]))}" r="0"/>`;
    }
  }
  body += legend(spec.series.filter((s) => s.points.length > 0), width);
  return frame(spec.id, spec.title, width, height, 'line', count, body);
}

/** Grouped bars, one group per category; every bar (or labelled gap) is a <rect class="bar">. */
export function barChart(spec: BarChartSpec): string {
  const width = spec.width ?? 680;
  const height = spec.height ?? 300;
  const yFormat = spec.yFormat ?? fmt;
  const values = spec.series.flatMap((s) => [
    ...s.values.filter((v): v is number => v !== null),
    ...(s.ranges ?? []).flatMap((r) => (r ? [r[1]] : [])),
  ]);
  const yTicks = niceTicks(0, Math.max(0, ...values, ...(spec.yMarkers ?? []).map((m) => m.at)), 5);
  const x0 = MARGIN.left;
  const x1 = width - MARGIN.right;
  const y0 = height - MARGIN.bottom;
  const y1 = MARGIN.top;
  const yMax = yTicks[yTicks.length - 1]!;
  const sy = (v: number): number => y0 - (v / (yMax || 1)) * (y0 - y1);
  const groupWidth = (x1 - x0) / Math.max(1, spec.categories.length);
  const barWidth = Math.min(48, (groupWidth * 0.8) / Math.max(1, spec.series.length));
  // The gap between bars shrinks with them: a run with 80 passes still draws every bar.
  const gap = Math.min(2, barWidth * 0.2);
  const inner = Math.max(0.2, barWidth - gap);
  // Category labels need ~48 px each; with more groups than fit, name every k-th.
  const labelEvery = Math.max(1, Math.ceil(48 / groupWidth));

  let body = yAxis(yTicks, sy, x0, x1, yFormat, spec.yLabel, height);
  body += `<line x1="${x0}" x2="${x1}" y1="${y0}" y2="${y0}" stroke="#9ca3af"/>`;
  let count = 0;
  spec.categories.forEach((category, ci) => {
    const groupLeft = x0 + ci * groupWidth + (groupWidth - barWidth * spec.series.length) / 2;
    const words = ci % labelEvery === 0 ? category.split('\n') : [];
    words.forEach((line, li) => {
      body += `<text x="${n(x0 + (ci + 0.5) * groupWidth)}" y="${y0 + 15 + li * 13}" font-size="11" text-anchor="middle" fill="#374151">${escapeHtml(line)}</text>`;
    });
    spec.series.forEach((s, si) => {
      const value = s.values[ci] ?? null;
      const x = groupLeft + si * barWidth;
      count++;
      if (value === null) {
        const label = s.nullLabel ?? 'n/a';
        body +=
          `<rect class="bar missing" data-series="${escapeHtml(s.name)}" data-category="${escapeHtml(category)}" x="${n(x + gap / 2)}" y="${n(y0 - 40)}" width="${n(inner)}" height="40" fill="none" stroke="${s.color}" stroke-dasharray="3 2">` +
          `<title>${escapeHtml(`${s.name}, ${category.replace(/\n/g, ' ')}: ${label}`)}</title></rect>` +
          // Narrow gaps get the label upright inside the box, so neighbours' labels cannot collide.
          (barWidth < label.length * 6
            ? `<text x="${n(x + barWidth / 2 + 3)}" y="${n(y0 - 20)}" font-size="9" text-anchor="middle" fill="${s.color}" transform="rotate(-90 ${n(x + barWidth / 2 + 3)} ${n(y0 - 20)})">${escapeHtml(label)}</text>`
            : `<text x="${n(x + barWidth / 2)}" y="${n(y0 - 44)}" font-size="11" text-anchor="middle" fill="${s.color}">${escapeHtml(label)}</text>`);
        return;
      }
      const top = sy(value);
      body +=
        `<rect class="bar" data-series="${escapeHtml(s.name)}" data-category="${escapeHtml(category)}" x="${n(x + gap / 2)}" y="${n(top)}" width="${n(inner)}" height="${n(Math.max(0.5, y0 - top))}" rx="2" fill="${s.color}">` +
        `<title>${escapeHtml(`${s.name}, ${category.replace(/\n/g, ' ')}: ${yFormat(value)}`)}</title></rect>`;
      const range = s.ranges?.[ci];
      if (range) {
        const cx = x + barWidth / 2;
        body += `<path class="whisker" d="M${n(cx)},${n(sy(range[0]))}V${n(sy(range[1]))}M${n(cx - 4)},${n(sy(range[0]))}h8M${n(cx - 4)},${n(sy(range[1]))}h8" stroke="#111827" stroke-width="1.2" fill="none"/>`;
      }
    });
  });
  for (const m of spec.yMarkers ?? []) {
    body += `<line class="marker" x1="${x0}" x2="${x1}" y1="${n(sy(m.at))}" y2="${n(sy(m.at))}" stroke="${m.color}" stroke-dasharray="6 3" stroke-width="1.5"/>`;
    body += `<text x="${x1 - 4}" y="${n(sy(m.at) - 4)}" font-size="11" text-anchor="end" fill="${m.color}">${escapeHtml(m.label)}</text>`;
  }
  body += legend(spec.series, width);
  return frame(spec.id, spec.title, width, height, 'bar', count, body);
}
