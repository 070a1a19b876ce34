// The engine's rule (README.md here): no Node-specific imports or globals, so that it runs
// wherever JavaScript does; Node's pieces come in through the options. Checked on the
// compiled modules beside this test.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

test('the migration engine imports nothing from node: and touches no process global', () => {
  const dir = dirname(fileURLToPath(import.meta.url));
  const modules = readdirSync(dir).filter((f) => f.endsWith('.js') && !f.endsWith('.test.js'));
  assert.ok(modules.length > 10, `only ${modules.length} modules found in ${dir}`);
  for (const file of modules) {
    const text = readFileSync(join(dir, file), 'utf8');
    assert.doesNotMatch(text, /from ['"]node:|require\(|import\(['"]node:/, `${file} imports a Node module`);
    assert.doesNotMatch(text, /\bprocess\.|\bBuffer\./, `${file} uses a Node global`);
  }
});
