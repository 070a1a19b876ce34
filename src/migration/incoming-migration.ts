// The destination's side of one migration (QEMU's process_incoming_migration_co): the main
// connection accepted, multifd channels after it, the return path, post-copy's fault
// handling and recovery when the capability is on, the stream loaded and checked — then
// the source told (SHUT 0) and the guest started, or, on any failure, the guest never
// started and the source told to run its own again. Migration (migration.ts) listens and
// makes one of these per incoming migration.

import { errorMessage, streamErrorMessage } from '../errors.js';
import type { Channel, Listener } from '../transport/channel.js';
import { StreamReader } from '../stream/reader.js';
import { loadVmStream } from './incoming.js';
import { DestinationReturnPath } from './return-path.js';
import { PostcopyIncoming } from './postcopy-incoming.js';
import { PostcopyBlocktime } from './postcopy-blocktime.js';
import { acceptAfterMain, type MultifdReceiver } from './multifd-recv.js';
import type { MigrationCapabilities, MigrationParameters } from './parameters.js';
import { RamHandler } from './ram.js';
import { RateLimiter } from './rate-limiter.js';
import type { SaveVmRegistry } from './savevm.js';
import { globalStateHandler, type GlobalStateHandler } from './state-handlers.js';
import { isMigrationRunning, type MigrationStateMachine } from './states.js';
import type { MigrationVm } from './vm.js';
import type { RunState } from '../machine/run-state.js';
import { NIL_UUID } from '../uuid.js';

export interface IncomingMigrationOptions {
  readonly vm: MigrationVm;
  /** Where the source connects (its first connection is the main stream). */
  readonly listener: Listener;
  readonly state: MigrationStateMachine;
  /** Read once the source has connected: with `-incoming URI` they are set while this listens. */
  readonly capabilities: () => Readonly<MigrationCapabilities>;
  readonly parameters: () => Readonly<MigrationParameters>;
  /** The savevm handler table, RAM and the global state given (Migration's). */
  readonly buildRegistry: (ram: RamHandler, runState: () => RunState, globalState: GlobalStateHandler) => SaveVmRegistry;
  readonly now: () => number;
  readonly trace?: (message: string) => void;
  /** This VM's UUID (validate-uuid, and multifd channels' initial packets). */
  readonly uuid?: Uint8Array;
  readonly multifdConnectWaitMs?: number;
}

export class IncomingMigration {
  /** Why the migration failed, once it has (query-migrate's error-desc). */
  error: string | undefined;
  readonly #o: IncomingMigrationOptions;
  /** Breaks the connection while one is open. */
  #break: ((cause: Error) => boolean) | undefined;
  /** The post-copy side, while one runs (and after it failed past RUN). */
  #postcopy: PostcopyIncoming | undefined;
  /** While post-copy is paused here: hands the load the connection migrate-recover accepted. */
  #recovery: { resolve: (channel: Channel) => void; reject: (err: Error) => void } | undefined;

  constructor(options: IncomingMigrationOptions) {
    this.#o = options;
  }

