// The `validate-uuid` capability (QEMU 7.2): the source puts its UUID in the stream's
// configuration, and a destination that has a UUID of its own loads only a stream that
// carries the same one — a guard against migrating into the wrong VM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseUuid } from '../src/uuid.js';
import { digest, makePair, migrateToEnd } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;
const A = parseUuid('6f1c4c2e-0b6a-4d52-9d2c-4b1f3e9a7c10')!;
const B = parseUuid('0d9e8b7a-6c5d-4e3f-8a1b-2c3d4e5f6a7b')!;

async function migrate(uuids: { src?: Uint8Array; dst?: Uint8Array }, validate: boolean) {
  const { src, dst } = makePair(4 * MiB, { uuids });
  src.vm.fillPages(0, 256);
  if (validate) src.migration.setCapabilities([{ capability: 'validate-uuid', state: true }]);
  src.migration.setParameters({ 'max-bandwidth': 0 });
  await migrateToEnd(src, dst);
  return { src, dst };
}

test('validate-uuid: the same UUID on both sides migrates as usual', async () => {
  const { src, dst } = await migrate({ src: A, dst: A }, true);
  assert.equal(src.migration.status, 'completed', src.migration.queryMigrate()['error-desc']);
  assert.equal(dst.migration.incomingStatus, 'completed');
  assert.equal(dst.vm.runState, 'running');
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
});

test('validate-uuid: a destination with another UUID refuses the stream at its configuration, in QEMU\'s words, and never starts', async () => {
  const { dst } = await migrate({ src: A, dst: B }, true);
  assert.equal(dst.migration.incomingStatus, 'failed');
  // QEMU's words, then where in the stream (as every stream error a destination reports).
  assert.equal(
    dst.migration.queryMigrate()['error-desc'],
    'UUID received is 6f1c4c2e-0b6a-4d52-9d2c-4b1f3e9a7c10 and local is 0d9e8b7a-6c5d-4e3f-8a1b-2c3d4e5f6a7b (stream offset 66, section "configuration")',
  );
  assert.ok(!dst.vm.runStates.includes('running'));
  assert.ok(dst.vm.ram.every((byte) => byte === 0), 'no RAM was loaded');
});

test('validate-uuid: a source without a UUID sends zeros, which a destination with one refuses (as QEMU)', async () => {
  const { dst } = await migrate({ dst: B }, true);
  assert.match(dst.migration.queryMigrate()['error-desc'] ?? '', /^UUID received is 00000000-0000-0000-0000-000000000000 and local is 0d9e8b7a/);
});

test('validate-uuid: a destination without a UUID of its own, or a source without the capability, is not checked', async () => {
  for (const [uuids, validate] of [[{ src: A }, true], [{ src: A, dst: B }, false]] as const) {
    const { src, dst } = await migrate(uuids, validate);
    assert.equal(dst.migration.incomingStatus, 'completed', `${JSON.stringify(Object.keys(uuids))} validate=${validate}: ${dst.migration.queryMigrate()['error-desc']}`);
    assert.equal(src.migration.status, 'completed');
  }
});
