// The source's side of post-copy: the switch (QEMU's postcopy_start), then its migration
// thread in postcopy-active, postcopy-paused and postcopy-recover: the rest of the RAM, the
// pages the destination asks for first, then END, EOF and the destination's SHUT 0. A
// connection that breaks meanwhile pauses here — the guest stays stopped on this side,
// whole — until `migrate` with resume hands over a new one, on which the destination
// says which pages it has and the rest goes from there. OutgoingMigration (outgoing.ts)
// decides when to switch and lends what this needs (PostcopyStreamHost).

import { MigrationCancelledError, MigrationError, errorMessage } from '../errors.js';
import { writeEof, writeSectionFooter, writeSectionPart } from '../stream/format.js';
import {
  MAX_PACKAGED_BYTES, MIG_CMD_PACKAGED, MIG_CMD_PING, MIG_CMD_POSTCOPY_LISTEN, MIG_CMD_POSTCOPY_RESUME, MIG_CMD_POSTCOPY_RUN,
  MIG_CMD_RECV_BITMAP, RESUME_ACK_VALUE, be32Bytes, encodeCommand, recvBitmapData, writeCommand,
} from '../stream/return-path.js';
import { StreamWriter } from '../stream/writer.js';
import type { Channel } from '../transport/channel.js';
import type { OutgoingOptions } from './outgoing-options.js';
import type { OutgoingDelivery } from './outgoing-delivery.js';
import { saveDevicesAhead } from './switchover-guard.js';
import { REFUSED_PREFIX, SourceReturnPath, refusedByDestination, type PostcopyListeners } from './return-path.js';
import { keepShape } from '../hot-shapes.js';

/**
 * Post-copy: new background pages wait while the socket holds more than this, so that a
 * page the destination asks for (a vCPU waits for it) is not queued behind many others.
 */
const POSTCOPY_QUEUE_BYTES = 2 * 1024 * 1024;
/** Post-copy: background pages per PART section (between looks at the requests). */
const POSTCOPY_BACKGROUND_PAGES = 256;
/** Post-copy recovery: how long the source waits for each of the destination's answers. */
const RECOVERY_WAIT_MS = 30_000;

/** What OutgoingMigration lends the post-copy stream. */
export interface PostcopyStreamHost {
  readonly options: OutgoingOptions;
  /** The connections; `io.channel` is the one in use (recovery sets a new one: cancel, the counters and the drain read it). */
  readonly io: OutgoingDelivery;
  returnPath: SourceReturnPath | undefined;
  readonly cancelRequested: () => boolean;
  /** Throws if migrate_cancel has arrived. */
  readonly checkCancelled: () => void;
  /** Stop the vCPUs for the switch (noting how the guest was). */
  readonly stopGuest: (at: number) => Promise<void>;
  /** pause-before-switchover: pre-switchover until migrate-continue, then postcopy-active. */
  readonly pauseBeforeSwitchover: () => Promise<void>;
  /** The package is about to go: from here the destination may run the guest. */
  readonly committed: () => void;
  /** Flush the writer (and, with release-ram, give back what went). */
  readonly flush: (w: StreamWriter) => Promise<void>;
  readonly updateCounters: (w: StreamWriter) => void;
  readonly onPageRequest: PostcopyListeners['onPageRequest'];
}

export class PostcopyStream {
  readonly #host: PostcopyStreamHost;
  /** Ends the sender's wait early: a page was asked for. */
  #pageRequested: (() => void) | undefined;
  #resumeWith: { resolve: (channel: Channel) => void; reject: (err: Error) => void } | undefined;
  #bytesOnEarlierChannels = 0;

  constructor(host: PostcopyStreamHost) {
    keepShape(this);
    this.#host = host;
  }

