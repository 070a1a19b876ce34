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

test('with a hole below 4 GiB the default sweep ends at it, and a range may lie above 4 GiB but not across the hole', () => {
  const GiB = 1024 * MiB;
  const hole = 0xe0000000;
  const size = 4 * GiB + 512 * MiB; // 3.5 GiB below the hole, 1 GiB from 4 GiB
  assert.deepEqual(sweepRange(parseGuestSpec('builtin:sweep'), size, hole), { from: MiB, to: hole });
  assert.deepEqual(sweepRange(parseGuestSpec('builtin:sweep,from=4G,to=100G'), size, hole), { from: 4 * GiB, to: 5 * GiB });
  assert.throws(() => sweepRange(parseGuestSpec('builtin:sweep,from=3G,to=5G'), size, hole), /crosses the hole without RAM at 0xe0000000\.\.0x100000000/);
  assert.throws(() => sweepRange(parseGuestSpec('builtin:hot,mib=3584'), size, hole), /does not fit in 3584 MiB/);
  // No hole where the RAM ends below it (the limit changes nothing), nor in the sim (none given).
  assert.deepEqual(sweepRange(parseGuestSpec('builtin:sweep'), 64 * MiB, hole), { from: MiB, to: 64 * MiB });
  assert.deepEqual(sweepRange(parseGuestSpec('builtin:sweep'), size), { from: MiB, to: size });
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
