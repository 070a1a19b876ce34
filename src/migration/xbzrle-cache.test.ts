import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PAGE_SIZE } from '../hypervisor/types.js';
import { xbzrleDecode } from '../stream/ram-codec.js';
import { XBZRLE_SEND_PAGE, XBZRLE_UNCHANGED, XbzrleCache } from './xbzrle-cache.js';

function ramWithPages(n: number): Uint8Array {
  const ram = new Uint8Array(n * PAGE_SIZE);
  for (let i = 0; i < ram.length; i += 97) ram[i] = (i >>> 7) | 1;
  return ram;
}

test('first sight is a miss (page goes whole and is cached); then a small change goes as a delta that decodes back', () => {
  const cache = new XbzrleCache(16 * PAGE_SIZE);
  const ram = ramWithPages(4);
  assert.equal(cache.encode(2, ram, 2 * PAGE_SIZE), XBZRLE_SEND_PAGE);
  assert.equal(cache.cacheMiss, 1);
  assert.deepEqual(cache.current, ram.subarray(2 * PAGE_SIZE, 3 * PAGE_SIZE));
  const destination = ram.slice(2 * PAGE_SIZE, 3 * PAGE_SIZE); // what the peer now holds

  ram[2 * PAGE_SIZE + 100] = ram[2 * PAGE_SIZE + 100]! ^ 0xff;
  ram[2 * PAGE_SIZE + 3000] = 42;
  const len = cache.encode(2, ram, 2 * PAGE_SIZE);
  assert.ok(len > 0 && len < 32, `delta of ${len} bytes`);
  xbzrleDecode(cache.encoded.subarray(0, len), destination);
  assert.deepEqual(destination, ram.subarray(2 * PAGE_SIZE, 3 * PAGE_SIZE));
  assert.equal(cache.pages, 1);
  assert.equal(cache.bytes, len + 3);
  assert.equal(cache.encodingRate, PAGE_SIZE / (len + 3));
  assert.equal(cache.cacheMissRate, 0.5);

  assert.equal(cache.encode(2, ram, 2 * PAGE_SIZE), XBZRLE_UNCHANGED, 'nothing changed since: nothing to send');
});

test('a delta that would not fit in a page overflows: sent whole, and the cache follows', () => {
  const cache = new XbzrleCache(4 * PAGE_SIZE);
  const ram = new Uint8Array(PAGE_SIZE);
  cache.encode(0, ram, 0);
  for (let i = 0; i < PAGE_SIZE; i += 2) ram[i] = 0xaa; // every other byte changes: runs cost more than the page
  assert.equal(cache.encode(0, ram, 0), XBZRLE_SEND_PAGE);
  assert.equal(cache.overflow, 1);
  assert.equal(cache.encode(0, ram, 0), XBZRLE_UNCHANGED, 'the cache holds what was sent whole');
});

test('a colliding page does not evict one cached within the last two generations', () => {
  const cache = new XbzrleCache(2 * PAGE_SIZE); // 2 slots: pages 1 and 3 collide
  const ram = ramWithPages(4);
  cache.generation = 5;
  cache.encode(1, ram, PAGE_SIZE);
  assert.equal(cache.encode(3, ram, 3 * PAGE_SIZE), XBZRLE_SEND_PAGE);
  ram[PAGE_SIZE + 5] = ram[PAGE_SIZE + 5]! ^ 1;
  assert.ok(cache.encode(1, ram, PAGE_SIZE) > 0, 'page 1 is still cached');
  cache.generation = 8;
  cache.encode(3, ram, 3 * PAGE_SIZE); // page 1 is now old enough to give way
  assert.equal(cache.encode(1, ram, PAGE_SIZE), XBZRLE_SEND_PAGE);
});

test('a page sent as ZERO turns its cached copy into zeros', () => {
  const cache = new XbzrleCache(4 * PAGE_SIZE);
  const ram = ramWithPages(1);
  cache.encode(0, ram, 0);
  cache.zeroSent(0);
  const zeroed = new Uint8Array(PAGE_SIZE);
  zeroed[10] = 1;
  const len = cache.encode(0, zeroed, 0);
  assert.ok(len > 0 && len < 8, 'delta against zeros, not against the old data');
  const peer = new Uint8Array(PAGE_SIZE);
  xbzrleDecode(cache.encoded.subarray(0, len), peer);
  assert.deepEqual(peer, zeroed);
});
