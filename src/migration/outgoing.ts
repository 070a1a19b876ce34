// The source side of one migration, as QEMU's migration thread: setup (START sections),
// iterations while what is pending exceeds bandwidth × downtime-limit, then a stop of
// the guest guarded against the downtime limit, END and FULL sections, EOF and the vmdesc
// (completion.ts). It runs in the background and yields to the event loop between
// iterations so QMP stays responsive. Post-copy's switch and what follows are in
// postcopy-outgoing.ts, a background snapshot's in background-snapshot.ts; where the bytes
// are (written, taken by the destination) in outgoing-delivery.ts; the bandwidth counted
// on in bandwidth.ts.

import { MigrationCancelledError, MigrationError, errorMessage } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { Channel } from '../transport/channel.js';
import { StreamWriter } from '../stream/writer.js';
import { writeHeader, writeSectionFooter, writeSectionPart, writeSectionStart } from '../stream/format.js';
import { MIG_CMD_POSTCOPY_ADVISE, postcopyAdviseData, writeCommand } from '../stream/return-path.js';
import { openReturnPath, type SourceReturnPath } from './return-path.js';
import { PostcopyStream } from './postcopy-outgoing.js';
import { BackgroundSnapshot } from './background-snapshot.js';
import { canComplete, decideIteration } from './convergence.js';
import { SwitchoverCounters } from './bandwidth.js';
import { OutgoingDelivery } from './outgoing-delivery.js';
import { completeStream } from './completion.js';
import type { OutgoingFigures, OutgoingOptions } from './outgoing-options.js';
import type { RunState } from '../machine/run-state.js';
import { sendRamWhileStopped, type SavedDevices } from './switchover-guard.js';
import { keepShape } from '../hot-shapes.js';
import { MultifdSender, connectMultifdChannels } from './multifd-send.js';

/** The least time a destination is given to take the passes' queued bytes before a stop (a downtime limit of a few ms). */
const DRAIN_BEFORE_STOP_MIN_MS = 20;
/**
 * How long the rate a called-off switchover got caps the estimate: a slow patch of the link
 * (a file's write-back, another tenant) passes, and a cap kept for good could stop a guest
 * that dirties fast from ever converging.
 */
const CALLED_OFF_CAP_MS = 1000;
/**
 * After a called-off switchover a running guest runs at least as long as that stop lasted
 * (and at least this long) before the next attempt: a channel that stays slow (a stalled
 * disk) would otherwise have the guard stop and resume the guest back to back, and the
 * guest would run only between attempts. A guest that was paused is owed nothing: the
 * passes go on at once.
 */
const CALLED_OFF_MIN_RUN_MS = 100;

export class OutgoingMigration {
  readonly #o: OutgoingOptions;
  readonly #startTime: number;
  #setupTime: number | undefined;
  #totalTime: number | undefined;
  #downtime: number | undefined;
  #switchoverAt: number | undefined;
  /** The bandwidth counted on and what follows from it (bandwidth.ts). */
  readonly #counters = new SwitchoverCounters();
  #switchoversCalledOff = 0;
  /** No switchover before this (engine clock): the guest runs again after a called-off one. */
  #noSwitchoverBefore = 0;
  /** After a called-off switchover: the next one waits until the channel has taken what that stop wrote. */
  #settleBeforeSwitchover = false;
  #errorDesc: string | undefined;
  /** The connections, and where the bytes written on them are (outgoing-delivery.ts). */
  readonly #io: OutgoingDelivery;
  #returnPath: SourceReturnPath | undefined;
  /** Set while paused in pre-switchover: migrate-continue calls it. */
  #continue: (() => void) | undefined;
  #cancelRequested = false;
  #pausedByUs = false;
  #wasRunning = false;
  #stateBeforeStop: RunState | undefined;
  /** A post-copy destination asks for pages (on any connection, the resumed ones too). */
  readonly #onPageRequest = (idstr: string | undefined, start: number, length: number): void => {
    if (!this.#postcopyCommitted) throw new MigrationError('The destination asked for pages before the switch to post-copy');
    this.#o.ram.requests.queuePages(idstr, start, length);
    this.#postcopyStream?.wake();
  };

