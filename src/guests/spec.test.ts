import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../errors.js';
import { readGuestParams, writeGuestParams } from './params.js';
import { parseGuestSpec, sweepRange } from './spec.js';

const MiB = 1024 * 1024;

test('guest specs parse into what each accelerator runs', () => {
  assert.deepEqual(parseGuestSpec('builtin:sweep'), { kind: 'sweep', from: MiB, to: undefined, rate: undefined });
  assert.deepEqual(parseGuestSpec('builtin:sweep,from=2M,to=100M,rate=5000,report=10'), { kind: 'sweep', from: 2 * MiB, to: 100 * MiB, rate: 5000, report: 10 });
  assert.deepEqual(parseGuestSpec('builtin:hot,mib=8'), { kind: 'hot', mib: 8, rate: undefined });
  assert.deepEqual(parseGuestSpec('builtin:random,rate=100'), { kind: 'random', rate: 100 });
  assert.deepEqual(parseGuestSpec('builtin:idle'), { kind: 'idle' });
});

test('bad guest specs are ConfigErrors that name the bad part', () => {
  const cases: Array<[string, RegExp]> = [
    ['linux', /expected builtin:sweep/],
    ['builtin:dance', /Unknown built-in guest "dance"/],
    ['builtin:sweep,speed=3', /Unknown --guest option "speed" for builtin:sweep/],
    ['builtin:sweep,from', /expected key=value/],
    ['builtin:sweep,from=512K', /first 1024 KiB/],
    ['builtin:sweep,from=8M,to=4M', /must be above from/],
    ['builtin:sweep,report=0', /Invalid --guest report "0"/],
    ['builtin:hot', /needs mib=N/],
    ['builtin:hot,mib=-1', /needs mib=N/],
    ['builtin:idle,rate=5', /Unknown --guest option "rate" for builtin:idle \(allowed: none\)/],
    ['builtin:random,rate=fast', /Invalid --guest rate "fast"/],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseGuestSpec(text), (err: unknown) => err instanceof ConfigError && message.test(err.message), text);
  }
});

test('the sweep range fits the RAM; a working set that does not fit is refused', () => {
  assert.deepEqual(sweepRange(parseGuestSpec('builtin:sweep'), 64 * MiB), { from: MiB, to: 64 * MiB });
  assert.deepEqual(sweepRange(parseGuestSpec('builtin:sweep,to=1G'), 64 * MiB), { from: MiB, to: 64 * MiB });
  assert.deepEqual(sweepRange(parseGuestSpec('builtin:hot,mib=4'), 64 * MiB), { from: MiB, to: 5 * MiB });
  assert.throws(() => sweepRange(parseGuestSpec('builtin:hot,mib=64'), 64 * MiB), /does not fit/);
  assert.equal(sweepRange(parseGuestSpec('builtin:idle'), 64 * MiB), undefined);
});

test('report=N reaches the parameter block the guest reads', () => {
  const ram = new Uint8Array(2 * MiB);
  writeGuestParams(ram, parseGuestSpec('builtin:sweep,report=7'), 2 * MiB);
  const view = new DataView(ram.buffer);
  assert.equal(view.getUint32(0x9000 + 32, true), 7);
  writeGuestParams(ram, parseGuestSpec('builtin:sweep'), 2 * MiB);
  assert.equal(view.getUint32(0x9000 + 32, true), 1);
  assert.deepEqual(readGuestParams(ram), { mode: 1, from: MiB, to: 2 * MiB, pass: 0 });
});
