// What a QMP command is to the server: its name, argument schema, optional return schema
// and async handler, and the context a handler is given. Commands are registered by the
// subsystems that carry them out (machine, migration); the server only dispatches.

import type { FdRegistry } from './fd-registry.js';
import type { Fields, Infer, InferFields, Schema } from './schema.js';

/** The client connection a command came from. */
export interface QmpSessionInfo {
  /** Unique per server, from 1. */
  readonly id: number;
  readonly transport: 'unix' | 'tcp';
  /** The listening address the client connected to, e.g. "unix:/tmp/vm.sock". */
  readonly address: string;
}

/** What a handler may use besides its arguments. */
export interface QmpCommandContext {
  readonly session: QmpSessionInfo;
  /** The server's named fds (getfd); `fds.take(name)` resolves `fd:NAME`. */
  readonly fds: FdRegistry;
  /**
   * The oldest fd this client passed with SCM_RIGHTS that no command has taken yet; the
   * caller owns it. Undefined when none came (always on tcp).
   */
  takePassedFd(): number | undefined;
  /** Run `fn` once this command's reply has been handed to the socket (e.g. `quit` exits then). */
  afterReply(fn: () => void): void;
  /** Send an event to every negotiated client (the same as the server's emit). */
  emit(event: string, data?: Record<string, unknown>): void;
}

export interface QmpCommandDefinition<F extends Fields = Fields, S extends Schema | undefined = undefined> {
  /** QEMU's name for the command, e.g. "query-status", "migrate-set-parameters". */
  readonly name: string;
  /** Argument members; a name ending in `?` is optional. Omitted: the command takes none. */
  readonly args?: F;
  /** When given, a handler's result is checked against it (a mismatch is a server bug, reported as GenericError). */
  readonly returns?: S;
  /**
   * Carries the command out. Resolving to undefined replies `{}`. A thrown QmpError keeps its
   * class; any other error becomes a GenericError with its message.
   */
  readonly handler: (
    args: NoInfer<InferFields<F>>,
    ctx: QmpCommandContext,
  ) => Promise<NoInfer<ReturnOf<S>>> | NoInfer<ReturnOf<S>>;
}

type ReturnOf<S> = S extends Schema ? Infer<S> : unknown;

/** A registered command with its types erased, as the dispatcher holds it. */
export interface RegisteredCommand {
  readonly name: string;
  readonly args: Fields;
  readonly returns: Schema | undefined;
  readonly handler: (args: Record<string, unknown>, ctx: QmpCommandContext) => unknown;
}
