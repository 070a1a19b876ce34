// The migration facade the QMP layer calls: migrate, migrate-incoming, migrate_cancel,
// query-migrate, parameters and capabilities, "info migrate", status listeners. It owns
// the status machines and builds the savevm handler table for each run.

import { MigrationError, TransportError, errorMessage } from '../errors.js';
import type { Channel, Listener } from '../transport/channel.js';
import { writeTrackingAvailable } from './background-snapshot.js';
import { Userfaultfd } from '../sys/userfaultfd.js';
import { OutgoingMigration } from './outgoing.js';
import { IncomingMigration } from './incoming-migration.js';
import { AutoConverge } from './auto-converge.js';
import {
  DEFAULT_MIGRATION_PARAMETERS, IMPLEMENTED_CAPABILITIES, applyCapabilities, applyParameters,
  MULTIFD_PROTOCOL_REFUSED, allowsMultipleChannels, capabilityList, checkBackgroundSnapshot, checkMultifd, defaultCapabilities,
} from './parameters.js';
import { checkCompressionAvailable, type MultifdCompression } from '../stream/multifd-compression.js';
import type { CapabilityStatus, MigrationCapabilities, MigrationCapability, MigrationParameters } from './parameters.js';
import { buildMigrationInfo, formatInfoMigrate, socketAddressInfo } from './query.js';
import type { MigrationInfo, SocketAddressInfo } from './query.js';
import { RamHandler } from './ram.js';
import { RateLimiter } from './rate-limiter.js';
import { SaveVmRegistry } from './savevm.js';
import { globalStateHandler, stateSectionHandler } from './state-handlers.js';
import { MigrationStateMachine, isMigrationRunning } from './states.js';
import type { MigrationStatus } from './states.js';
import type { MigrationVm } from './vm.js';
import type { RunState } from '../machine/run-state.js';
import { NIL_UUID } from '../uuid.js';
import { keepShape } from '../hot-shapes.js';
import type { TlsSetup } from '../transport/tls.js';
import { incomingTls, listenWith, outgoingConnector } from './tls-setup.js';

export interface MigrationOptions {
  readonly vm: MigrationVm;
  /**
   * Open the outgoing channel for a migrate URI (transport/). With `tls`, a transport that
   * can make the connection a TLS session itself returns it so (Channel.tls); otherwise
   * the migration wraps it (transport/tls.ts).
   */
  readonly connect: (uri: string, options?: { tls?: TlsSetup }) => Promise<Channel>;
  /** Start listening for a migrate-incoming URI (transport/); `tls` as for connect, for every connection accepted. */
  readonly listen: (uri: string, options?: { tls?: TlsSetup }) => Promise<Listener>;
  /** Milliseconds, high resolution (performance.now). */
  readonly now: () => number;
  /** Send a QMP event (MIGRATION, MIGRATION_PASS); called only when the `events` capability is on. */
  readonly emit: (event: string, data: Record<string, unknown>) => void;
  /** Run `fn` on a later turn of the event loop (setImmediate in Node); defaults to setTimeout(fn, 0). */
  readonly schedule?: (fn: () => void) => void;
  /** StreamWriter buffer size for the outgoing stream. */
  readonly bufferSize?: number;
  /** Diagnostics: convergence decisions, outcomes (wire util.debuglog('ferry') here). */
  readonly trace?: (message: string) => void;
  /**
   * This VM's UUID when it was given one (QEMU's -uuid): sent with validate-uuid (all
   * zeros without one, as QEMU), and checked against what an incoming stream carries.
   */
  readonly uuid?: Uint8Array;
  /** How long a multifd destination waits for its channels after the main connection (MULTIFD_CONNECT_WAIT_MS; tests shorten it). */
  readonly multifdConnectWaitMs?: number;
  /** The objects object-add made, by id: what `tls-creds` names (vmm/objects.ts). */
  readonly findObject?: (id: string) => { readonly type: string } | undefined;
}

export type MigrationSide = 'outgoing' | 'incoming';
export type MigrationStatusListener = (status: MigrationStatus, side: MigrationSide) => void;

/** Where a destination's query-migrate shows postcopy-blocktime (QEMU 7.2: completed only; here while post-copy runs too). */
const BLOCKTIME_SHOWN: ReadonlySet<MigrationStatus> = new Set<MigrationStatus>(['postcopy-active', 'postcopy-paused', 'postcopy-recover', 'completed']);

