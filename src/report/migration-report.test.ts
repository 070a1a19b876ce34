// The migration page as text: self-contained, escaped, and naming the accelerator.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renderBenchReport } from './bench-report.js';
import { renderMigrationReport, throughputSeries } from './migration-report.js';
import { sampleBenchResults, sampleRecord, sampleSamples } from './testing/sample-records.js';

test('throughputSeries: bytes between consecutive samples per second, at the later sample', () => {
  const points = throughputSeries(sampleSamples());
  assert.equal(points.length, 7);
  assert.deepEqual(points[0], [100, (15_000 * 4104 + 1_384 * 9) * 1000 / 50]);
});

test('renderMigrationReport: one page, no external resources, the title escaped, the accelerator named', () => {
  const html = renderMigrationReport(sampleRecord());
  assert.match(html, /^<!doctype html>/);
  assert.match(html, /Sample migration &lt;256 MiB&gt; &amp; friends/);
  assert.match(html, /accelerator <b>sim<\/b>/);
  assert.doesNotMatch(html, /<script[^>]+src=|<link |@import|url\(/);
  assert.equal((html.match(/<svg /g) ?? []).length, 5);
});

test('renderMigrationReport: a run cancelled at the cap says it did not converge', () => {
  const html = renderMigrationReport(sampleRecord({ status: 'cancelled', cancelledAfterMs: 20_000 }));
  assert.match(html, /did not converge \(cancelled at 20\.0 s\)/);
});

test('renderBenchReport: says which accelerator each side ran and what sim and tcg mean', () => {
  const html = renderBenchReport(sampleBenchResults());
  assert.match(html, /Ferry ran the <code>sim<\/code> accelerator; QEMU ran <code>tcg<\/code>/);
  assert.match(html, /250,000 pages\/s/);
  assert.match(html, /did not converge/);
});
