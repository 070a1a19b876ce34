// background-snapshot (QEMU's bg_migration_thread and ram_write_tracking_*): the state of
// a running guest as it was at one moment, saved while the guest runs on. The source
// stops the guest for as long as it takes to encode its device state into memory and to
// write-protect all of its RAM with userfaultfd, then runs it again and sends every page
// once. A page the guest wants to write before it has gone stops that vCPU in the kernel;
// the page goes next, copied into the stream, and is let go — so each page goes as it was
// at the stop, however the guest writes meanwhile. The RAM's END, the device state, EOF
// and the vmdesc close the stream: a destination (or `--incoming "exec:cat FILE"`) loads
// it as any other.

import { MigrationError } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { GuestMemoryBlock } from '../hypervisor/types.js';
import { writeSectionFooter, writeSectionPart } from '../stream/format.js';
import type { StreamWriter } from '../stream/writer.js';
import { Userfaultfd } from '../sys/userfaultfd.js';
import type { RamHandler } from './ram.js';
import type { RateLimiter } from './rate-limiter.js';

/** Background pages per section: enough to keep the socket busy, few enough that a vCPU waiting to write is served soon. */
const BACKGROUND_PAGES = 256;
/** While the socket holds more than this, background pages wait (a page the guest waits for never does). */
const QUEUE_BYTES = 2 * 1024 * 1024;
/** How long one wait for a write fault lasts on the thread pool before it is asked again. */
const FAULT_WAIT_MS = 20;

export interface SnapshotHost {
  readonly memory: readonly GuestMemoryBlock[];
  readonly ram: RamHandler;
  readonly limiter: RateLimiter;
  /** The RAM's section id in the stream. */
  readonly ramSectionId: number;
  readonly sleep: (ms: number) => Promise<void>;
  /** Bytes the channel holds that the peer has not taken (0 where it cannot tell). */
  readonly unsent: () => number;
  readonly flush: (w: StreamWriter) => Promise<void>;
  readonly updateCounters: (w: StreamWriter) => void;
  /** Throws once the migration was cancelled. */
  readonly checkCancelled: () => void;
  readonly trace?: ((message: string) => void) | undefined;
}

/** Whether this host can write-protect guest RAM with userfaultfd (QEMU's migrate_query_write_tracking). */
export function writeTrackingAvailable(): boolean {
  try {
    Userfaultfd.open({ writeProtect: true }).close();
    return true;
  } catch {
    return false;
  }
}

export class BackgroundSnapshot {
  readonly #h: SnapshotHost;
  #uffd: Userfaultfd | undefined;
  /** One wait for a fault on the thread pool at a time. */
  #faultWait: Promise<boolean> | undefined;
  #writesHeld = 0;

  constructor(host: SnapshotHost) {
    this.#h = host;
  }

  /** Pages the guest waited to write, sent ahead of their turn. */
  get writesHeld(): number {
    return this.#writesHeld;
  }

  /**
   * The guest is stopped: this is the moment the snapshot holds. Every block is
   * write-protected; on a kernel that cannot protect pages never touched, those are
   * mapped (read) first, as QEMU's ram_block_populate_read.
   */
  protect(): void {
    const uffd = Userfaultfd.open({ writeProtect: true });
    this.#uffd = uffd;
    this.#h.ram.snapshotPoint();
    for (const block of this.#h.memory) {
      if (block.hostAddress === undefined) throw new MigrationError(`Background-snapshot is not compatible with guest memory configuration (RAM block "${block.idstr}" is not memory this process maps)`);
      if (!uffd.protectsUnpopulated) {
        let sum = 0;
        for (let at = 0; at < block.size; at += PAGE_SIZE) sum += block.bytes[at]!;
        void sum;
      }
      const address = BigInt(block.hostAddress);
      uffd.registerWriteProtect(address, block.size);
      uffd.writeProtect(address, block.size, true);
    }
  }

