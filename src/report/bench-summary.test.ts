// Medians, ratios and the Markdown table of the Ferry-vs-QEMU benchmark, including the
// cases that did not converge (reported, not hidden).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatStat, markdownTable, resultsForJson, stat, summarize } from './bench-summary.js';
import { sampleBenchResults } from './testing/sample-records.js';

test('stat: median of odd and even counts, min and max', () => {
  assert.deepEqual(stat([3, 1, 2]), { median: 2, min: 1, max: 3, n: 3 });
  assert.deepEqual(stat([4, 1, 2, 3]), { median: 2.5, min: 1, max: 4, n: 4 });
  assert.equal(stat([]), undefined);
});

test('summarize: medians per side and Ferry/QEMU ratios; none where a side has no completed run', () => {
  const [first, second] = summarize(sampleBenchResults());
  assert.equal(first!.ferry.totalMs!.median, 310);
  assert.equal(first!.qemu.totalMs!.median, 450);
  assert.equal(first!.ratios.totalMs, 310 / 450);
  assert.equal(first!.ferry.completed, 2);
  assert.equal(second!.ferry.completed, 0);
  assert.equal(second!.ferry.notConverged, 1);
  assert.equal(second!.ferry.skipped, 1);
  assert.equal(second!.ferry.tried, 1, 'a skipped rep was not tried');
  assert.equal(second!.ratios.totalMs, undefined);
  assert.equal(formatStat('totalMs', second!.ferry), 'did not converge (1/1)');
  assert.equal(formatStat('totalMs', first!.qemu), '450 ms [400 ms–500 ms]');
});

test('markdownTable: a header, an alignment row and one row per case', () => {
  const md = markdownTable(summarize(sampleBenchResults()));
  const lines = md.split('\n');
  assert.equal(lines.length, 4);
  assert.match(lines[0]!, /^\| case \| Ferry total time \| QEMU total time \| F\/Q \|/);
  assert.match(lines[1]!, /^\|---\|---:\|/);
  assert.match(lines[2]!, /^\| 256 MiB sweep, tcp, limit 300 ms \| 310 ms \[300 ms–320 ms\] \| 450 ms \[400 ms–500 ms\] \| 0\.69× \|/);
  assert.match(lines[3]!, /did not converge \(1\/1\)/);
  for (const line of lines) assert.equal(line.split('|').length, lines[0]!.split('|').length, 'every row has every column');
});

test('resultsForJson drops the bulky per-run records and keeps the figures', () => {
  const results = sampleBenchResults();
  const json = resultsForJson(results);
  assert.ok(results.runs.some((r) => r.record));
  assert.ok(json.runs.every((r) => r.record === undefined));
  assert.equal(json.runs[0]!.totalMs, results.runs[0]!.totalMs);
});
