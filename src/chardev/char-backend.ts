// Character backends for the guest's serial console: `--serial stdio | file:PATH |
// unix:PATH | null | none`, as QEMU's -serial names them. A backend takes the guest's
// output bytes and hands back what the user types; it knows nothing of UARTs.

import { ConfigError } from '../errors.js';
import { openFileBackend } from './file-backend.js';
import { openNullBackend } from './null-backend.js';
import { openStdioBackend } from './stdio-backend.js';
import { openUnixServerBackend } from './unix-server-backend.js';

export type CharBackendKind = 'stdio' | 'file' | 'unix' | 'null' | 'none';

export interface CharBackend {
  /** `none` means "no serial device at all" (QEMU's -serial none); `null` a device whose output is discarded. */
  readonly kind: CharBackendKind;
  /** What it is connected to, for messages: "stdio", "file:/tmp/console.log". */
  readonly description: string;
  /** Guest output. Never blocks and never throws for a slow or absent reader. */
  write(bytes: Uint8Array): void;
  /** Register the receiver of host input (one; a later call replaces it). */
  onInput(cb: (bytes: Uint8Array) => void): void;
  /** Flush output and release files, sockets and the terminal. */
  close(): Promise<void>;
}

export const SERIAL_SPEC_HELP = 'expected stdio, file:PATH, unix:PATH[,server][,nowait], null or none';

/** Open the backend a `--serial` value names; a bad value is a ConfigError naming it. */
export async function openCharBackend(spec: string): Promise<CharBackend> {
  if (spec === 'stdio') return openStdioBackend();
  if (spec === 'null') return openNullBackend('null');
  if (spec === 'none') return openNullBackend('none');
  if (spec.startsWith('file:')) {
    const path = spec.slice('file:'.length);
    if (path === '') throw new ConfigError(`Invalid --serial "${spec}": file: needs a path`);
    return openFileBackend(path);
  }
  if (spec.startsWith('unix:')) {
    const [path = '', ...options] = spec.slice('unix:'.length).split(',');
    if (path === '') throw new ConfigError(`Invalid --serial "${spec}": unix: needs a socket path`);
    for (const option of options) {
      // Ferry always listens and never waits for a client, which is what these ask for.
      if (!['server', 'server=on', 'nowait', 'wait=off'].includes(option)) {
        throw new ConfigError(`Invalid --serial "${spec}": unsupported option "${option}" (Ferry listens and does not wait: server, nowait)`);
      }
    }
    return openUnixServerBackend(path);
  }
  throw new ConfigError(`Invalid --serial "${spec}": ${SERIAL_SPEC_HELP}`);
}