  /** After the switch: what sends the rest, and pauses and recovers (postcopy-outgoing.ts). */
  #postcopyStream: PostcopyStream | undefined;
  /** migrate-start-postcopy arrived: switch at the next iteration. */
  #postcopyRequested = false;
  /** When the switch to post-copy began (engine clock). */
  #postcopyAt: number | undefined;
  /**
   * The package (LISTEN, device state, RUN) may have reached the destination: it may run
   * the guest, so this side must never run it again on its own.
   */
  #postcopyCommitted = false;
  /** Rejects when migrate_cancel arrives, so a connect that hangs cannot hold the cancel up. */
  #cancelSignal: Promise<never>;
  #signalCancel: (err: Error) => void = () => {};

  constructor(options: OutgoingOptions) {
    keepShape(this);
    this.#o = options;
    this.#io = new OutgoingDelivery(options.now, options.sleep);
    this.#startTime = options.now();
    this.#cancelSignal = new Promise<never>((_, reject) => {
      this.#signalCancel = reject;
    });
    // Only ever awaited through Promise.race; never leave its rejection unhandled.
    this.#cancelSignal.catch(() => {});
  }

  get figures(): OutgoingFigures {
    return {
      startTime: this.#startTime,
      setupTime: this.#setupTime,
      totalTime: this.#totalTime,
      downtime: this.#downtime,
      expectedDowntime: this.#counters.expectedDowntimeMs,
      mbps: this.#counters.mbps,
      pagesPerSecond: this.#counters.pagesPerSecond,
      thresholdBytes: this.#counters.thresholdBytes,
      errorDesc: this.#errorDesc,
      switchoverTime: this.#switchoverAt === undefined ? undefined : this.#switchoverAt - this.#startTime,
      switchoversCalledOff: this.#switchoversCalledOff,
      postcopyTime: this.#postcopyAt === undefined ? undefined : this.#postcopyAt - this.#startTime,
    };
  }

  /**
   * migrate-start-postcopy: switch to post-copy at the next iteration (QEMU's
   * start_postcopy flag). False when the migration can no longer switch (it is completing).
   */
  startPostcopy(): boolean {
    const status = this.#o.state.status;
    if (status !== 'setup' && status !== 'active') return false;
    this.#postcopyRequested = true;
    return true;
  }

  /** The run state the guest had just before the switchover stopped it (QEMU's global state). */
  get stateBeforeStop(): RunState | undefined {
    return this.#stateBeforeStop;
  }

  /**
   * migrate_cancel: setup/active → cancelling; the loop notices at its next step, and
   * tearing the channel down unblocks a write waiting on a slow peer.
   */
  cancel(): void {
    const { state } = this.#o;
    // A paused post-copy has nothing in flight: cancelling gives it up (the guest stays stopped here).
    if (state.status === 'postcopy-paused' && this.#postcopyStream?.giveUp(new MigrationError('migrate_cancel while post-copy was paused'))) return;
    const from = (['setup', 'active', 'pre-switchover', 'device'] as const).find((s) => state.transitionFrom(s, 'cancelling'));
    if (from === undefined) return;
    this.#cancelRequested = true;
    this.#signalCancel(new MigrationCancelledError());
    this.#io.destroy(new MigrationCancelledError());
  }

  /** Runs the whole migration; never rejects — the outcome is the state machine's status. */
  async run(): Promise<void> {
    const { state, registry, vm } = this.#o;
    try {
      const connecting = this.#o.connect();
      // A connection that completes after a cancel is closed at once.
      connecting.then(
        (late) => {
          if (this.#cancelRequested && late !== this.#io.channel) late.destroy(new MigrationCancelledError());
        },
        () => {},
      );
      const channel = await Promise.race([connecting, this.#cancelSignal]);
      this.#io.channel = channel;
      this.#checkCancelled();
      const writerOptions = this.#o.bufferSize !== undefined ? { bufferSize: this.#o.bufferSize } : undefined;
      const w = new StreamWriter(channel, writerOptions);
      // QEMU 7.2's destination takes the first connection as the main stream and every
      // later one as a multifd channel: they connect only once the main one has.
      if (this.#o.multifd) {
        const { channels, uuid, compression, level } = this.#o.multifd;
        const connected = await connectMultifdChannels(channels, () => this.#o.connect(), uuid, this.#io.multifdChannels, () => this.#cancelRequested, this.#cancelSignal);
        const multifd = new MultifdSender(connected, uuid, {
          ...writerOptions, ...(compression !== undefined ? { compression } : {}), ...(level !== undefined ? { level } : {}), initialPacketsSent: true,
        });
        this.#io.multifd = multifd;
        this.#o.ram.useMultifd(multifd);
      }

      writeHeader(w, vm.machineType, this.#o.header);
      // Post-copy opens the return path whatever the capability says (QEMU's migrate_fd_connect).
      if (this.#o.returnPath || this.#o.postcopy) {
        const why = this.#o.postcopy ? 'postcopy-ram' : 'return-path';
        this.#returnPath = openReturnPath(channel, w, why, this.#o.trace, this.#o.postcopy ? { onPageRequest: this.#onPageRequest } : undefined);
      }
      // Before any page: a destination that cannot do post-copy fails now, not at the switch.
      if (this.#o.postcopy) writeCommand(w, MIG_CMD_POSTCOPY_ADVISE, postcopyAdviseData(PAGE_SIZE, PAGE_SIZE));
      for (const { sectionId, handler } of registry.iterative) {
        writeSectionStart(w, 'start', sectionId, handler.idstr, handler.instanceId, handler.version);
        await handler.setup?.(w);
        writeSectionFooter(w, sectionId);
      }
      // The device state is encoded once, with the guest stopped: compile that code now.
      for (const { handler } of registry.nonIterative) handler.warmUp?.();
      await this.#io.flush(w);
      this.#checkCancelled();
      this.#setupTime = this.#o.now() - this.#startTime;
      state.transition('active');
      this.#counters.estimate.startPasses(this.#o.now(), this.#io.delivered(w), this.#o.ram.stats.pagesSent);
      if (this.#o.backgroundSnapshot) {
        await this.#backgroundSnapshot(w);
        return;
      }

      // The downtime guard may call a switchover off: the passes then go on.
      for (;;) {
        await this.#iterate(w);
        if (this.#postcopyRequested && this.#o.state.status === 'active') {
          await this.#postcopy(w);
          break;
        }
        if (await this.#complete(w)) break;
      }
    } catch (err) {
      this.#fail(err);
    }
  }

  async #iterate(w: StreamWriter): Promise<void> {
    const { registry, limiter } = this.#o;
    for (;;) {
      this.#checkCancelled();
      this.#updateCounters(w);
      const pending = this.#pending(false);
      const nearlyDone = decideIteration(pending, this.#counters.thresholdBytes) === 'sync-and-check';
      // As QEMU's migration_iteration_run: post-copy starts only while much is left; with
      // little left the migration completes as pre-copy.
      if (this.#postcopyRequested && !nearlyDone) return;
      const owedRunMs = this.#noSwitchoverBefore - this.#o.now();
      if (nearlyDone && owedRunMs > 0) {
        // Close enough to switch over, but the guest is owed run time after a called-off
        // switchover: send what is pending meanwhile; the dirty log keeps what it writes.
        if (pending === 0) {
          await this.#o.sleep(Math.min(owedRunMs, 10));
          continue;
        }
      } else if (nearlyDone && this.#settleBeforeSwitchover) {
        // What the called-off stop wrote may still wait in this process (a channel that
        // cannot say what it holds counts none of it as pending): a switchover made now
        // would spend its downtime on those bytes.
        this.#settleBeforeSwitchover = false;
        await this.#io.flush(w);
        await this.#io.waitDelivered(w);
        continue;
      } else if (nearlyDone) {
        await this.#drainBeforeStop(w);
        this.#checkCancelled();
        const syncStart = this.#o.now();
        const exact = this.#pending(true);
        const syncMs = this.#o.now() - syncStart;
        const { thresholdBytes, bytesPerMs } = this.#counters;
        const fits = canComplete(exact, thresholdBytes, syncMs, bytesPerMs);
        this.#o.trace?.(`migration: exact pending ${exact} B, threshold ${Math.round(thresholdBytes)} B (${bytesPerMs.toFixed(1)} B/ms × ${this.#o.parameters()['downtime-limit']} ms), the sync took ${syncMs.toFixed(1)} ms: ${fits ? 'stopping the guest' : 'iterating on'}`);
        if (fits) return;
        // As QEMU's migration_iteration_run: an exact figure that does not fit is followed
        // by an iteration. Going back to the estimate instead (still below the threshold)
        // would sync again at once, pass after pass, with nothing sent in between.
      }
      while (limiter.exceeded()) {
        await this.#o.sleep(Math.max(1, limiter.waitMs()));
        this.#checkCancelled();
        this.#updateCounters(w);
        // migrate-start-postcopy while the cap holds the passes back: switch now.
        if (this.#postcopyRequested) return;
      }
      const sentBefore = this.#o.ram.stats.pagesSent;
      for (const { sectionId, handler } of registry.iterative) {
        writeSectionPart(w, 'part', sectionId);
        await handler.iterate!(w);
        writeSectionFooter(w, sectionId);
      }
      await this.#io.flush(w);
      // A macrotask boundary, not just a microtask: QMP commands and timers run here. A
      // pass that found nothing to send while the socket still holds what the last ones
      // sent waits a little for it to drain, instead of syncing again at once.
      const idle = this.#o.ram.stats.pagesSent === sentBefore && this.#io.unsent() > 0;
      await this.#o.sleep(idle ? 1 : 0);
    }
  }

  /**
   * Before the exact sync that may stop the guest: let the destination take what the passes
   * left queued, while the guest still runs. Those bytes would otherwise go out in the
   * downtime, ahead of the stopped guest's RAM — on a local socket, tens of MiB behind a
   * destination slower than the source (one backing fresh memory), and an idle guest's
   * 262 144 ZERO chunks per GiB, sent in a few ms and read in several more. What the
   * guest dirties meanwhile is in the sync that follows, and the guard judges it as ever.
   * At most the downtime limit: a destination that does not take them by then leaves them
   * to the stop, as before.
   */
  async #drainBeforeStop(w: StreamWriter): Promise<void> {
    if (!this.#io.tellsUnsent) return;
    await this.#io.flush(w);
    const queued = this.#io.unsent();
    if (queued === 0) return;
    const start = this.#o.now();
    const until = start + Math.max(DRAIN_BEFORE_STOP_MIN_MS, this.#o.parameters()['downtime-limit']);
    const drained = await this.#io.waitDelivered(w, until, () => this.#cancelRequested);
    this.#o.trace?.(`migration: before the stop, the destination took ${drained ? 'the' : 'part of the'} ${queued} B still queued in ${(this.#o.now() - start).toFixed(1)} ms`);
  }

  /**
   * Stop the vCPUs for a switchover (QEMU's vm_stop_force_state(FINISH_MIGRATE)), noting
   * how the guest was; RAM sent from here on counts as sent while it was stopped.
   */
  async #stopGuest(at: number): Promise<void> {
    const { vm, ram } = this.#o;
    this.#switchoverAt = at;
    this.#stateBeforeStop = vm.runState;
    this.#wasRunning = await vm.pauseForMigration();
    this.#pausedByUs = true;
    this.#checkCancelled();
    ram.markStopped();
  }

  /** The switchover; false when the downtime guard called it off and the guest runs again. */
  async #complete(w: StreamWriter): Promise<boolean> {
    const { registry, vm, ram, state } = this.#o;
    const stopStart = this.#o.now();
    await this.#stopGuest(stopStart);
    if (this.#o.pauseBeforeSwitchover) await this.#pauseBeforeSwitchover();
    const pausedAt = this.#o.now();
    const bytesAtStop = this.#io.written(w);
    const deliveredAtStop = this.#io.delivered(w);

    // The downtime guard (switchover-guard.ts): the stopped guest's RAM goes out in a PART
    // section against the limit first, the device state saved ahead into memory. A guest
    // that was paused already is guarded too: calling its switchover off costs nothing, and
    // the downtime reported keeps to the limit. Not after pause-before-switchover: whoever
    // continued it has committed to it (QEMU).
    const ramEntry = registry.iterative.find((entry) => entry.handler === ram);
    let saved: SavedDevices | undefined;
    if (ramEntry && !this.#o.pauseBeforeSwitchover) {
      const guarded = await sendRamWhileStopped(w, {
        ram,
        sectionId: ramEntry.sectionId,
        devices: registry.nonIterative,
        io: this.#io,
        now: this.#o.now,
        limitMs: this.#o.parameters()['downtime-limit'],
        bytesPerMs: this.#counters.bytesPerMs,
        stopStart,
        pausedAt,
        deliveredAtStop,
        wasRunning: this.#wasRunning,
      });
      if (guarded === undefined) {
        this.#callOffSwitchover(w, pausedAt, deliveredAtStop);
        return false;
      }
      saved = guarded;
    }

    const end = await completeStream(w, {
      registry,
      io: this.#io,
      ...(saved !== undefined ? { saved } : {}),
      ...(this.#returnPath !== undefined ? { returnPath: this.#returnPath } : {}),
      cancelSignal: this.#cancelSignal,
      now: this.#o.now,
      startTime: this.#startTime,
      stopStart,
      pausedAt,
      bytesAtStop,
      ...(this.#o.trace !== undefined ? { trace: this.#o.trace } : {}),
    });
    this.#downtime = end - stopStart;
    this.#totalTime = end - this.#startTime;
    this.#updateCounters(w, true);
    ram.finishPasses();
    registry.cleanupAll();
    vm.setRunState('postmigrate');
    state.transition('completed');
    return true;
  }

  /**
   * background-snapshot (QEMU's bg_migration_thread): stop the guest, encode its device
   * state into memory, write-protect its RAM, run it again — the downtime — then every
   * page as it was at the stop, the RAM's END, the device state, EOF and the vmdesc. The
   * guest runs on here whatever the outcome.
   */
  async #backgroundSnapshot(w: StreamWriter): Promise<void> {
    const { registry, vm, ram, state } = this.#o;
    const self = this;
    const snapshot = new BackgroundSnapshot({
      memory: vm.memory,
      ram,
      registry,
      limiter: this.#o.limiter,
      now: this.#o.now,
      sleep: this.#o.sleep,
      io: this.#io,
      updateCounters: (writer) => this.#updateCounters(writer),
      checkCancelled: () => self.#checkCancelled(),
      stopGuest: (at) => this.#stopGuest(at),
      resumeGuest: () => {
        this.#pausedByUs = false;
        vm.resumeAfterMigration(this.#wasRunning);
        ram.markRunning();
      },
      trace: this.#o.trace,
    });
    this.#downtime = await snapshot.run(w);
    this.#totalTime = this.#o.now() - this.#startTime;
    this.#updateCounters(w, true);
    ram.finishPasses();
    this.#o.trace?.(
      `migration: background-snapshot completed in ${this.#totalTime.toFixed(1)} ms: ${ram.stats.pagesSent} pages; ` +
        `the guest's writes held ${snapshot.writesHeld} times until their page's region had gone ahead of its turn; downtime ${this.#downtime.toFixed(1)} ms, ${w.bytesWritten} B`,
    );
    registry.cleanupAll();
    state.transition('completed');
  }

  /**
   * The switch to post-copy and what follows (postcopy-outgoing.ts): the guest stops here
   * and runs on the destination from the package on, while the rest of its RAM follows.
   */
  async #postcopy(w: StreamWriter): Promise<void> {
    const { registry, vm, ram, state } = this.#o;
    const stopStart = this.#o.now();
    this.#postcopyAt = stopStart;
    const self = this;
    const io = this.#io;
    const stream = new PostcopyStream({
      options: this.#o,
      io,
      get returnPath() { return self.#returnPath; },
      set returnPath(rp) { self.#returnPath = rp; },
      cancelRequested: () => this.#cancelRequested,
      checkCancelled: () => self.#checkCancelled(),
      stopGuest: (at) => this.#stopGuest(at),
      pauseBeforeSwitchover: () => this.#pauseBeforeSwitchover('postcopy-active'),
      committed: () => {
        this.#postcopyCommitted = true;
      },
      flush: async (writer) => {
        await io.flush(writer);
        this.#releaseSent();
      },
      updateCounters: (writer) => this.#updateCounters(writer),
      onPageRequest: this.#onPageRequest,
    });
    this.#postcopyStream = stream;
    this.#downtime = await stream.switchOver(w, stopStart, this.#startTime);
    // QEMU: max-postcopy-bandwidth caps post-copy (0: none), not max-bandwidth.
    this.#o.limiter.setLimit(this.#o.parameters()['max-postcopy-bandwidth']);
    w = await stream.sendRest(w);
    const end = this.#o.now();
    try {
      await w.close();
    } catch (err) {
      this.#o.trace?.(`migration: closing the channel after the destination's SHUT 0 failed (${errorMessage(err)}); the migration stands`);
    }
    this.#totalTime = end - this.#startTime;
    this.#updateCounters(w, true);
    ram.finishPasses();
    this.#o.trace?.(
      `migration: completed in post-copy in ${this.#totalTime.toFixed(1)} ms (the switch at ${(stopStart - this.#startTime).toFixed(1)} ms, ` +
        `downtime ${this.#downtime.toFixed(1)} ms; ${ram.stats.postcopyRequests} page requests, ${ram.stats.postcopyBytes} B after the switch, ${stream.bytesOnEarlierChannels + w.bytesWritten} B in all` +
        `${ram.stats.releasedBytes > 0 ? `; ${ram.stats.releasedBytes} B of guest RAM given back here (release-ram)` : ''})`,
    );
    registry.cleanupAll();
    vm.setRunState('postmigrate');
    state.transition('completed');
  }

  /** migrate-pause: break the connection of a post-copy in flight (it then pauses, as after a network failure); false when none is. */
  breakConnection(cause: Error): boolean {
    const channel = this.#io.channel;
    if (this.#o.state.status !== 'postcopy-active' || !channel) return false;
    channel.destroy(cause);
    return true;
  }

  /** migrate with resume: the new connection for a paused post-copy. False when none is paused. */
  resume(channel: Channel): boolean {
    return this.#postcopyStream?.resume(channel) ?? false;
  }

  /** pre-switchover until migrate-continue (or a cancel), then device (post-copy: postcopy-active), as QEMU 7.2. */
  async #pauseBeforeSwitchover(next: 'device' | 'postcopy-active' = 'device'): Promise<void> {
    const { state } = this.#o;
    state.transition('pre-switchover');
    this.#o.trace?.('migration: the vCPUs are stopped; paused before the switchover until migrate-continue');
    try {
      await Promise.race([new Promise<void>((resolve) => (this.#continue = resolve)), this.#cancelSignal]);
    } finally {
      this.#continue = undefined;
    }
    this.#checkCancelled();
    state.transition(next);
  }

  /** migrate-continue: true when the migration was paused in pre-switchover and goes on now. */
  continueFromPause(): boolean {
    const go = this.#continue;
    if (!go) return false;
    go();
    return true;
  }

  /** The stopped guest's RAM did not reach the destination by the downtime guard's deadline (or could not): run the guest again and go on iterating. */
  #callOffSwitchover(w: StreamWriter, pausedAt: number, deliveredAtStop: number): void {
    const { vm, ram } = this.#o;
    const stoppedMs = this.#o.now() - pausedAt;
    const rate = (this.#io.delivered(w) - deliveredAtStop) / Math.max(1, stoppedMs);
    this.#switchoversCalledOff++;
    this.#noSwitchoverBefore = this.#wasRunning ? this.#o.now() + Math.max(stoppedMs, CALLED_OFF_MIN_RUN_MS) : 0;
    this.#settleBeforeSwitchover = true;
    ram.markRunning();
    this.#pausedByUs = false;
    this.#switchoverAt = undefined;
    vm.resumeAfterMigration(this.#wasRunning);
    const now = this.#o.now();
    this.#counters.calledOff(rate, now, now + CALLED_OFF_CAP_MS, this.#o.parameters()['downtime-limit'], this.#io.delivered(w), ram.stats.pagesSent);
    this.#o.trace?.(
      `migration: switchover called off after ${stoppedMs.toFixed(1)} ms with ${ram.pending()} B left ` +
        `(${rate.toFixed(1)} B/ms while stopped): ${this.#wasRunning ? 'the guest runs again' : 'the guest stays paused'}, the passes go on`,
    );
  }

  /**
   * What must still reach the destination before it can start the guest: the dirty RAM,
   * and the bytes sent but still in the socket's queue — on a local socket tens of MiB,
   * which a pass fills in a few ms; left out, a pass that ran in a gap of the guest's
   * writing would switch over with all of them still to deliver.
   */
  #pending(exact: boolean): number {
    let sum = this.#io.unsent();
    for (const { handler } of this.#o.registry.iterative) {
      sum += (exact ? handler.pendingExact?.() : undefined) ?? handler.pending?.() ?? 0;
    }
    return sum;
  }

  /** QEMU's migration_update_counters (bandwidth.ts); `final`: the completed migration's rates, over all of it. */
  #updateCounters(w: StreamWriter, final = false): void {
    const now = this.#o.now();
    const stats = this.#o.ram.stats;
    if (final) {
      this.#counters.final((this.#postcopyStream?.bytesOnEarlierChannels ?? 0) + this.#io.written(w), stats.pagesSent, now - this.#startTime);
    } else {
      this.#counters.update(now, () => this.#io.delivered(w), stats.pagesSent, stats.remainingBytes, this.#o.parameters()['downtime-limit']);
    }
  }

  /**
   * release-ram, after a flush in post-copy: give back what the channel has taken. From the
   * first page given back, the guest cannot run here again.
   */
  #releaseSent(): void {
    if (this.#o.ram.releaseSent() > 0 && !this.#ramReleased) {
      this.#ramReleased = true;
      this.#o.vm.ramReleased?.('The guest\'s RAM here was given back to the host as post-copy sent it (release-ram): it cannot run here again');
    }
  }

  #ramReleased = false;

  #checkCancelled(): void {
    if (this.#cancelRequested) throw new MigrationCancelledError();
  }

  #fail(err: unknown): void {
    const { state, registry, vm } = this.#o;
    const cancelled = this.#cancelRequested || state.status === 'cancelling';
    this.#io.destroy(err instanceof Error ? err : new MigrationError(errorMessage(err)));
    registry.cleanupAll();
    this.#o.ram.finishPasses();
    this.#totalTime = this.#o.now() - this.#startTime;
    if (this.#postcopyCommitted) {
      // The destination may run the guest already: running it here too would make two.
      // It stays stopped, whole; `cont` runs it here if the destination did not.
      this.#pausedByUs = false;
      this.#errorDesc = this.#ramReleased
        ? `${errorMessage(err)} — after the switch to post-copy, with release-ram: the guest's RAM here was given back as it went, so it cannot run here again; it may be running on the destination`
        : `${errorMessage(err)} — after the switch to post-copy: the guest is stopped here with all of its state, and may be running on the destination; if it is not, 'cont' runs it here`;
      this.#o.trace?.(`migration: failed: ${this.#errorDesc}`);
      vm.setRunState('paused');
      if (state.status === 'postcopy-active' || state.status === 'postcopy-paused' || state.status === 'postcopy-recover' || state.status === 'pre-switchover') state.transition('failed');
      return;
    }
    // Back to where the guest was before anything else hears of the outcome.
    if (this.#pausedByUs) {
      this.#pausedByUs = false;
      vm.resumeAfterMigration(this.#wasRunning);
    }
    if (cancelled) {
      state.transitionFrom('cancelling', 'cancelled');
      return;
    }
    this.#errorDesc = errorMessage(err);
    this.#o.trace?.(`migration: failed: ${this.#errorDesc}`);
    if (state.status === 'setup' || state.status === 'active' || state.status === 'pre-switchover' || state.status === 'device') state.transition('failed');
  }
}