/** QEMU's QERR_MIGRATION_ACTIVE. */
const MIGRATION_ACTIVE = "There's a migration process in progress";

export class Migration {
  readonly #o: MigrationOptions;
  readonly #outgoingState = new MigrationStateMachine();
  readonly #incomingState = new MigrationStateMachine();
  readonly #listeners: MigrationStatusListener[] = [];
  readonly #capabilityListeners: Array<(capabilities: Readonly<MigrationCapabilities>) => void> = [];
  #parameters: MigrationParameters = { ...DEFAULT_MIGRATION_PARAMETERS };
  #capabilities: MigrationCapabilities = defaultCapabilities();
  #outgoing: OutgoingMigration | undefined;
  #ram: RamHandler | undefined;
  #limiter: RateLimiter | undefined;
  /** The last outgoing migration's throttle, when `auto-converge` was on. */
  #autoConverge: AutoConverge | undefined;
  #running: Promise<void> = Promise.resolve();
  #incomingRun: Promise<void> = Promise.resolve();
  /** Why listening for the incoming migration failed (a failure after that is the run's own). */
  #incomingError: string | undefined;
  /** The last incoming migration run (incoming-migration.ts). */
  #incoming: IncomingMigration | undefined;
  #listener: Listener | undefined;
  /** Where the listener listens, for query-migrate's socket-address (tcp: and unix: only). */
  #incomingAddress: SocketAddressInfo | undefined;