  /**
   * The switch (QEMU's postcopy_start), the migration having started at `startTime`: stop
   * the guest at `stopStart`, discard on the destination what it must not keep, send the
   * device state in a package that ends with RUN — the destination runs the guest from
   * there. Returns the downtime: until the package went out.
   */
  async switchOver(w: StreamWriter, stopStart: number, startTime: number): Promise<number> {
    const host = this.#host;
    const { registry, ram, state, now, trace } = host.options;
    const pauseFirst = host.options.pauseBeforeSwitchover === true;
    if (!pauseFirst) state.transition('postcopy-active');
    await host.stopGuest(stopStart);
    if (pauseFirst) await host.pauseBeforeSwitchover();
    const discarded = ram.startPostcopy(w);
    writeCommand(w, MIG_CMD_PING, be32Bytes(2));
    const saved = await saveDevicesAhead(registry.nonIterative, now);
    const parts = [encodeCommand(MIG_CMD_POSTCOPY_LISTEN), ...saved.chunks, encodeCommand(MIG_CMD_PING, be32Bytes(3)), encodeCommand(MIG_CMD_POSTCOPY_RUN)];
    const length = parts.reduce((sum, p) => sum + p.byteLength, 0);
    if (length > MAX_PACKAGED_BYTES) throw new MigrationError(`The device state (${length} bytes) does not fit a post-copy package (${MAX_PACKAGED_BYTES} bytes at most)`);
    host.checkCancelled();
    // From the first byte of the package on, the destination may come to run the guest.
    host.committed();
    writeCommand(w, MIG_CMD_PACKAGED, be32Bytes(length));
    for (const part of parts) w.bytes(part);
    await host.flush(w);
    const packagedAt = now();
    writeCommand(w, MIG_CMD_PING, be32Bytes(4));
    trace?.(
      `migration: post-copy: the guest stopped ${(packagedAt - stopStart).toFixed(1)} ms after ${(stopStart - startTime).toFixed(1)} ms ` +
        `(${discarded.pages} pages still to send, in ${discarded.ranges} discard ranges; device state ${saved.length} B); the destination runs it now`,
    );
    // QEMU's downtime in post-copy: the guest stopped here until its state went out.
    return packagedAt - stopStart;
  }

