// The backend that discards output and never has input (`--serial null`, and `none`,
// for which the Machine creates no serial device at all).

import type { CharBackend } from './char-backend.js';

export function openNullBackend(kind: 'null' | 'none'): CharBackend {
  return {
    kind,
    description: kind,
    write: () => {},
    onInput: () => {},
    close: async () => {},
  };
}
