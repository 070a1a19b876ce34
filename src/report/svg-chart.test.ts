// The SVG renderer: round ticks, one mark per data point, labels escaped, gaps for
// missing values.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { barChart, lineChart, niceTicks, shortNumber } from './svg-chart.js';

const count = (svg: string, re: RegExp): number => (svg.match(re) ?? []).length;

test('niceTicks covers the range with round steps', () => {
  assert.deepEqual(niceTicks(0, 100, 5), [0, 20, 40, 60, 80, 100]);
  assert.deepEqual(niceTicks(0, 1234, 5), [0, 250, 500, 750, 1000, 1250]);
  assert.deepEqual(niceTicks(0, 0.3, 3), [0, 0.1, 0.2, 0.3]);
  // An empty range still gets an axis.
  assert.deepEqual(niceTicks(0, 0, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(Number.NaN, 5), [0]);
});

test('shortNumber writes axis figures without exponents', () => {
  assert.equal(shortNumber(1250), '1250');
  assert.equal(shortNumber(12_500), '12.5k');
  assert.equal(shortNumber(2_500_000), '2.5M');
  assert.equal(shortNumber(0.25), '0.25');
});

test('lineChart draws one circle per point and declares the count', () => {
  const svg = lineChart({
    id: 'c1',
    title: 'T <x> & "y"',
    xLabel: 'ms',
    yLabel: 'MB/s',
    series: [
      { name: 'a', color: '#000', points: [[0, 1], [10, 2], [20, 3]] },
      { name: 'b', color: '#111', points: [[5, 1]] },
      { name: 'empty', color: '#222', points: [] },
    ],
    xMarkers: [{ at: 12, label: 'pass 2', color: '#333' }, { at: 15, to: 20, label: 'switchover', color: '#f00' }],
  });
  assert.equal(count(svg, /<circle class="point"/g), 4);
  assert.match(svg, /data-points="4"/);
  assert.equal(count(svg, /<polyline class="series"/g), 2, 'no line for an empty series');
  assert.match(svg, /T &lt;x&gt; &amp; &quot;y&quot;/);
  assert.doesNotMatch(svg, /<x>/);
  assert.equal(count(svg, /class="marker"/g), 2);
});

test('barChart draws a bar per value, a dashed gap with its label for null, and whiskers for ranges', () => {
  const svg = barChart({
    id: 'b1',
    title: 'Bars',
    yLabel: 'ms',
    categories: ['one', 'two\nlines'],
    series: [
      { name: 'Ferry', color: '#00f', values: [10, null], ranges: [[8, 12], null], nullLabel: 'no conv.' },
      { name: 'QEMU', color: '#f80', values: [20, 30] },
    ],
    yMarkers: [{ at: 25, label: 'limit', color: '#f00' }],
  });
  assert.equal(count(svg, /<rect class="bar/g), 4);
  assert.equal(count(svg, /<rect class="bar missing"/g), 1);
  assert.match(svg, /no conv\./);
  assert.equal(count(svg, /class="whisker"/g), 1);
  assert.match(svg, /data-points="4"/);
  assert.match(svg, />lines</, 'a category label can take two lines');
});

test('barChart with many categories (a run of 120 passes) keeps every bar a valid, positive width', () => {
  const categories = Array.from({ length: 120 }, (_, i) => `pass ${i + 1}`);
  const svg = barChart({
    id: 'many',
    title: 'Many',
    yLabel: 'pages',
    categories,
    series: ['a', 'b', 'c'].map((name) => ({ name, color: '#000', values: categories.map((_, i) => i) })),
  });
  assert.equal(count(svg, /<rect class="bar"/g), 360);
  for (const match of svg.matchAll(/<rect class="bar[^>]* width="([^"]+)"/g)) assert.ok(Number(match[1]) > 0, `width ${match[1]}`);
  assert.ok(count(svg, />pass \d+</g) < 40, 'labels thinned out so they do not overlap');
});