  /**
   * Everything after the package, over as many connections as it takes: returns the writer
   * of the one it completed on. A broken connection pauses (QEMU's postcopy-paused) until
   * `migrate` with resume brings a new one; the rest then goes from what the destination
   * says it has. Throws on a cancel, a destination that failed to load, or giveUp().
   */
  async sendRest(w: StreamWriter): Promise<StreamWriter> {
    for (;;) {
      try {
        await this.#sendOn(w);
        return w;
      } catch (err) {
        if (this.#host.cancelRequested() || err instanceof MigrationCancelledError || (err instanceof MigrationError && err.message.startsWith(REFUSED_PREFIX))) throw err;
        this.#bytesOnEarlierChannels += w.bytesWritten;
        w = await this.#pause(err);
      }
    }
  }

  /** Post-copy on one connection: the rest of the RAM (pages asked for first), END, EOF, and the destination's SHUT 0. */
  async #sendOn(w: StreamWriter): Promise<void> {
    const { registry, ram } = this.#host.options;
    const channel = this.#host.io.channel!;
    const limiter = this.#host.options.limiter;
    while (ram.stats.remainingPages > 0) {
      if (w.error) throw w.error;
      // A page asked for goes at once; background pages wait while the socket is full, so
      // that one asked for is never far behind, and while the cap's window is spent.
      const held = (channel.unsent?.() ?? 0) > POSTCOPY_QUEUE_BYTES || limiter.exceeded();
      if (held && !ram.requests.queued) {
        // Until the socket drains or the cap's window ends — or at once, for a page asked for.
        const asked = new Promise<void>((resolve) => (this.#pageRequested = resolve));
        await Promise.race([this.#host.options.sleep(limiter.exceeded() ? Math.max(1, Math.min(5, limiter.waitMs())) : 1), asked, this.#brokenSignal(channel)]);
        this.#pageRequested = undefined;
        continue;
      }
      for (const { sectionId, handler } of registry.iterative) {
        writeSectionPart(w, 'part', sectionId);
        // Held back: the pages asked for alone.
        if (handler === ram) ram.requests.send(w, held ? 0 : POSTCOPY_BACKGROUND_PAGES);
        else await handler.iterate!(w);
        writeSectionFooter(w, sectionId);
      }
      await this.#host.flush(w);
      this.#host.updateCounters(w);
      // A macrotask boundary: the destination's requests come in here.
      await this.#host.options.sleep(0);
    }
    // QEMU's qemu_savevm_state_complete_postcopy: END sections, EOF; no vmdesc.
    for (const { sectionId, handler } of registry.iterative) {
      writeSectionPart(w, 'end', sectionId);
      await handler.complete(w);
      writeSectionFooter(w, sectionId);
    }
    writeEof(w);
    await w.drain();
    if (w.error) throw w.error;
    await this.#host.io.waitDelivered(w);
    // The destination says whether it has everything (post-copy always has the return path).
    const shut = await this.#host.returnPath!.shut;
    if (shut !== 0) throw new MigrationError(refusedByDestination(shut));
  }

  /** Rejects once the return path of `channel` has failed (the connection is gone), never resolves. */
  #brokenSignal(channel: Channel): Promise<never> {
    const rp = this.#host.returnPath;
    return new Promise<never>((_, reject) => {
      rp?.shut.then(
        (value) => { if (value !== 0) reject(new MigrationError(refusedByDestination(value))); },
        (err: unknown) => { if (this.#host.io.channel === channel) reject(err instanceof Error ? err : new Error(String(err))); },
      );
    });
  }

  /**
   * Post-copy lost its connection: postcopy-paused until migrate with resume hands over a
   * new one (resume()), then QEMU's recovery on it — RECV_BITMAP for each block, whose
   * answer says which pages the destination has (the rest are sent again), then
   * POSTCOPY_RESUME and its RESUME_ACK — and postcopy-active again. A recovery that fails
   * pauses again. migrate_cancel meanwhile gives up (the guest stays stopped here).
   */
  async #pause(cause: unknown): Promise<StreamWriter> {
    const { state, ram } = this.#host.options;
    let why = cause;
    for (;;) {
      this.#host.io.channel?.destroy(why instanceof Error ? why : new MigrationError(errorMessage(why)));
      state.transition('postcopy-paused');
      this.#host.options.trace?.(`migration: post-copy paused: ${errorMessage(why)}; ${ram.stats.remainingPages} pages still to send. migrate-recover on the destination, then migrate with resume here, goes on`);
      const channel = await new Promise<Channel>((resolve, reject) => (this.#resumeWith = { resolve, reject }));
      this.#resumeWith = undefined;
      this.#host.io.channel = channel;
      state.transition('postcopy-recover');
      try {
        return await this.#recoverOn(channel);
      } catch (err) {
        if (err instanceof MigrationCancelledError) throw err;
        why = err;
      }
    }
  }

  async #recoverOn(channel: Channel): Promise<StreamWriter> {
    const { state, ram } = this.#host.options;
    if (!channel.duplex) throw new MigrationError(`Cannot resume post-copy over ${channel.description}: the destination has no way to answer on it`);
    const w = new StreamWriter(channel, this.#host.options.bufferSize !== undefined ? { bufferSize: this.#host.options.bufferSize } : undefined);
    const bitmaps = new Map<string, Uint8Array>();
    let ack: number | undefined;
    let progress: () => void = () => {};
    this.#host.returnPath = new SourceReturnPath(channel, this.#host.options.trace, {
      onPageRequest: this.#host.onPageRequest,
      onRecvBitmap: (idstr, bitmap) => {
        bitmaps.set(idstr, bitmap);
        progress();
      },
      onResumeAck: (value) => {
        ack = value;
        progress();
      },
    });
    const broken = this.#brokenSignal(channel);
    broken.catch(() => {});
    const until = async (done: () => boolean, what: string): Promise<void> => {
      const deadline = this.#host.options.now() + RECOVERY_WAIT_MS;
      while (!done()) {
        if (w.error) throw w.error;
        if (this.#host.options.now() > deadline) throw new MigrationError(`Post-copy recovery: no ${what} from the destination within ${RECOVERY_WAIT_MS / 1000} s`);
        await Promise.race([new Promise<void>((resolve) => { progress = resolve; setTimeout(resolve, 50); }), broken]);
      }
    };
    const blocks = this.#host.options.vm.memory;
    for (const block of blocks) writeCommand(w, MIG_CMD_RECV_BITMAP, recvBitmapData(block.idstr));
    await this.#host.flush(w);
    await until(() => blocks.every((b) => bitmaps.has(b.idstr)), 'received bitmap');
    for (const block of blocks) ram.resumeFrom(block.idstr, bitmaps.get(block.idstr)!);
    writeCommand(w, MIG_CMD_POSTCOPY_RESUME);
    await this.#host.flush(w);
    await until(() => ack !== undefined, 'RESUME_ACK');
    if (ack !== RESUME_ACK_VALUE) throw new MigrationError(`Post-copy recovery: RESUME_ACK ${ack}, expected ${RESUME_ACK_VALUE}`);
    state.transition('postcopy-active');
    this.#host.options.trace?.(`migration: post-copy resumed on ${channel.description}: ${ram.stats.remainingPages} pages to send again`);
    return w;
  }

  /** migrate with resume: the new connection for a paused post-copy. False when none is paused. */
  resume(channel: Channel): boolean {
    const resumeWith = this.#resumeWith;
    if (!resumeWith || this.#host.options.state.status !== 'postcopy-paused') return false;
    resumeWith.resolve(channel);
    return true;
  }

  /** migrate_cancel while paused: give up (the migration fails with `reason`). False when not paused. */
  giveUp(reason: Error): boolean {
    const resumeWith = this.#resumeWith;
    if (!resumeWith) return false;
    resumeWith.reject(reason);
    return true;
  }

  /** A page was asked for: a wait for the socket or the cap ends now. */
  wake(): void {
    this.#pageRequested?.();
  }

  /** Bytes written on the connections recovery replaced. */
  get bytesOnEarlierChannels(): number {
    return this.#bytesOnEarlierChannels;
  }
}
