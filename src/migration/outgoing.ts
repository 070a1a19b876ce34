// The source side of one migration, as QEMU's migration thread: setup (START sections),
// iterations while what is pending exceeds bandwidth × downtime-limit, then a stop of
// the guest, END and FULL sections, EOF and the vmdesc. It runs in the background and
// yields to the event loop between iterations so QMP stays responsive.

import { MigrationCancelledError, MigrationError, errorMessage } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { Channel } from '../transport/channel.js';
import { StreamWriter } from '../stream/writer.js';
import {
  writeEof, writeHeader, writeSectionFooter, writeSectionPart, writeSectionStart, writeVmdesc,
} from '../stream/format.js';
import type { VmdescDevice } from '../stream/format.js';
import {
  MAX_PACKAGED_BYTES, MIG_CMD_OPEN_RETURN_PATH, MIG_CMD_PACKAGED, MIG_CMD_PING, MIG_CMD_POSTCOPY_ADVISE,
  MIG_CMD_POSTCOPY_LISTEN, MIG_CMD_POSTCOPY_RUN, be32Bytes, encodeCommand, postcopyAdviseData, writeCommand,
} from '../stream/return-path.js';
import { SourceReturnPath, refusedByDestination } from './return-path.js';
import { PostcopyStream } from './postcopy-outgoing.js';
import { BackgroundSnapshot } from './background-snapshot.js';
import { canComplete, decideIteration, expectedDowntimeMs, measureBandwidth, thresholdBytes } from './convergence.js';
import { BandwidthEstimate } from './bandwidth.js';
import type { MigrationParameters } from './parameters.js';
import type { RamHandler } from './ram.js';
import type { SaveVmRegistry } from './savevm.js';
import type { MigrationStateMachine } from './states.js';
import type { MigrationVm } from './vm.js';
import type { RunState } from '../machine/run-state.js';
import type { RateLimiter } from './rate-limiter.js';
import { settledBy } from './deadline.js';
import { saveDevicesAhead, stopDeadlines, stopGiveUp, type SavedDevices } from './switchover-guard.js';
import { keepShape } from '../hot-shapes.js';
import { MultifdSender, connectMultifdChannels } from './multifd-send.js';
import type { MultifdCompression } from '../stream/multifd-compression.js';

export interface OutgoingOptions {
  readonly vm: MigrationVm;
  readonly connect: () => Promise<Channel>;
  readonly state: MigrationStateMachine;
  readonly registry: SaveVmRegistry;
  readonly ram: RamHandler;
  readonly limiter: RateLimiter;
  readonly parameters: () => Readonly<MigrationParameters>;
  readonly now: () => number;
  readonly sleep: (ms: number) => Promise<void>;
  /** Write buffer size handed to the StreamWriter. */
  readonly bufferSize?: number;
  /** The `return-path` capability: complete only once the destination says it loaded everything. */
  readonly returnPath?: boolean;
  /**
   * The `pause-before-switchover` capability: once the vCPUs are stopped, wait in
   * `pre-switchover` for migrate-continue before sending the rest (QEMU's migration_maybe_pause).
   */
  readonly pauseBeforeSwitchover?: boolean;
  /**
   * The `postcopy-ram` capability: the destination is told at the start (ADVISE), and
   * migrate-start-postcopy then switches to post-copy — the guest runs on the destination
   * while the rest of its RAM follows, pages it touches first.
   */
  readonly postcopy?: boolean;
  /**
   * The `background-snapshot` capability: save the guest as it was when the migration
   * stopped it briefly, while it runs on (background-snapshot.ts); RAM must be in snapshot
   * mode (RamHandlerOptions.snapshot).
   */
  readonly backgroundSnapshot?: boolean;
  /**
   * The `multifd` capability: `channels` more connections through `connect`, each opened
   * with the VM's `uuid` (QEMU sends its -uuid whatever validate-uuid says); pages of data
   * go on them (multifd-send.ts), compressed as `compression` says at `level`.
   */
  readonly multifd?: { readonly channels: number; readonly uuid: Uint8Array; readonly compression?: MultifdCompression; readonly level?: number };
  /** The `validate-uuid` capability: the UUID sent in the configuration for the destination to check. */
  readonly uuid?: Uint8Array;
  /** Diagnostics (the Node side wires util.debuglog('ferry') here). */
  readonly trace?: (message: string) => void;
}




