// Runs every compiled test file (dist/**/*.test.js) with node's test runner.
// Node 20 has no glob support for --test, and would treat every .js file under a
// "test" folder as a test, so the list is built here. Extra arguments are passed on
// (e.g. `npm test -- --test-name-pattern=serial`).
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

function collect(dir, out) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) collect(path, out);
    else if (name.endsWith('.test.js')) out.push(path);
  }
  return out;
}

const files = collect('dist', []).sort();
if (files.length === 0) {
  console.error('run-tests: no compiled tests under dist/ — did the build run?');
  process.exit(1);
}
const args = ['--test', '--test-reporter=spec', ...process.argv.slice(2), ...files];
const result = spawnSync(process.execPath, args, { stdio: 'inherit' });
process.exit(result.status ?? 1);
