// File descriptors handed to Ferry over QMP (`getfd`), kept by name until a command
// such as `migrate fd:NAME` takes one or `closefd` closes it — QEMU's monitor fd list.

import { closeSync } from 'node:fs';
import { QmpError } from '../errors.js';

export class FdRegistry {
  readonly #fds = new Map<string, number>();

  /**
   * Keep `fd` under `name`; the registry owns it from now on. A name already in use is
   * replaced and its old fd closed, as QEMU's getfd does. Names must not start with a
   * digit, so that `fd:3` (a number) and `fd:NAME` never clash.
   */
  add(name: string, fd: number): void {
    if (/^[0-9]/.test(name)) {
      throw new QmpError('GenericError', "Parameter 'fdname' expects a name not starting with a digit");
    }
    if (name === '') throw new QmpError('GenericError', "Parameter 'fdname' expects a non-empty name");
    const old = this.#fds.get(name);
    this.#fds.set(name, fd);
    if (old !== undefined && old !== fd) closeQuietly(old);
  }

  /** Remove the fd named `name` and give it to the caller, who then owns (and closes) it. */
  take(name: string): number {
    const fd = this.#fds.get(name);
    if (fd === undefined) throw new QmpError('GenericError', `File descriptor named '${name}' has not been found`);
    this.#fds.delete(name);
    return fd;
  }

  /** `closefd`: close the fd named `name`. */
  close(name: string): void {
    const fd = this.#fds.get(name);
    if (fd === undefined) throw new QmpError('GenericError', `File descriptor named '${name}' not found`);
    this.#fds.delete(name);
    closeQuietly(fd);
  }

  has(name: string): boolean {
    return this.#fds.has(name);
  }

  names(): string[] {
    return [...this.#fds.keys()];
  }

  get size(): number {
    return this.#fds.size;
  }

  /** Close every fd still held (the server is shutting down). */
  closeAll(): void {
    for (const fd of this.#fds.values()) closeQuietly(fd);
    this.#fds.clear();
  }
}

/** Close an fd nobody else can use any more; a failure (EBADF) leaves nothing to undo. */
export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Already closed: nothing held, nothing to report.
  }
}