/** How long the end of a migration waits for the destination to take what its socket still holds. */
const DELIVERY_WAIT_MS = 5000;
/** The least time a destination is given to take the passes' queued bytes before a stop (a downtime limit of a few ms). */
const DRAIN_BEFORE_STOP_MIN_MS = 20;
/** The share of the measured bandwidth the switchover decision counts on. */
const SWITCHOVER_MARGIN = 0.9;
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

/** Times (ms) and rates query-migrate reports for the source. */
export interface OutgoingFigures {
  readonly startTime: number;
  readonly setupTime: number | undefined;
  readonly totalTime: number | undefined;
  readonly downtime: number | undefined;
  readonly expectedDowntime: number;
  readonly mbps: number;
  readonly pagesPerSecond: number;
  readonly thresholdBytes: number;
  readonly errorDesc: string | undefined;
  /** Milliseconds from the start to the moment the vCPUs were stopped, once they were. */
  readonly switchoverTime: number | undefined;
  /** Switchovers the downtime guard called off (the guest ran again and the passes went on). */
  readonly switchoversCalledOff: number;
  /** Milliseconds from the start to the switch to post-copy, once it happened. */
  readonly postcopyTime: number | undefined;
}

export class OutgoingMigration {
  readonly #o: OutgoingOptions;
  readonly #startTime: number;
  #setupTime: number | undefined;
  #totalTime: number | undefined;
  #downtime: number | undefined;
  #expectedDowntime = 0;
  #mbps = 0;
  #pagesPerSecond = 0;
  #bytesPerMs = 0;
  #switchoverAt: number | undefined;
  readonly #bandwidth = new BandwidthEstimate();
  #switchoversCalledOff = 0;
  /** No switchover before this (engine clock): the guest runs again after a called-off one. */
  #noSwitchoverBefore = 0;
  /** After a called-off switchover: the next one waits until the channel has taken what that stop wrote. */
  #settleBeforeSwitchover = false;
  #threshold = 0;
  #errorDesc: string | undefined;
  #channel: Channel | undefined;
  /** The `multifd` channels, once connected. */
  #multifd: MultifdSender | undefined;
  /** Connections made for multifd channels, kept so a cancel or failure can tear them down. */
  readonly #multifdChannels: Channel[] = [];
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
      expectedDowntime: this.#expectedDowntime,
      mbps: this.#mbps,
      pagesPerSecond: this.#pagesPerSecond,
      thresholdBytes: this.#threshold,
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
    this.#channel?.destroy(new MigrationCancelledError());
    for (const c of this.#multifdChannels) c.destroy(new MigrationCancelledError());
  }

