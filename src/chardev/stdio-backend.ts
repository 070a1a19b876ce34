// `--serial stdio`: guest output to stdout, input from stdin when stdin is a terminal or
// a pipe. Reading stdin never keeps Ferry alive on its own; a terminal is put in raw
// mode while read (Ctrl-C still interrupts Ferry, as QEMU's stdio does by default).

import { fstatSync } from 'node:fs';
import { isatty } from 'node:tty';
import type { ReadStream } from 'node:tty';
import type { CharBackend } from './char-backend.js';

const CTRL_C = 0x03;

/** Whether fd 0 is something a person or a program types into (not /dev/null or a file). */
function stdinIsInteractive(): boolean {
  if (isatty(0)) return true;
  try {
    const stat = fstatSync(0);
    return stat.isFIFO() || stat.isSocket();
  } catch {
    return false;
  }
}

export function openStdioBackend(): CharBackend {
  let reading = false;
  let rawMode = false;
  let input: ((bytes: Uint8Array) => void) | undefined;
  const onData = (chunk: Buffer | string): void => {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (rawMode && bytes.includes(CTRL_C)) {
      // Raw mode turned the terminal's SIGINT into a byte: give it back its meaning.
      process.kill(process.pid, 'SIGINT');
      return;
    }
    input?.(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  };
  const startReading = (): void => {
    if (reading || !stdinIsInteractive()) return;
    reading = true;
    const stdin = process.stdin;
    if (stdin.isTTY) {
      (stdin as ReadStream).setRawMode(true);
      rawMode = true;
    }
    stdin.on('data', onData);
    stdin.resume();
    (stdin as unknown as { unref?: () => void }).unref?.();
  };
  return {
    kind: 'stdio',
    description: 'stdio',
    write(bytes) {
      process.stdout.write(Uint8Array.prototype.slice.call(bytes));
    },
    onInput(cb) {
      input = cb;
      startReading();
    },
    async close() {
      if (reading) {
        process.stdin.off('data', onData);
        process.stdin.pause();
        if (rawMode) (process.stdin as ReadStream).setRawMode(false);
        reading = false;
        rawMode = false;
      }
    },
  };
}
