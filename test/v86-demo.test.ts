// `ferry demo --accel v86`, the newcomer's first look at a Linux guest moving, run as a
// person would: it must end with the shell, file and heartbeat carried over.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runFerry } from './e2e-helpers.js';
import { linuxGuestAvailable } from '../src/v86/v86-accelerator.js';

const SKIP = linuxGuestAvailable() ? false : 'the Linux guest is not built: run scripts/setup-linux-guest.sh (as root) first';

test('ferry demo --accel v86 boots Linux, migrates it, and keeps the same shell going', { skip: SKIP, timeout: 300_000 }, async () => {
  const result = await runFerry(['demo', '--accel', 'v86']);
  assert.equal(result.code, 0, `${result.stdout}\n${result.stderr}`);
  assert.match(result.stdout, /the guest is up: heartbeat \d+/);
  assert.match(result.stdout, /Migration completed/);
  assert.match(result.stdout, /Destination console: heartbeat \d+ — the heartbeat goes on/);
  assert.match(result.stdout, /Destination shell: \/tmp\/note still says "written before the move at [\d.]+s", uptime now [\d.]+s/);
});