  /** Runs the whole migration; never rejects — the outcome is the state machine's status. */
  async run(): Promise<void> {
    const { state, registry, vm } = this.#o;
    try {
      const connecting = this.#o.connect();
      // A connection that completes after a cancel is closed at once.
      connecting.then(
        (late) => {
          if (this.#cancelRequested && late !== this.#channel) late.destroy(new MigrationCancelledError());
        },
        () => {},
      );
      const channel = await Promise.race([connecting, this.#cancelSignal]);
      this.#channel = channel;
      this.#checkCancelled();
      const writerOptions = this.#o.bufferSize !== undefined ? { bufferSize: this.#o.bufferSize } : undefined;
      const w = new StreamWriter(channel, writerOptions);
      // QEMU 7.2's destination takes the first connection as the main stream and every
      // later one as a multifd channel: they connect only once the main one has.
      if (this.#o.multifd) {
        const { channels, uuid, compression, level } = this.#o.multifd;
        const connected = await connectMultifdChannels(channels, () => this.#o.connect(), uuid, this.#multifdChannels, () => this.#cancelRequested, this.#cancelSignal);
        this.#multifd = new MultifdSender(connected, uuid, {
          ...writerOptions, ...(compression !== undefined ? { compression } : {}), ...(level !== undefined ? { level } : {}), initialPacketsSent: true,
        });
        this.#o.ram.useMultifd(this.#multifd);
      }

      writeHeader(w, vm.machineType, this.#o.uuid !== undefined ? { uuid: this.#o.uuid } : undefined);
      // Post-copy opens the return path whatever the capability says (QEMU's migrate_fd_connect).
      if (this.#o.returnPath || this.#o.postcopy) {
        if (!channel.duplex) {
          throw new MigrationError(`Cannot use the ${this.#o.postcopy ? 'postcopy-ram' : 'return-path'} capability over ${channel.description}: the destination has no way to answer on it (use tcp:, unix: or fd: with a socket)`);
        }
        // As QEMU's migration thread: open it, and ping once so a dead one shows early.
        this.#returnPath = new SourceReturnPath(channel, this.#o.trace, this.#o.postcopy ? { onPageRequest: this.#onPageRequest } : undefined);
        // A destination that fails part-way says so at once (QEMU's return path thread marks
        // the migration bad): stop sending into it, and let its SHUT be the error reported.
        this.#returnPath.shut.then((value) => {
          if (value !== 0) channel.destroy(new MigrationError(refusedByDestination(value)));
        }, () => {});
        writeCommand(w, MIG_CMD_OPEN_RETURN_PATH);
        writeCommand(w, MIG_CMD_PING, be32Bytes(1));
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
      await this.#flush(w);
      this.#checkCancelled();
      this.#setupTime = this.#o.now() - this.#startTime;
      state.transition('active');
      this.#bandwidth.startPasses(this.#o.now(), this.#delivered(w), this.#o.ram.stats.pagesSent);
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
      const nearlyDone = decideIteration(pending, this.#threshold) === 'sync-and-check';
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
        await this.#flush(w);
        await this.#waitDelivered(w);
        continue;
      } else if (nearlyDone) {
        await this.#drainBeforeStop(w);
        this.#checkCancelled();
        const syncStart = this.#o.now();
        const exact = this.#pending(true);
        const syncMs = this.#o.now() - syncStart;
        const fits = canComplete(exact, this.#threshold, syncMs, this.#bytesPerMs);
        this.#o.trace?.(`migration: exact pending ${exact} B, threshold ${Math.round(this.#threshold)} B (${this.#bytesPerMs.toFixed(1)} B/ms × ${this.#o.parameters()['downtime-limit']} ms), the sync took ${syncMs.toFixed(1)} ms: ${fits ? 'stopping the guest' : 'iterating on'}`);
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
      await this.#flush(w);
      // A macrotask boundary, not just a microtask: QMP commands and timers run here. A
      // pass that found nothing to send while the socket still holds what the last ones
      // sent waits a little for it to drain, instead of syncing again at once.
      const idle = this.#o.ram.stats.pagesSent === sentBefore && this.#unsent() > 0;
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
    if (this.#channel?.unsent === undefined) return;
    await this.#flush(w);
    const queued = this.#unsent();
    if (queued === 0) return;
    const start = this.#o.now();
    const until = start + Math.max(DRAIN_BEFORE_STOP_MIN_MS, this.#o.parameters()['downtime-limit']);
    const drained = await this.#waitDelivered(w, until, () => this.#cancelRequested);
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
    const bytesAtStop = this.#written(w);
    const deliveredAtStop = this.#delivered(w);

    // The downtime guard: a running guest's RAM goes out in a PART section against the
    // limit first. Nothing is final before the END section, so if the deadline passes with
    // pages left, the guest runs again and the passes go on, knowing the real rate.
    const ramEntry = registry.iterative.find((entry) => entry.handler === ram);
    // A guest that was paused already is guarded too: calling its switchover off costs
    // nothing, and the downtime reported keeps to the limit. Not after
    // pause-before-switchover: whoever continued it has committed to it (QEMU).
    let saved: SavedDevices | undefined;
    if (ramEntry && !this.#o.pauseBeforeSwitchover) {
      const limit = this.#o.parameters()['downtime-limit'];
      // The device state first, into memory, to go out after the RAM's END as ever: what it
      // costs (the time to save it, its bytes) comes off the RAM's budget exactly, instead
      // of a share of the limit guessed for every kind of VM.
      saved = await saveDevicesAhead(registry.nonIterative, this.#o.now);
      writeSectionPart(w, 'part', ramEntry.sectionId);
      const deadlines = stopDeadlines(stopStart, limit, saved.length, this.#bytesPerMs);
      const { deadline } = deadlines;
      const pagesBefore = ram.stats.pagesSent;
      const giveUp = stopGiveUp({
        now: () => this.#o.now(),
        pausedAt,
        deadlines,
        deliveredAtStop,
        written: () => this.#written(w),
        unsent: () => this.#unsent(),
        remainingPages: () => ram.stats.remainingPages,
      });
      const sent = await ram.sendWhileStopped(w, deadline, giveUp);
      writeSectionFooter(w, ramEntry.sectionId);
      // In the stream buffer is not yet on its way: the pages must reach the channel before
      // the deadline too, or the final flush would spend the downtime after the check —
      // waited for no longer than the deadline (a full socket can take seconds). And
      // the destination must have taken them, as far as the OS tells: a local socket holds
      // tens of MiB, which a destination slower than the source (one backing fresh memory)
      // took 84–133 ms more to read after RAM had "gone out" in time.
      const flushed = sent && (await settledBy(this.#multifd ? Promise.all([w.flush(), this.#multifd.flush()]).then(() => {}) : w.flush(), deadline, this.#o.now, giveUp));
      if (w.error) throw w.error;
      const delivered = flushed && (await this.#waitDelivered(w, deadline, giveUp));
      // A paused guest's stop that sent no pages and flushed late met the channel's latency,
      // not the RAM's volume: more passes cannot make the next stop faster, and calling it
      // off would repeat it for ever. It completes (nobody waits on a paused guest). A
      // running guest's does not: it stays active, as a migration that cannot converge.
      const pagesWhileStopped = ram.stats.pagesSent - pagesBefore;
      const done = sent && ((delivered && this.#o.now() <= deadline) || (!this.#wasRunning && pagesWhileStopped === 0));
      if (!done) {
        this.#callOffSwitchover(w, pausedAt, deliveredAtStop);
        return false;
      }
    }

    for (const { sectionId, handler } of registry.iterative) {
      writeSectionPart(w, 'end', sectionId);
      await handler.complete(w);
      writeSectionFooter(w, sectionId);
    }
    const ramDoneAt = this.#o.now();
    const devices: VmdescDevice[] = [];
    if (saved) {
      for (const chunk of saved.chunks) w.bytes(chunk);
      devices.push(...saved.devices);
    } else {
      for (const { sectionId, handler } of registry.nonIterative) {
        writeSectionStart(w, 'full', sectionId, handler.idstr, handler.instanceId, handler.version);
        const entry = await handler.complete(w);
        writeSectionFooter(w, sectionId);
        if (entry) devices.push(entry);
      }
    }
    writeEof(w);
    writeVmdesc(w, { page_size: PAGE_SIZE, devices });
    const devicesDoneAt = this.#o.now();
    const deviceMs = (saved?.ms ?? 0) + (devicesDoneAt - ramDoneAt);
    await w.drain();
    if (w.error) throw w.error;
    await this.#multifd?.drain();
    const drainedAt = this.#o.now();
    await this.#waitDelivered(w);
    const deliveredAt = this.#o.now();
    let acknowledgedAt: number | undefined;
    if (this.#returnPath) {
      // The destination says whether it loaded everything; until then a failure on either
      // side (or a cancel) runs this guest again. QEMU's downtime includes this wait.
      const shut = await Promise.race([this.#returnPath.shut, this.#cancelSignal]);
      if (shut !== 0) throw new MigrationError(refusedByDestination(shut));
      acknowledgedAt = this.#o.now();
    }
    // Every byte is out: the destination will start the guest. A cancel that arrives now
    // is too late — running the source again would leave two copies running.
    // Without a return path the downtime ends with the last byte flushed (ARCHITECTURE.md)
    // and taken from the socket's queue, as QEMU's ends before it closes the channel —
    // closing `exec:` waits for the command to exit, which is no part of the guest's downtime.
    const end = this.#o.now();
    // The migration has succeeded only once the channel closed cleanly (exec: status 0) —
    // unless the destination already said it has everything: it may run the guest now, so
    // this one must not run again whatever closing says.
    try {
      // The multifd channels end first: the destination finishes on the main stream's EOF.
      await this.#multifd?.close();
      await w.close();
      if (w.error) throw w.error;
    } catch (err) {
      if (acknowledgedAt === undefined) throw err;
      this.#o.trace?.(`migration: closing the channel after the destination's SHUT 0 failed (${errorMessage(err)}); the migration stands`);
    }
    const closedAt = this.#o.now();
    this.#downtime = end - stopStart;
    this.#totalTime = end - this.#startTime;
    this.#updateCounters(w, true);
    ram.finishPasses();
    this.#o.trace?.(
      `migration: completed in ${this.#totalTime.toFixed(1)} ms, downtime ${this.#downtime.toFixed(1)} ms ` +
        `(stopping the vCPUs ${(pausedAt - stopStart).toFixed(1)} ms, the last RAM ${(ramDoneAt - pausedAt).toFixed(1)} ms, ` +
        `device state ${deviceMs.toFixed(1)} ms, the last flush ${(drainedAt - devicesDoneAt).toFixed(1)} ms, ` +
        `the destination taking the bytes still queued ${(deliveredAt - drainedAt).toFixed(1)} ms` +
        `${acknowledgedAt === undefined ? '' : `, the destination's SHUT ${(acknowledgedAt - drainedAt).toFixed(1)} ms`}; ` +
        `${this.#written(w) - bytesAtStop} B after the stop; then closing the channel ${(closedAt - end).toFixed(1)} ms), ` +
        `${this.#written(w)} B in all, ${w.bytesByReference} B of it from guest RAM by reference` +
        `${this.#multifd ? ` (the main stream; ${this.#multifd.packets} multifd packets on ${this.#multifd.channels} channels carried ${this.#multifd.pages} pages${this.#multifd.compressedFrom > 0 ? `, ${this.#multifd.compressedFrom} B of them compressed to ${this.#multifd.compressedTo} B` : ''})` : ''}`,
    );
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
      unsent: () => this.#channel?.unsent?.() ?? 0,
      flush: (writer) => this.#flush(writer),
      waitDelivered: (writer) => this.#waitDelivered(writer),
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
   * The switch to post-copy and what follows (QEMU's postcopy_start, then its iterations in
   * postcopy-active): stop the guest, discard on the destination what it must not keep,
   * send the device state in a package that ends with RUN — the destination runs the
   * guest from there — then the rest of the RAM, the pages it asks for first.
   */
  async #postcopy(w: StreamWriter): Promise<void> {
    const { registry, vm, ram, state } = this.#o;
    const stopStart = this.#o.now();
    this.#postcopyAt = stopStart;
    if (!this.#o.pauseBeforeSwitchover) state.transition('postcopy-active');
    await this.#stopGuest(stopStart);
    if (this.#o.pauseBeforeSwitchover) await this.#pauseBeforeSwitchover('postcopy-active');
    const discarded = ram.startPostcopy(w);
    writeCommand(w, MIG_CMD_PING, be32Bytes(2));
    const saved = await saveDevicesAhead(registry.nonIterative, this.#o.now);
    const parts = [encodeCommand(MIG_CMD_POSTCOPY_LISTEN), ...saved.chunks, encodeCommand(MIG_CMD_PING, be32Bytes(3)), encodeCommand(MIG_CMD_POSTCOPY_RUN)];
    const length = parts.reduce((sum, p) => sum + p.byteLength, 0);
    if (length > MAX_PACKAGED_BYTES) throw new MigrationError(`The device state (${length} bytes) does not fit a post-copy package (${MAX_PACKAGED_BYTES} bytes at most)`);
    this.#checkCancelled();
    // From the first byte of the package on, the destination may come to run the guest.
    this.#postcopyCommitted = true;
    writeCommand(w, MIG_CMD_PACKAGED, be32Bytes(length));
    for (const part of parts) w.bytes(part);
    await this.#flush(w);
    this.#releaseSent();
    const packagedAt = this.#o.now();
    // QEMU's downtime in post-copy: the guest stopped here until its state went out.
    this.#downtime = packagedAt - stopStart;
    writeCommand(w, MIG_CMD_PING, be32Bytes(4));
    this.#o.trace?.(
      `migration: post-copy: the guest stopped ${(packagedAt - stopStart).toFixed(1)} ms after ${(stopStart - this.#startTime).toFixed(1)} ms ` +
        `(${discarded.pages} pages still to send, in ${discarded.ranges} discard ranges; device state ${saved.length} B); the destination runs it now`,
    );

    // QEMU: max-postcopy-bandwidth caps post-copy (0: none), not max-bandwidth.
    this.#o.limiter.setLimit(this.#o.parameters()['max-postcopy-bandwidth']);
    const self = this;
    const stream = new PostcopyStream({
      options: this.#o,
      get channel() { return self.#channel; },
      set channel(channel) { self.#channel = channel; },
      get returnPath() { return self.#returnPath; },
      set returnPath(rp) { self.#returnPath = rp; },
      cancelRequested: () => this.#cancelRequested,
      flush: async (writer) => {
        await this.#flush(writer);
        this.#releaseSent();
      },
      waitDelivered: (writer) => this.#waitDelivered(writer),
      updateCounters: (writer) => this.#updateCounters(writer),
      onPageRequest: this.#onPageRequest,
    });
    this.#postcopyStream = stream;
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
    if (this.#o.state.status !== 'postcopy-active' || !this.#channel) return false;
    this.#channel.destroy(cause);
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
    const rate = (this.#delivered(w) - deliveredAtStop) / Math.max(1, stoppedMs);
    this.#bandwidth.cap(rate, this.#o.now(), this.#o.now() + CALLED_OFF_CAP_MS);
    this.#switchoversCalledOff++;
    this.#noSwitchoverBefore = this.#wasRunning ? this.#o.now() + Math.max(stoppedMs, CALLED_OFF_MIN_RUN_MS) : 0;
    this.#settleBeforeSwitchover = true;
    ram.markRunning();
    this.#pausedByUs = false;
    this.#switchoverAt = undefined;
    vm.resumeAfterMigration(this.#wasRunning);
    this.#bytesPerMs = Math.min(this.#bytesPerMs, rate * SWITCHOVER_MARGIN);
    this.#threshold = thresholdBytes(this.#bytesPerMs, this.#o.parameters()['downtime-limit']);
    this.#o.trace?.(
      `migration: switchover called off after ${stoppedMs.toFixed(1)} ms with ${ram.pending()} B left ` +
        `(${rate.toFixed(1)} B/ms while stopped): ${this.#wasRunning ? 'the guest runs again' : 'the guest stays paused'}, the passes go on`,
    );
    this.#bandwidth.startWindow(this.#o.now(), this.#delivered(w), ram.stats.pagesSent);
  }

  /**
   * What must still reach the destination before it can start the guest: the dirty RAM,
   * and the bytes sent but still in the socket's queue — on a local socket tens of MiB,
   * which a pass fills in a few ms; left out, a pass that ran in a gap of the guest's
   * writing would switch over with all of them still to deliver.
   */
  #pending(exact: boolean): number {
    let sum = this.#unsent();
    for (const { handler } of this.#o.registry.iterative) {
      sum += (exact ? handler.pendingExact?.() : undefined) ?? handler.pending?.() ?? 0;
    }
    return sum;
  }

  /**
   * Bytes the destination has taken: what the stream writer accepted, less what still
   * waits in this process or the socket's send queue. The bandwidth that decides the
   * switchover is measured on these — on a local socket with tens of MiB of buffer, bytes
   * accepted run far ahead of bytes the destination has.
   */
  #delivered(w: StreamWriter): number {
    return this.#written(w) - this.#unsent();
  }

  /** Bytes written on the main stream and, with multifd, on its channels (compressed pages at their own size, as QEMU counts them). */
  #written(w: StreamWriter): number {
    return w.bytesWritten + (this.#multifd?.bytesCounted ?? 0);
  }

  /** Bytes written that the destination has not taken yet, on every connection (where the OS tells), counted as #written counts. */
  #unsent(): number {
    return (this.#channel?.unsent?.() ?? 0) + (this.#multifd?.unsentCounted() ?? 0);
  }

  /**
   * After the last flush: wait until the destination has taken every byte, as far as the
   * OS tells (a socket's send queue; a local socket holds tens of MiB), so that the
   * downtime covers them — QEMU's ends at its last write to a socket whose buffer is a
   * few hundred KiB. At most until `until` (DELIVERY_WAIT_MS by default: a destination
   * that stopped reading fails on its own, and the close that follows reports it). True
   * once nothing is left unsent, or when the channel cannot tell.
   */
  async #waitDelivered(w: StreamWriter, until = this.#o.now() + DELIVERY_WAIT_MS, giveUp?: () => boolean): Promise<boolean> {
    const channel = this.#channel;
    if (channel?.unsent === undefined) return true;
    while (!w.error && this.#unsent() > 0 && this.#o.now() < until && giveUp?.() !== true) await this.#o.sleep(1);
    return this.#unsent() === 0;
  }

  /**
   * QEMU's migration_update_counters: once a window closes (bandwidth.ts), re-derive the
   * bandwidth counted on, the threshold and the expected downtime; `final`: the completed
   * migration's figures, over all of it, as QEMU's final mbps.
   */
  #updateCounters(w: StreamWriter, final = false): void {
    const now = this.#o.now();
    if (final) {
      const whole = measureBandwidth({ bytes: (this.#postcopyStream?.bytesOnEarlierChannels ?? 0) + this.#written(w), pages: this.#o.ram.stats.pagesSent, elapsedMs: now - this.#startTime });
      this.#mbps = whole.mbps;
      this.#pagesPerSecond = Math.round(whole.pagesPerSecond);
      return;
    }
    const window = this.#bandwidth.close(now, () => this.#delivered(w), this.#o.ram.stats.pagesSent);
    if (window === undefined) return;
    // A tenth held back for what the switchover costs besides pages: stopping the vCPUs,
    // the device state, the last flush.
    this.#bytesPerMs = window.cautiousBytesPerMs * SWITCHOVER_MARGIN;
    this.#mbps = window.mbps;
    this.#pagesPerSecond = Math.round(window.pagesPerSecond);
    this.#threshold = thresholdBytes(this.#bytesPerMs, this.#o.parameters()['downtime-limit']);
    if (window.bytes > 10000) {
      this.#expectedDowntime = expectedDowntimeMs(this.#o.ram.stats.remainingBytes, this.#bytesPerMs);
    }
  }

  async #flush(w: StreamWriter): Promise<void> {
    await w.flush();
    if (w.error) throw w.error;
    await this.#multifd?.flush();
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
    this.#channel?.destroy(err instanceof Error ? err : new MigrationError(errorMessage(err)));
    for (const c of this.#multifdChannels) c.destroy(err instanceof Error ? err : undefined);
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
