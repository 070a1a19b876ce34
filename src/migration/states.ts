// The migration status (QEMU's MigrationStatus) and the transitions allowed between
// states, with listeners told of every change. Postcopy states exist for names only.

import { MigrationError } from '../errors.js';

export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'postcopy-recover'
  | 'completed'
  | 'failed'
  | 'colo'
  | 'pre-switchover'
  | 'device'
  | 'wait-unplug';

export const MIGRATION_STATUSES: readonly MigrationStatus[] = [
  'none', 'setup', 'cancelling', 'cancelled', 'active', 'postcopy-active', 'postcopy-paused',
  'postcopy-recover', 'completed', 'failed', 'colo', 'pre-switchover', 'device', 'wait-unplug',
];

// A finished migration (completed, failed, cancelled) may be followed by a new one,
// which starts again at setup, as QEMU allows.
const ALLOWED: Record<MigrationStatus, readonly MigrationStatus[]> = {
  none: ['setup'],
  setup: ['active', 'cancelling', 'failed'],
  active: ['completed', 'failed', 'cancelling', 'pre-switchover', 'device', 'postcopy-active'],
  'pre-switchover': ['device', 'failed', 'cancelling'],
  device: ['completed', 'failed', 'cancelling'],
  // completed: a cancel that arrived after the last byte was flushed (the destination has it all).
  cancelling: ['cancelled', 'failed', 'completed'],
  cancelled: ['setup'],
  completed: ['setup'],
  failed: ['setup'],
  'postcopy-active': ['completed', 'failed', 'postcopy-paused', 'cancelling'],
  'postcopy-paused': ['postcopy-recover', 'failed'],
  'postcopy-recover': ['postcopy-active', 'postcopy-paused', 'failed'],
  colo: ['completed', 'failed'],
  'wait-unplug': ['active', 'failed', 'cancelling'],
};

export function canMigrationTransition(from: MigrationStatus, to: MigrationStatus): boolean {
  return ALLOWED[from].includes(to);
}

/** A migration is under way: a new one cannot start and capabilities cannot change. */
export function isMigrationRunning(status: MigrationStatus): boolean {
  return status !== 'none' && status !== 'completed' && status !== 'failed' && status !== 'cancelled';
}

export type StatusListener = (status: MigrationStatus, previous: MigrationStatus) => void;

export class MigrationStateMachine {
  #status: MigrationStatus = 'none';
  readonly #listeners: StatusListener[] = [];

  get status(): MigrationStatus {
    return this.#status;
  }

  /** Move to `to`; throws MigrationError on a transition QEMU would not make. */
  transition(to: MigrationStatus): void {
    const from = this.#status;
    if (!canMigrationTransition(from, to)) {
      throw new MigrationError(`Cannot change migration status from "${from}" to "${to}"`);
    }
    this.#status = to;
    for (const listener of [...this.#listeners]) listener(to, from);
  }

  /**
   * Move to `to` only if the status is still `from` (QEMU's migrate_set_state compare-and-set):
   * a cancel that raced with a failure must not be overwritten. Returns whether it moved.
   */
  transitionFrom(from: MigrationStatus, to: MigrationStatus): boolean {
    if (this.#status !== from) return false;
    this.transition(to);
    return true;
  }

  onChange(listener: StatusListener): () => void {
    this.#listeners.push(listener);
    return () => {
      const i = this.#listeners.indexOf(listener);
      if (i >= 0) this.#listeners.splice(i, 1);
    };
  }
}
