// The xbzrle capability end to end: pages written again go as deltas, the destination
// applies them in place, and RAM still matches.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { digest, makePair } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;

async function run(xbzrle: boolean): Promise<{ transferred: number; xbzrlePages: number; text: string }> {
  const { src, dst } = makePair(4 * MiB);
  src.vm.fillPages(0, 1024);
  src.vm.startSyncWorkload(128, 256); // small changes (a counter byte) to a 1 MiB working set, again and again
  try {
    if (xbzrle) src.migration.setCapabilities([{ capability: 'xbzrle', state: true }]);
    src.migration.setParameters({ 'max-bandwidth': 0, 'downtime-limit': 0, 'xbzrle-cache-size': 8 * MiB });
    await dst.migration.migrateIncoming('memory:');
    src.migration.migrate('memory:');
    // Let it iterate over the same pages a number of times, then stop the guest so it completes.
    await new Promise<void>((resolve, reject) => {
      const check = setInterval(() => {
        const count = src.migration.queryMigrate().ram?.['dirty-sync-count'] ?? 0;
        if (count >= 20) {
          clearInterval(check);
          src.vm.stop();
          resolve();
        } else if (src.migration.status === 'failed') {
          clearInterval(check);
          reject(new Error(src.migration.queryMigrate()['error-desc']));
        }
      }, 2);
    });
    await src.migration.whenSettled();
    await dst.migration.whenIncomingSettled();
  } finally {
    src.vm.stopWorkload();
  }
  assert.equal(src.migration.status, 'completed');
  assert.equal(dst.migration.incomingStatus, 'completed', dst.migration.incomingError);
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
  const info = src.migration.queryMigrate();
  assert.ok(info.ram);
  return { transferred: info.ram.transferred, xbzrlePages: info['xbzrle-cache']?.pages ?? 0, text: src.migration.infoMigrateText() };
}

test('with xbzrle, re-sent pages go as deltas and RAM matches; without it they go whole', async () => {
  const plain = await run(false);
  assert.equal(plain.xbzrlePages, 0);
  assert.doesNotMatch(plain.text, /xbzrle/);
  const delta = await run(true);
  assert.ok(delta.xbzrlePages > 100, `${delta.xbzrlePages} XBZRLE pages`);
  assert.match(delta.text, /^xbzrle pages: \d+ pages$/m);
  assert.match(delta.text, /^cache size: 8388608 bytes$/m);
  // 20 syncs of 128 pages, ~4 KiB each whole; a few bytes each as deltas once cached.
  const resentWhole = plain.transferred - 4 * MiB;
  const resentDelta = delta.transferred - 4 * MiB;
  assert.ok(resentDelta < resentWhole / 4, `re-sent ${resentDelta} bytes with xbzrle, ${resentWhole} without`);
});