  constructor(options: MigrationOptions) {
    keepShape(this);
    this.#o = options;
    this.#outgoingState.onChange((status) => {
      // QEMU's migration_iteration_finish: whatever the outcome, the vCPUs run freely again.
      if ((status === 'completed' || status === 'failed' || status === 'cancelled') && this.#autoConverge) this.#stopThrottle();
      this.#statusChanged(status, 'outgoing');
    });
    this.#incomingState.onChange((status) => this.#statusChanged(status, 'incoming'));
  }

  /** The outgoing migration's status. */
  get status(): MigrationStatus {
    return this.#outgoingState.status;
  }

  get incomingStatus(): MigrationStatus {
    return this.#incomingState.status;
  }

  /** Why the last incoming migration failed, if it did. */
  get incomingError(): string | undefined {
    return this.#incomingError ?? this.#incoming?.error;
  }

  onStatus(listener: MigrationStatusListener): () => void {
    this.#listeners.push(listener);
    return () => {
      const i = this.#listeners.indexOf(listener);
      if (i >= 0) this.#listeners.splice(i, 1);
    };
  }

  /** Resolves when the current outgoing run has ended, whatever its outcome (tests, CLI). */
  whenSettled(): Promise<void> {
    return this.#running;
  }

  /** Resolves when the current incoming run has ended, whatever its outcome. */
  whenIncomingSettled(): Promise<void> {
    return this.#incomingRun;
  }

  /**
   * QMP `migrate`: checks, moves to setup and returns at once; connecting and sending
   * run in the background. Throws MigrationError when a migration cannot start now.
   */
  migrate(uri: string, options: { resume?: boolean } = {}): void {
    const vm = this.#o.vm;
    const connect = outgoingConnector(this.#parameters, this.#o.findObject, uri, this.#o.connect);
    if (options.resume) {
      this.#resume(uri, connect);
      return;
    }
    if (isMigrationRunning(this.#outgoingState.status)) throw new MigrationError(MIGRATION_ACTIVE);
    if (vm.runState === 'inmigrate' || isMigrationRunning(this.#incomingState.status)) {
      throw new MigrationError('Guest is waiting for an incoming migration');
    }
    const multifd = this.#capabilities.multifd;
    if (multifd) {
      if (!allowsMultipleChannels(uri)) throw new MigrationError(MULTIFD_PROTOCOL_REFUSED);
      checkCompressionAvailable(this.#parameters['multifd-compression']);
    }
    const limiter = new RateLimiter(this.#o.now, this.#parameters['max-bandwidth']);
    const autoConverge = this.#capabilities['auto-converge'] && vm.setThrottle ? new AutoConverge() : undefined;
    this.#autoConverge = autoConverge;
    const backgroundSnapshot = this.#capabilities['background-snapshot'];
    const ram = new RamHandler(vm, {
      now: this.#o.now,
      limiter,
      ...(backgroundSnapshot ? { snapshot: true } : {}),
      ...(this.#capabilities['release-ram'] ? { releaseRam: true } : {}),
      ...(this.#capabilities['x-ignore-shared'] ? { ignoreShared: true } : {}),
      // The cache is sized when a migration starts; QEMU also resizes a running one.
      ...(this.#capabilities.xbzrle ? { xbzrleCacheSize: this.#parameters['xbzrle-cache-size'] } : {}),
      onSync: (pass) => {
        if (this.#capabilities.events) this.#o.emit('MIGRATION_PASS', { pass });
      },
      ...(autoConverge ? {
        onDirtyPeriod: (period) => {
          const percent = autoConverge.period(period, this.#parameters);
          if (percent === undefined) return;
          this.#o.trace?.(`migration: auto-converge: ${period.dirtiedBytes} B dirtied against ${period.transferredBytes} B sent in the last period: throttling the vCPUs to ${percent} %`);
          vm.setThrottle?.(percent);
        },
      } : {}),
    });
    let outgoing: OutgoingMigration | undefined;
    const registry = this.#buildRegistry(ram, () => outgoing?.stateBeforeStop ?? vm.runState);
    outgoing = new OutgoingMigration({
      vm,
      connect,
      state: this.#outgoingState,
      registry,
      ram,
      limiter,
      parameters: () => this.#parameters,
      now: this.#o.now,
      sleep: (ms) => this.#sleep(ms),
      ...(this.#o.bufferSize !== undefined ? { bufferSize: this.#o.bufferSize } : {}),
      ...(this.#o.trace ? { trace: this.#o.trace } : {}),
      returnPath: this.#capabilities['return-path'],
      pauseBeforeSwitchover: this.#capabilities['pause-before-switchover'],
      postcopy: this.#capabilities['postcopy-ram'],
      backgroundSnapshot,
      ...(multifd ? { multifd: { channels: this.#parameters['multifd-channels'], uuid: this.#o.uuid ?? NIL_UUID, ...this.#multifdCompression() } } : {}),
      header: {
        ...(this.#capabilities['validate-uuid'] ? { uuid: this.#o.uuid ?? NIL_UUID } : {}),
        ...(this.#capabilities['x-ignore-shared'] ? { capabilities: ['x-ignore-shared'] } : {}),
      },
    });
    this.#outgoing = outgoing;
    this.#ram = ram;
    this.#limiter = limiter;
    this.#outgoingState.transition('setup');
    this.#running = outgoing.run();
  }

  /**
   * QMP `migrate-incoming` (and `--incoming URI`): listens, and resolves with the bound
   * address once it does; the stream is read in the background. The run state stays
   * inmigrate until the whole stream is in.
   */
  async migrateIncoming(uri: string): Promise<{ address: string }> {
    const vm = this.#o.vm;
    const tls = incomingTls(this.#parameters, this.#o.findObject);
    if (vm.runState !== 'inmigrate') {
      throw new MigrationError("'-incoming' was not specified on the command line");
    }
    if (isMigrationRunning(this.#incomingState.status) || this.#incomingState.status === 'completed') {
      throw new MigrationError('The incoming migration has already been started');
    }
    if (this.#capabilities.multifd && !allowsMultipleChannels(uri)) throw new MigrationError(MULTIFD_PROTOCOL_REFUSED);
    if (this.#capabilities.multifd) checkCompressionAvailable(this.#parameters['multifd-compression']);
    this.#incomingError = undefined;
    this.#incoming = undefined;
    this.#incomingState.transition('setup');
    let listener: Listener;
    try {
      listener = await listenWith(uri, tls, this.#o.listen);
    } catch (err) {
      this.#incomingError = errorMessage(err);
      this.#incomingState.transition('failed');
      throw err;
    }
    this.#listener = listener;
    this.#incomingAddress = socketAddressInfo(listener.address);
    this.#incomingRun = this.#runIncoming(listener);
    return { address: listener.address };
  }

  async #runIncoming(listener: Listener): Promise<void> {
    const incoming = new IncomingMigration({
      vm: this.#o.vm,
      listener,
      state: this.#incomingState,
      capabilities: () => this.#capabilities,
      parameters: () => this.#parameters,
      buildRegistry: (ram, runState, globalState) => this.#buildRegistry(ram, runState, globalState),
      now: this.#o.now,
      ...(this.#o.trace ? { trace: this.#o.trace } : {}),
      ...(this.#o.uuid ? { uuid: this.#o.uuid } : {}),
      ...(this.#o.multifdConnectWaitMs !== undefined ? { multifdConnectWaitMs: this.#o.multifdConnectWaitMs } : {}),
    });
    this.#incoming = incoming;
    try {
      await incoming.run();
    } finally {
      this.#listener = undefined;
      this.#incomingAddress = undefined;
      await listener.close().catch(() => {
        // Closing a listener that already failed has nothing left to report.
      });
    }
  }

  /**
   * QMP `migrate-continue {state}`: a migration paused by pause-before-switchover goes on.
   * `state` must be the state it is in (QEMU's check and wording).
   */
  continue(state: string): void {
    const status = this.#outgoingState.status;
    if (status !== state || !this.#outgoing?.continueFromPause()) {
      throw new MigrationError(`Migration not in expected state: ${status}`);
    }
  }

  /**
   * QMP `migrate {uri, resume: true}`: a post-copy paused by a broken connection goes on
   * over a new one to `uri` (where the destination's migrate-recover listens). Returns at
   * once; a connection that fails leaves it paused, and says so in the trace.
   */
  #resume(uri: string, connect: () => Promise<Channel>): void {
    const outgoing = this.#outgoing;
    if (this.#outgoingState.status !== 'postcopy-paused' || !outgoing) {
      throw new MigrationError('Cannot resume if there is no paused migration');
    }
    // QEMU's words: what went out before the break may never have arrived, and it is gone here.
    if (this.#capabilities['release-ram']) throw new MigrationError('Postcopy recovery cannot work when release-ram capability is set');
    connect().then(
      (channel) => {
        if (!outgoing.resume(channel)) channel.destroy(new MigrationError('The migration is no longer paused'));
      },
      (err: unknown) => this.#o.trace?.(`migration: resuming post-copy over ${uri} failed: ${errorMessage(err)}; still paused`),
    );
  }

  /**
   * QMP `migrate-start-postcopy`: switch the running migration to post-copy at its next
   * iteration (QEMU's checks and words).
   */
  startPostcopy(): void {
    if (!this.#capabilities['postcopy-ram']) {
      throw new MigrationError('Enable postcopy with migrate_set_capability before the start of migration');
    }
    if (this.#outgoingState.status === 'none') {
      throw new MigrationError('Postcopy must be started after migration has been started');
    }
    if (!this.#outgoing?.startPostcopy()) {
      throw new MigrationError(`Postcopy cannot start now: the migration is ${this.#outgoingState.status}`);
    }
  }

  /**
   * Guest RAM is still arriving (a post-copy destination runs its guest meanwhile): this
   * process must not read it — a page not placed yet would stop the thread reading it.
   */
  get ramArriving(): boolean {
    return this.#incoming?.postcopy?.ramArriving === true;
  }

  #recoverListening = false;

  /**
   * QMP `migrate-recover {uri}` on a destination whose post-copy paused: listen on `uri`
   * for the source's `migrate` with resume, and go on with the connection it opens.
   * Resolves once listening (query-migrate's socket-address says where).
   */
  async recover(uri: string): Promise<void> {
    const incoming = this.#incoming;
    if (this.#incomingState.status !== 'postcopy-paused' || !incoming?.awaitingRecovery) {
      throw new MigrationError('Migrate recover can only be run when postcopy is paused.');
    }
    if (this.#recoverListening) throw new MigrationError('Migrate recovery is triggered already');
    const tls = incomingTls(this.#parameters, this.#o.findObject);
    this.#recoverListening = true;
    let listener: Listener;
    try {
      listener = await listenWith(uri, tls, this.#o.listen);
    } catch (err) {
      this.#recoverListening = false;
      throw err;
    }
    this.#incomingAddress = socketAddressInfo(listener.address);
    this.#o.trace?.(`migration: post-copy recovery: waiting for the source on ${listener.address}`);
    void listener.accept().then(
      (channel) => {
        if (!incoming.recoverOn(channel)) channel.destroy(new MigrationError('Post-copy is no longer paused here'));
      },
      (err: unknown) => this.#o.trace?.(`migration: post-copy recovery: no connection on ${listener.address}: ${errorMessage(err)}`),
    ).finally(() => {
      this.#recoverListening = false;
      this.#incomingAddress = undefined;
      void listener.close().catch(() => {});
    });
  }

  /**
   * QMP `migrate-pause` (QEMU 7.2's checks and words): during post-copy, break the
   * connection on this side — the source's if it sends, else the destination's — and both
   * pause as after a network failure; migrate-recover and migrate with resume go on.
   */
  pause(): void {
    if (this.#outgoingState.status === 'postcopy-active') {
      if (!this.#outgoing?.breakConnection(new TransportError('Paused by migrate-pause'))) throw new MigrationError('Failed to pause source migration');
      return;
    }
    if (this.#incomingState.status === 'postcopy-active') {
      if (!this.#incoming?.breakConnection(new TransportError('Paused by migrate-pause'))) throw new MigrationError('Failed to pause destination migration');
      return;
    }
    throw new MigrationError('migrate-pause is currently only supported during postcopy-active state');
  }

  /** QMP `migrate_cancel`: nothing to do unless an outgoing migration is in setup or active (as QEMU). */
  cancel(): void {
    this.#outgoing?.cancel();
  }

  queryMigrate(): MigrationInfo {
    const info = buildMigrationInfo(
      this.#outgoing && this.#ram
        ? {
          status: this.#outgoingState.status, figures: this.#outgoing.figures, ram: this.#ram.stats, now: this.#o.now(), xbzrle: this.#ram.xbzrle,
          throttlePercentage: this.#autoConverge?.percentage ?? 0,
        }
        : undefined,
      this.#incomingState.status,
    );
    const incomingError = this.incomingError;
    if (this.#outgoingState.status === 'none' && this.#incomingState.status === 'failed' && incomingError !== undefined) {
      info['error-desc'] = incomingError;
    }
    if (this.#incomingAddress !== undefined) info['socket-address'] = [{ ...this.#incomingAddress }];
    const incoming = this.#incomingState.status;
    // On the clock the faults and placements were timed on (performance.now, whatever `now` is).
    const blocktime = BLOCKTIME_SHOWN.has(incoming) ? this.#incoming?.postcopy?.blocktime(performance.now()) : undefined;
    if (blocktime) {
      info['postcopy-blocktime'] = blocktime.total;
      info['postcopy-vcpu-blocktime'] = [...blocktime.perVcpu];
    }
    return info;
  }

  /**
   * Ferry's own per-pass account of the last outgoing migration (x-ferry-query-migrate-passes):
   * what each pass sent and what the guest dirtied, and when the guest was stopped.
   */
  queryPasses(): { passes: Array<Record<string, number | undefined>>; 'switchover-ms'?: number; 'total-ms'?: number; 'downtime-limit': number } {
    const passes = (this.#ram?.passHistory() ?? []).map((p) => {
      const start = p.startMs - (this.#outgoing?.figures.startTime ?? 0);
      return {
        pass: p.pass,
        'start-ms': Math.round(start * 10) / 10,
        'end-ms': p.endMs === undefined ? undefined : Math.round((p.endMs - (this.#outgoing?.figures.startTime ?? 0)) * 10) / 10,
        'pages-sent': p.pagesSent,
        'zero-pages': p.zeroPages,
        'bytes-sent': p.bytesSent,
        'dirty-pages': p.dirtyPages,
      };
    });
    const figures = this.#outgoing?.figures;
    return {
      passes,
      ...(figures?.switchoverTime !== undefined ? { 'switchover-ms': Math.round(figures.switchoverTime * 10) / 10 } : {}),
      ...(figures?.totalTime !== undefined ? { 'total-ms': Math.round(figures.totalTime * 10) / 10 } : {}),
      'downtime-limit': this.#parameters['downtime-limit'],
    };
  }

  infoMigrateText(): string {
    return formatInfoMigrate(this.queryMigrate());
  }

  /** QMP `migrate-set-parameters`: validated as QEMU does; max-bandwidth applies at once. */
  setParameters(request: Readonly<Record<string, unknown>>): void {
    this.#parameters = applyParameters(this.#parameters, request);
    // In post-copy the cap is max-postcopy-bandwidth (QEMU's postcopy_start).
    this.#limiter?.setLimit(this.#parameters[this.#outgoingState.status === 'postcopy-active' ? 'max-postcopy-bandwidth' : 'max-bandwidth']);
  }

  queryParameters(): MigrationParameters {
    return { ...this.#parameters };
  }

  /** QMP `migrate-set-capabilities`: refused during a migration and for capabilities Ferry lacks. */
  setCapabilities(request: readonly CapabilityStatus[]): void {
    if (isMigrationRunning(this.#outgoingState.status)) throw new MigrationError(MIGRATION_ACTIVE);
    const next = applyCapabilities(this.#capabilities, request, this.#implementedCapabilities());
    if (next['postcopy-ram'] && !this.#capabilities['postcopy-ram']) {
      // QEMU's migrate_caps_check: refused where the host cannot (postcopy_ram_supported_by_host).
      try {
        Userfaultfd.open().close();
      } catch (err) {
        throw new MigrationError(`Postcopy is not supported: ${errorMessage(err)}`, { cause: err });
      }
    }
    if (next['background-snapshot']) {
      // Write-protecting a file's pages (shmem) is not what Ferry's userfaultfd does: anonymous memory only.
      checkBackgroundSnapshot(next, { writeTracking: writeTrackingAvailable(), ownMemory: this.#o.vm.memory.every((b) => b.hostAddress !== undefined && b.file === undefined) });
    }
    checkMultifd(next);
    // QEMU's "incoming side only" check: a destination already listening where no more
    // connections can come (exec:, fd:).
    if (next.multifd && this.#listener !== undefined && this.#incomingAddress === undefined) throw new MigrationError(MULTIFD_PROTOCOL_REFUSED);
    this.#capabilities = next;
    for (const listener of [...this.#capabilityListeners]) listener(next);
  }

  /** Told of the capabilities after every migrate-set-capabilities (the warm-up of multifd's paths listens). */
  onCapabilities(listener: (capabilities: Readonly<MigrationCapabilities>) => void): void {
    this.#capabilityListeners.push(listener);
  }

  /** multifd-compression and its level, for the source's channels. */
  #multifdCompression(): { compression: MultifdCompression; level: number } {
    const compression = this.#parameters['multifd-compression'];
    return { compression, level: compression === 'zstd' ? this.#parameters['multifd-zstd-level'] : this.#parameters['multifd-zlib-level'] };
  }

  /**
   * What this VM can carry out: auto-converge needs an accelerator that can throttle its
   * vCPUs; post-copy anonymous guest RAM this process maps (userfaultfd registers it, and
   * a discarded page must read as zero — a file's does not).
   */
  #implementedCapabilities(): ReadonlySet<MigrationCapability> {
    const vm = this.#o.vm;
    return new Set([...IMPLEMENTED_CAPABILITIES].filter((c) =>
      (c !== 'auto-converge' || vm.setThrottle !== undefined) &&
      (c !== 'postcopy-ram' || vm.memory.every((b) => b.hostAddress !== undefined && b.file === undefined)) &&
      (c !== 'release-ram' || vm.memory.every((b) => b.discard !== undefined))));
  }

  #stopThrottle(): void {
    const autoConverge = this.#autoConverge;
    if (!autoConverge || autoConverge.percentage === 0) return;
    autoConverge.stop();
    this.#o.vm.setThrottle?.(0);
    this.#o.trace?.('migration: auto-converge: the vCPUs run unthrottled again');
  }

  queryCapabilities(): CapabilityStatus[] {
    return capabilityList(this.#capabilities);
  }

  /** Stop listening for an incoming migration that has not connected yet. */
  async close(): Promise<void> {
    this.cancel();
    this.#incoming?.giveUp(new MigrationError('The VM is closing'));
    await this.#listener?.close();
  }

  #buildRegistry(ram: RamHandler, runState: () => RunState, globalState = globalStateHandler(runState)): SaveVmRegistry {
    const registry = new SaveVmRegistry();
    // Section ids follow registration from 0, as QEMU's. The global state takes 0, RAM 1:
    // a QEMU destination finds the section of a PART or END by comparing its id with every
    // handler's load_section_id, which is 0 for each one no START or FULL named yet — its
    // "timer" first — so RAM's PARTs under id 0 went to QEMU's timer and its load failed
    // after the first pass's START (QEMU's own RAM never has id 0).
    registry.register(globalState);
    registry.register(ram);
    for (const section of this.#o.vm.stateSections) registry.register(stateSectionHandler(section));
    return registry;
  }

  #statusChanged(status: MigrationStatus, side: MigrationSide): void {
    if (this.#capabilities.events) this.#o.emit('MIGRATION', { status });
    for (const listener of [...this.#listeners]) listener(status, side);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (ms <= 0 && this.#o.schedule) this.#o.schedule(resolve);
      else setTimeout(resolve, Math.max(0, ms));
    });
  }
}
