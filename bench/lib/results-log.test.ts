import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { keepOutput } from './results-log.js';

test('keepOutput: runs that end in the same minute each keep their own file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-results-'));
  const log = console.log;
  const paths: string[] = [];
  try {
    for (const run of ['first', 'second', 'third']) {
      const save = keepOutput('bench', dir);
      console.log(`the ${run} run`);
      paths.push(save());
      console.log = log;
    }
  } finally {
    console.log = log;
  }
  try {
    assert.equal(new Set(paths).size, 3, paths.join(', '));
    assert.equal(readdirSync(dir).length, 3);
    assert.deepEqual(paths.map((p) => readFileSync(p, 'utf8')), ['the first run\n', 'the second run\n', 'the third run\n']);
    assert.match(paths[0]!, /bench-\d{4}-\d\d-\d\dT\d\d-\d\d(-\d\d)?\.txt$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
