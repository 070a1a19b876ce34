// Post-copy at the engine's edge: a VM whose guest RAM this process does not map itself
// (v86's WebAssembly memory; the engine's fake VM) cannot register it with userfaultfd, so
// the capability is refused there — never accepted and then failed at the switch; nor can
// it give that RAM back (release-ram). The migrations themselves run between real
// processes: test/postcopy-e2e.test.ts.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeSide } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;

test('post-copy is refused on a VM whose guest RAM is not memory this process maps (v86), before any migration', () => {
  const side = makeSide({ memorySize: MiB }, {});
  assert.ok(side.vm.memory.every((b) => b.hostAddress === undefined));
  assert.throws(() => side.migration.setCapabilities([{ capability: 'postcopy-ram', state: true }]), /'postcopy-ram' is not supported by Ferry/);
  assert.equal(side.migration.queryCapabilities().find((c) => c.capability === 'postcopy-ram')?.state, false);
  assert.throws(() => side.migration.startPostcopy(), /Enable postcopy with migrate_set_capability before the start of migration/);
});

test('release-ram is refused on a VM whose guest RAM cannot be given back to the host (v86), in the words of any capability Ferry lacks there', () => {
  const side = makeSide({ memorySize: MiB }, {});
  assert.ok(side.vm.memory.every((b) => b.discard === undefined));
  assert.throws(() => side.migration.setCapabilities([{ capability: 'release-ram', state: true }]), /'release-ram' is not supported by Ferry/);
  assert.equal(side.migration.queryCapabilities().find((c) => c.capability === 'release-ram')?.state, false);
});
