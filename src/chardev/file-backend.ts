// `--serial file:PATH`: guest output appended to a file created (or truncated) at open,
// as QEMU's file chardev does. There is no input.

import { closeSync, createWriteStream, openSync } from 'node:fs';
import { ConfigError, errorMessage } from '../errors.js';
import type { CharBackend } from './char-backend.js';

export function openFileBackend(path: string): CharBackend {
  let fd: number;
  try {
    // Opened here, synchronously, so a bad path fails the command line instead of later.
    fd = openSync(path, 'w', 0o644);
  } catch (err) {
    throw new ConfigError(`Cannot open --serial file:${path}: ${errorMessage(err)}`, { cause: err });
  }
  let stream;
  try {
    stream = createWriteStream('', { fd, autoClose: true });
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  let error: Error | undefined;
  // A full disk must not take the VM down: remember the failure, drop further output.
  stream.on('error', (err) => { error ??= err; });
  let closed: Promise<void> | undefined;
  return {
    kind: 'file',
    description: `file:${path}`,
    write(bytes) {
      if (error || closed) return;
      // The stream keeps the caller's buffer until written: hand it a copy.
      stream.write(Uint8Array.prototype.slice.call(bytes));
    },
    onInput() {},
    close() {
      closed ??= new Promise<void>((resolve) => {
        if (stream.closed || stream.destroyed) return resolve();
        stream.end(() => resolve());
        stream.once('error', () => resolve());
      }).then(() => {
        if (error) throw new ConfigError(`Writing the serial console to file:${path} failed: ${error.message}`, { cause: error });
      });
      return closed;
    },
  };
}
