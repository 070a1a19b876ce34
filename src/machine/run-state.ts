// QEMU's run states, by QEMU's names, and which transitions between them are allowed.

export type RunState =
  | 'prelaunch'
  | 'running'
  | 'paused'
  | 'shutdown'
  | 'inmigrate'
  | 'finish-migrate'
  | 'postmigrate'
  | 'internal-error';

const ALLOWED: Record<RunState, readonly RunState[]> = {
  prelaunch: ['running', 'paused', 'inmigrate', 'finish-migrate', 'shutdown', 'internal-error'],
  running: ['paused', 'finish-migrate', 'shutdown', 'internal-error'],
  paused: ['running', 'finish-migrate', 'shutdown', 'internal-error'],
  shutdown: ['running', 'paused', 'finish-migrate'],
  inmigrate: ['running', 'paused', 'prelaunch', 'shutdown', 'internal-error'],
  'finish-migrate': ['postmigrate', 'paused', 'running', 'internal-error', 'shutdown'],
  postmigrate: ['running', 'paused', 'finish-migrate', 'shutdown'],
  'internal-error': ['paused', 'running', 'shutdown', 'finish-migrate'],
};

export function canTransition(from: RunState, to: RunState): boolean {
  return from === to || ALLOWED[from].includes(to);
}
