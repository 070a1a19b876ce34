// Every error Ferry raises, in one place, each with a stable `code` that scripts and
// tests can match on. Messages name the action and the values; causes are wrapped.

export class FerryError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Bad user input: a CLI flag, a size, a URI, a guest spec. */
export class ConfigError extends FerryError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FERRY_ERR_CONFIG', message, options);
  }
}

/** A libc call made through FFI failed; `errno` is the raw error number. */
export class SystemCallError extends FerryError {
  readonly syscall: string;
  readonly errno: number;
  constructor(syscall: string, errno: number, message: string, options?: { cause?: unknown }) {
    super('FERRY_ERR_SYSCALL', message, options);
    this.syscall = syscall;
    this.errno = errno;
  }
}

/** /dev/kvm is missing, unusable, or lacks a capability Ferry needs. */
export class KvmUnavailableError extends FerryError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FERRY_ERR_KVM_UNAVAILABLE', message, options);
  }
}

/** The guest stopped in a way it cannot continue from (triple fault, failed entry, internal error). */
export class GuestCrashError extends FerryError {
  readonly registerDump: string;
  constructor(message: string, registerDump: string, options?: { cause?: unknown }) {
    super('FERRY_ERR_GUEST_CRASH', message, options);
    this.registerDump = registerDump;
  }
}

/** The migration stream does not follow the format: names the section and byte offset. */
export class StreamFormatError extends FerryError {
  readonly offset: number;
  readonly section: string | undefined;
  constructor(message: string, offset: number, section?: string, options?: { cause?: unknown }) {
    super('FERRY_ERR_STREAM_FORMAT', message, options);
    this.offset = offset;
    this.section = section;
  }
}

/** The stream ended before it was complete. */
export class StreamTruncatedError extends FerryError {
  readonly offset: number;
  readonly section: string | undefined;
  constructor(message: string, offset: number, section?: string, options?: { cause?: unknown }) {
    super('FERRY_ERR_STREAM_TRUNCATED', message, options);
    this.offset = offset;
    this.section = section;
  }
}

/** A transport could not be set up or broke: connection refused, peer gone, bad URI. */
export class TransportError extends FerryError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FERRY_ERR_TRANSPORT', message, options);
  }
}

/** A migration could not start, failed, or was refused in its current state. */
export class MigrationError extends FerryError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FERRY_ERR_MIGRATION', message, options);
  }
}

/** The migration was cancelled by the user (migrate_cancel). */
export class MigrationCancelledError extends FerryError {
  constructor(message = 'Migration was cancelled', options?: { cause?: unknown }) {
    super('FERRY_ERR_MIGRATION_CANCELLED', message, options);
  }
}

/** QMP error classes, as QEMU names them. */
export type QmpErrorClass =
  | 'GenericError'
  | 'CommandNotFound'
  | 'DeviceNotActive'
  | 'DeviceNotFound'
  | 'KVMMissingCap';

/** A QMP command failed; `errorClass` is what goes on the wire. */
export class QmpError extends FerryError {
  readonly errorClass: QmpErrorClass;
  constructor(errorClass: QmpErrorClass, message: string, options?: { cause?: unknown }) {
    super('FERRY_ERR_QMP', message, options);
    this.errorClass = errorClass;
  }
}

/** A state description and a value disagree, or a device refused loaded state. */
export class VmStateError extends FerryError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FERRY_ERR_VMSTATE', message, options);
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * What a destination reports when a stream fails to load: the error's message, and for a
 * malformed or truncated stream where in it the error was found — the byte offset and the
 * section — when the message does not already give that offset (many name an offset of
 * their own, such as a page's place in its RAM block, which is not where the stream broke).
 */
export function streamErrorMessage(err: unknown): string {
  const message = errorMessage(err);
  if (!(err instanceof StreamFormatError || err instanceof StreamTruncatedError)) return message;
  if (message.includes(`offset ${err.offset}`)) return message;
  return `${message} (stream offset ${err.offset}${err.section !== undefined ? `, section "${err.section}"` : ''})`;
}
