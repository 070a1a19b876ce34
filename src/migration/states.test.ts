import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MigrationError } from '../errors.js';
import { MigrationStateMachine, canMigrationTransition, isMigrationRunning } from './states.js';
import type { MigrationStatus } from './states.js';

test('a migration walks none → setup → active → completed, and listeners hear each step', () => {
  const sm = new MigrationStateMachine();
  const seen: string[] = [];
  sm.onChange((to, from) => seen.push(`${from}>${to}`));
  sm.transition('setup');
  sm.transition('active');
  sm.transition('completed');
  assert.deepEqual(seen, ['none>setup', 'setup>active', 'active>completed']);
});

test('transitions QEMU would not make are refused with both names', () => {
  const sm = new MigrationStateMachine();
  assert.throws(() => sm.transition('active'), (err: unknown) => err instanceof MigrationError && /from "none" to "active"/.test(err.message));
  sm.transition('setup');
  assert.throws(() => sm.transition('completed'), MigrationError);
  assert.throws(() => sm.transition('cancelled'), MigrationError);
  assert.equal(sm.status, 'setup');
});

test('cancel paths: setup or active → cancelling → cancelled; a finished migration may start again', () => {
  for (const start of ['setup', 'active'] as MigrationStatus[]) {
    const sm = new MigrationStateMachine();
    sm.transition('setup');
    if (start === 'active') sm.transition('active');
    sm.transition('cancelling');
    sm.transition('cancelled');
    sm.transition('setup');
    assert.equal(sm.status, 'setup');
  }
  for (const end of ['completed', 'failed', 'cancelled'] as MigrationStatus[]) {
    assert.ok(canMigrationTransition(end, 'setup'));
    assert.ok(!canMigrationTransition(end, 'active'));
  }
});

test('transitionFrom is compare-and-set: a cancel that lost the race does not overwrite failed', () => {
  const sm = new MigrationStateMachine();
  sm.transition('setup');
  sm.transition('active');
  sm.transition('failed');
  assert.equal(sm.transitionFrom('active', 'cancelling'), false);
  assert.equal(sm.status, 'failed');
});

test('running means a new migration or a capability change must wait', () => {
  const running = ['setup', 'active', 'cancelling', 'device', 'postcopy-active'] as MigrationStatus[];
  const idle = ['none', 'completed', 'failed', 'cancelled'] as MigrationStatus[];
  for (const s of running) assert.ok(isMigrationRunning(s), s);
  for (const s of idle) assert.ok(!isMigrationRunning(s), s);
});

test('an unsubscribed listener hears nothing more', () => {
  const sm = new MigrationStateMachine();
  let calls = 0;
  const off = sm.onChange(() => calls++);
  sm.transition('setup');
  off();
  sm.transition('active');
  assert.equal(calls, 1);
});
