import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canTransition, type RunState } from './run-state.js';

const ALL: RunState[] = ['prelaunch', 'running', 'paused', 'shutdown', 'inmigrate', 'finish-migrate', 'postmigrate', 'internal-error'];

test('run states: staying put is always allowed', () => {
  for (const state of ALL) assert.equal(canTransition(state, state), true, state);
});

test('run states: the paths a migration takes are allowed, on both sides', () => {
  // Source: running → finish-migrate → postmigrate; a failed switchover goes back.
  assert.ok(canTransition('running', 'finish-migrate'));
  assert.ok(canTransition('finish-migrate', 'postmigrate'));
  assert.ok(canTransition('finish-migrate', 'running'));
  assert.ok(canTransition('paused', 'finish-migrate'));
  // Destination: prelaunch → inmigrate → running (or paused with -S).
  assert.ok(canTransition('prelaunch', 'inmigrate'));
  assert.ok(canTransition('inmigrate', 'running'));
  assert.ok(canTransition('inmigrate', 'paused'));
});

test('run states: what QEMU forbids stays forbidden', () => {
  assert.equal(canTransition('running', 'inmigrate'), false, 'a running guest cannot become a destination');
  assert.equal(canTransition('running', 'postmigrate'), false, 'postmigrate only follows finish-migrate');
  assert.equal(canTransition('postmigrate', 'inmigrate'), false);
  assert.equal(canTransition('shutdown', 'internal-error'), false);
  assert.equal(canTransition('internal-error', 'inmigrate'), false);
});