  /** Every page, those the guest waits to write first, each let go once it is in the stream. */
  async sendAll(w: StreamWriter): Promise<void> {
    const { ram, limiter } = this.#h;
    while (ram.stats.remainingPages > 0) {
      this.#h.checkCancelled();
      if (w.error) throw w.error;
      this.#takeFaults();
      const held = this.#h.unsent() > QUEUE_BYTES || limiter.exceeded();
      if (held && !ram.requestsQueued) {
        // Until the socket drains or the cap's window ends — or at once for a write held.
        const wait = limiter.exceeded() ? Math.max(1, Math.min(5, limiter.waitMs())) : 1;
        await Promise.race([this.#h.sleep(wait), this.#waitForFault()]);
        continue;
      }
      writeSectionPart(w, 'part', this.#h.ramSectionId);
      ram.sendPostcopy(w, held ? 0 : BACKGROUND_PAGES);
      writeSectionFooter(w, this.#h.ramSectionId);
      // Copied into the stream's buffer: the guest may write them from now on.
      this.#release(ram.takeSent());
      await this.#h.flush(w);
      this.#h.updateCounters(w);
      // A macrotask boundary: QMP commands, timers and the fault waits come in here.
      await this.#h.sleep(0);
    }
  }

  /** Let go of all of RAM (whatever happened): no vCPU stays waiting on a write. */
  stop(): void {
    const uffd = this.#uffd;
    if (!uffd) return;
    this.#uffd = undefined;
    // As QEMU's ram_write_tracking_stop: protection off, the ranges unregistered (a block
    // never registered — a protect() that failed part-way — refuses: nothing to undo
    // there), and the descriptor closed, which lets go of anything left and wakes its waiters.
    for (const block of this.#h.memory) {
      if (block.hostAddress === undefined) continue;
      const address = BigInt(block.hostAddress);
      try {
        uffd.writeProtect(address, block.size, false);
        uffd.unregister(address, block.size);
      } catch (err) {
        this.#h.trace?.(`migration: background-snapshot: letting go of "${block.idstr}": ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    uffd.close();
  }

  #waitForFault(): Promise<boolean> {
    const uffd = this.#uffd;
    if (!uffd) return Promise.resolve(false);
    this.#faultWait ??= uffd.waitForFault(FAULT_WAIT_MS).finally(() => {
      this.#faultWait = undefined;
    });
    return this.#faultWait;
  }

  /** Faults read so far: each page the guest waits to write goes next. */
  #takeFaults(): void {
    const uffd = this.#uffd;
    if (!uffd) return;
    const memory = this.#h.memory;
    for (const fault of uffd.readFaults()) {
      if (!fault.writeProtect) continue;
      const b = memory.findIndex((block) => {
        const base = BigInt(block.hostAddress!);
        return fault.address >= base && fault.address < base + BigInt(block.size);
      });
      if (b < 0) {
        this.#h.trace?.(`migration: background-snapshot: a write fault at 0x${fault.address.toString(16)} outside guest RAM, ignored`);
        continue;
      }
      this.#writesHeld++;
      this.#h.ram.queueWrite(b, Number((fault.address - BigInt(memory[b]!.hostAddress!)) / BigInt(PAGE_SIZE)));
    }
  }

  /** Un-protect the pages sent (block index and page, in pairs), consecutive ones in one call. */
  #release(sent: readonly number[]): void {
    const uffd = this.#uffd!;
    const memory = this.#h.memory;
    let i = 0;
    while (i < sent.length) {
      const b = sent[i]!;
      const first = sent[i + 1]!;
      let count = 1;
      while (i + 2 * count < sent.length && sent[i + 2 * count] === b && sent[i + 2 * count + 1] === first + count) count++;
      uffd.writeProtect(BigInt(memory[b]!.hostAddress!) + BigInt(first * PAGE_SIZE), count * PAGE_SIZE, false);
      i += 2 * count;
    }
  }
}