  /** Accept the main connection and load the stream; never rejects — the outcome is the state machine's status (and `error`). */
  async run(): Promise<void> {
    const { vm, listener, state } = this.#o;
    let channel: Channel | undefined;
    let registry: SaveVmRegistry | undefined;
    let returnPath: DestinationReturnPath | undefined;
    let postcopy: PostcopyIncoming | undefined;
    let multifd: MultifdReceiver | undefined;
    try {
      channel = await listener.accept();
      this.#break = (cause) => {
        if (!channel) return false;
        channel.destroy(cause);
        return true;
      };
      const acceptedAt = this.#o.now();
      const capabilities = this.#o.capabilities();
      const parameters = this.#o.parameters();
      const ram = new RamHandler(vm, { now: this.#o.now, limiter: new RateLimiter(this.#o.now, 0), ignoreShared: capabilities['x-ignore-shared'] });
      const globalState = globalStateHandler(() => vm.runState);
      registry = this.#o.buildRegistry(ram, () => vm.runState, globalState);
      state.transition('active');
      // A connection after the main one that fails the migration: the load must not
      // complete on a main stream whose pages went elsewhere, however late it is told.
      let sideError: Error | undefined;
      multifd = acceptAfterMain(listener, {
        multifd: capabilities.multifd,
        channels: parameters['multifd-channels'],
        uuid: this.#o.uuid ?? NIL_UUID,
        compression: parameters['multifd-compression'],
        ram,
        ...(this.#o.multifdConnectWaitMs !== undefined ? { connectWaitMs: this.#o.multifdConnectWaitMs } : {}),
        breakMain: (cause) => {
          sideError ??= cause;
          channel?.destroy(cause);
        },
      });
      let rp = new DestinationReturnPath(channel, this.#o.trace);
      returnPath = rp;
      // QEMU: a source that was not running gives a destination in the same state; otherwise autostart decides.
      const startGuest = (): void => {
        const source = globalState.received;
        if (source !== undefined && source !== 'running') vm.setRunState('paused');
        else vm.startAfterIncoming();
      };
      let runAt = 0;
      if (capabilities['postcopy-ram']) {
        postcopy = new PostcopyIncoming({
          vm,
          returnPath: rp,
          placeWith: (sink) => ram.placeWith(sink),
          backgroundSettled: () => ram.backgroundSettled(),
          run: () => {
            runAt = this.#o.now();
            startGuest();
            state.transition('postcopy-active');
          },
          // QEMU's postcopy-paused: the guest runs on what it has until the source is back.
          awaitRecovery: async (cause) => {
            channel?.destroy(cause);
            state.transition('postcopy-paused');
            const next = await new Promise<Channel>((resolve, reject) => (this.#recovery = { resolve, reject }));
            channel = next;
            state.transition('postcopy-recover');
            rp = new DestinationReturnPath(next, this.#o.trace);
            rp.openForRecovery();
            returnPath = rp;
            this.#o.trace?.(`migration: post-copy recovering on ${next.description}`);
            return { reader: new StreamReader(next), returnPath: rp };
          },
          resumed: () => state.transition('postcopy-active'),
          // QEMU's blocktime context: with the capability, where the vCPUs' threads are known.
          ...(capabilities['postcopy-blocktime'] && vm.vcpuThreadIds ? { blocktime: new PostcopyBlocktime(vm.vcpuThreadIds) } : {}),
          ...(this.#o.trace ? { trace: this.#o.trace } : {}),
        });
        this.#postcopy = postcopy;
      }
      const loaded = await loadVmStream(new StreamReader(channel), registry, vm.machineType, {
        onCommand: (command, offset) => rp.onCommand(command, offset),
        ...(this.#o.uuid ? { localUuid: this.#o.uuid } : {}),
        ...(postcopy ? { postcopy } : {}),
        ignoreShared: capabilities['x-ignore-shared'],
      });
      const loadedAt = this.#o.now();
      if (sideError) throw sideError;
      if (loaded.startedEarly && postcopy) {
        // Post-copy: the guest has run since RUN; the last page is in. The source hears it
        // first (it completes on that), then RAM is let go of userfaultfd.
        postcopy.checkAllArrived();
        // The guest here is whole and runs: that stands even if the source cannot be told
        // (it then keeps its copy stopped, as after any failure past the switch).
        await rp.shut(0).catch((err: unknown) => this.#o.trace?.(`migration: the source could not be told that post-copy completed: ${errorMessage(err)}`));
        await postcopy.finish();
        registry.cleanupAll();
        state.transition('completed');
        rp.close();
        const f = postcopy.figures;
        this.#o.trace?.(
          `migration: incoming completed in post-copy: the guest ran ${(loadedAt - runAt).toFixed(1)} ms before the last page arrived ` +
            `(${f.discardedPages} pages to come at the switch, ${f.requests} asked for by faults, ${f.localZeroPages} zeroed here)`,
        );
        return;
      }
      registry.cleanupAll();
      multifd?.close();
      const installedAt = this.#o.now();
      // With a return path, the source hears that the stream is in before the guest runs
      // here; if it cannot be told, it runs its own guest again and this one must not start.
      await rp.shut(0);
      const shutAt = this.#o.now();
      startGuest();
      const startedAt = this.#o.now();
      state.transition('completed');
      rp.close();
      this.#o.trace?.(
        `migration: incoming completed: the stream read and checked in ${(loadedAt - acceptedAt).toFixed(1)} ms, ` +
          `CPU and device state installed in ${(installedAt - loadedAt).toFixed(1)} ms, ` +
          `the return path's SHUT ${(shutAt - installedAt).toFixed(1)} ms, ` +
          `the guest ${vm.runState === 'running' ? 'started' : 'left paused'} in ${(startedAt - shutAt).toFixed(1)} ms`,
      );
    } catch (err) {
      const startedEarly = postcopy?.running === true;
      await postcopy?.abort();
      multifd?.close(err instanceof Error ? err : undefined);
      registry?.cleanupAll();
      // The source waits for this to run its guest again (QEMU sends SHUT 1 as well).
      await returnPath?.shutAfterFailure();
      channel?.destroy(err instanceof Error ? err : undefined);
      this.error = startedEarly
        ? `${streamErrorMessage(err)} — in post-copy, after the guest started here: it cannot go on (part of its RAM never arrived; its vCPUs wait for it), and the source still holds the whole guest, stopped`
        : streamErrorMessage(err);
      this.#o.trace?.(`migration: incoming failed: ${this.error}`);
      if (isMigrationRunning(state.status)) state.transition('failed');
    } finally {
      this.#break = undefined;
    }
  }

  /** migrate-pause: break the connection (post-copy then pauses, as after a network failure); false when none is open. */
  breakConnection(cause: Error): boolean {
    return this.#break?.(cause) ?? false;
  }

  /** The post-copy side, while one runs (and after it failed past RUN). */
  get postcopy(): PostcopyIncoming | undefined {
    return this.#postcopy;
  }

  /** Whether post-copy is paused here, waiting for a connection from migrate-recover. */
  get awaitingRecovery(): boolean {
    return this.#recovery !== undefined;
  }

  /** migrate-recover accepted the source's new connection: the load goes on from it. False when not paused. */
  recoverOn(channel: Channel): boolean {
    const recovery = this.#recovery;
    if (!recovery) return false;
    this.#recovery = undefined;
    recovery.resolve(channel);
    return true;
  }

  /** Give up a paused post-copy (the VM is closing). */
  giveUp(reason: Error): void {
    this.#recovery?.reject(reason);
  }
}
