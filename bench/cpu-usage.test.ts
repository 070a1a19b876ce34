import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpuBetween, sampleCpu } from './cpu-usage.js';

test('cpu usage: a busy main thread shows up as main-thread CPU, and the machine as busy', () => {
  const before = sampleCpu([process.pid]);
  const until = performance.now() + 200;
  let spins = 0;
  while (performance.now() < until) spins++;
  const { processes, machineBusy } = cpuBetween(before, sampleCpu([process.pid]));
  const mine = processes.get(process.pid)!;
  assert.ok(spins > 0);
  assert.ok(mine.mainMs >= 100 && mine.mainMs <= 400, `main thread ${mine.mainMs} ms for 200 ms of spinning`);
  assert.ok(mine.otherMs >= 0);
  assert.ok(machineBusy > 0 && machineBusy <= 1, `machine busy ${machineBusy}`);
});
