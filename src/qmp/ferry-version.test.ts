import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { FERRY_VERSION, ferryQmpVersion } from './ferry-version.js';

test('FERRY_VERSION is package.json’s version', () => {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  assert.equal(FERRY_VERSION, pkg.version);
});

test('the QMP version splits major.minor.micro and names the package ferry-X', () => {
  assert.deepEqual(ferryQmpVersion('1.2.3'), { qemu: { major: 1, minor: 2, micro: 3 }, package: 'ferry-1.2.3' });
  assert.deepEqual(ferryQmpVersion('0.4.0-rc.1'), { qemu: { major: 0, minor: 4, micro: 0 }, package: 'ferry-0.4.0-rc.1' });
  assert.deepEqual(ferryQmpVersion('2'), { qemu: { major: 2, minor: 0, micro: 0 }, package: 'ferry-2' });
});
