// background-snapshot (QEMU's bg_migration_thread and ram_write_tracking_*): the state of
// a running guest as it was at one moment, saved while the guest runs on. The source
// stops the guest for as long as it takes to encode its device state into memory and to
// write-protect all of its RAM with userfaultfd, then runs it again and sends every page
// once. A page the guest wants to write before it has gone stops that vCPU in the kernel;
// the page goes next (with the rest of its 2 MiB region), copied into the stream, and is
// let go once its region is out — so each page goes as it was at the stop, however the
// guest writes meanwhile. The RAM's END, the device state, EOF
// and the vmdesc close the stream: a destination (or `--incoming "exec:cat FILE"`) loads
// it as any other.

import { MigrationError } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import type { GuestMemoryBlock } from '../hypervisor/types.js';
import { writeEof, writeSectionFooter, writeSectionPart, writeVmdesc } from '../stream/format.js';
import type { StreamWriter } from '../stream/writer.js';
import { Userfaultfd } from '../sys/userfaultfd.js';
import type { RamHandler } from './ram.js';
import type { RateLimiter } from './rate-limiter.js';
import type { SaveVmRegistry } from './savevm.js';
import { saveDevicesAhead } from './switchover-guard.js';
import type { OutgoingDelivery } from './outgoing-delivery.js';

/** Background pages per section: enough to keep the socket busy, few enough that a vCPU waiting to write is served soon. */
const BACKGROUND_PAGES = 256;
/** While the socket holds more than this, background pages wait (a page the guest waits for never does). */
const QUEUE_BYTES = 2 * 1024 * 1024;
/** How long one wait for a write fault lasts on the thread pool before it is asked again. */
const FAULT_WAIT_MS = 20;
/**
 * Pages are let go a transparent huge page (2 MiB) at a time: un-protecting part of one
 * makes the kernel split it into 4 KiB pages for good, and the guest would run on 4 KiB
 * pages after every snapshot (by hand: AnonHugePages 1 GiB before a snapshot of a 1 GiB
 * guest, 0 after, and the next snapshot's stop 23–30 ms instead of 10).
 */
const REGION_PAGES = (2 * 1024 * 1024) / PAGE_SIZE;

/** What the snapshot needs of the outgoing migration that runs it. */
export interface SnapshotHost {
  readonly memory: readonly GuestMemoryBlock[];
  readonly ram: RamHandler;
  readonly registry: SaveVmRegistry;
  readonly limiter: RateLimiter;
  readonly now: () => number;
  readonly sleep: (ms: number) => Promise<void>;
  /** The connection: what it holds that the peer has not taken, flushing, waiting until the peer has taken it. */
  readonly io: Pick<OutgoingDelivery, 'unsent' | 'flush' | 'waitDelivered'>;
  readonly updateCounters: (w: StreamWriter) => void;
  /** Throws once the migration was cancelled. */
  readonly checkCancelled: () => void;
  /** Stop the vCPUs (the migration's own stop: a failure from here runs the guest again). */
  readonly stopGuest: (at: number) => Promise<void>;
  /** Run the guest again as it ran before the stop; nothing is to undo after this. */
  readonly resumeGuest: () => void;
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
  /** Per block, per 2 MiB region: pages of it sent so far (the region is let go when all are). */
  #regionSent: Uint16Array[] = [];

  constructor(host: SnapshotHost) {
    this.#h = host;
  }

  /**
   * The whole snapshot after the setup sections: stop the guest, encode its device state
   * into memory, write-protect its RAM, run it again — the downtime, returned in ms — then
   * every page as it was at the stop, the RAM's END, the device state, EOF and the vmdesc,
   * and the channel closed. All of RAM is let go whatever happens.
   */
  async run(w: StreamWriter): Promise<number> {
    const { registry, ram } = this.#h;
    const ramEntry = registry.iterative.find((entry) => entry.handler === ram);
    if (!ramEntry) throw new MigrationError('background-snapshot: no RAM section to save');
    this.#ramSectionId = ramEntry.sectionId;
    try {
      const stopStart = this.#h.now();
      await this.#h.stopGuest(stopStart);
      const saved = await saveDevicesAhead(registry.nonIterative, this.#h.now);
      this.#protect();
      // The moment is kept: the guest runs again (QEMU starts it before sending any page).
      this.#h.resumeGuest();
      const downtime = this.#h.now() - stopStart;
      this.#h.trace?.(`migration: background-snapshot: the guest stopped ${downtime.toFixed(1)} ms (device state ${saved.length} B); its RAM goes as it was then while it runs`);
      await this.#sendAll(w);
      writeSectionPart(w, 'end', ramEntry.sectionId);
      await ram.complete(w);
      writeSectionFooter(w, ramEntry.sectionId);
      for (const chunk of saved.chunks) w.bytes(chunk);
      writeEof(w);
      writeVmdesc(w, { page_size: PAGE_SIZE, devices: [...saved.devices] });
      await w.drain();
      if (w.error) throw w.error;
      await this.#h.io.waitDelivered(w);
      await w.close();
      if (w.error) throw w.error;
      return downtime;
    } finally {
      this.#stop();
    }
  }

  #ramSectionId = 0;

  /** Writes of the guest held until their page (and its 2 MiB region) had gone ahead of its turn. */
  get writesHeld(): number {
    return this.#writesHeld;
  }

  /**
   * The guest is stopped: this is the moment the snapshot holds. Every block is
   * write-protected; on a kernel that cannot protect pages never touched, those are
   * mapped (read) first, as QEMU's ram_block_populate_read.
   */
  #protect(): void {
    const uffd = Userfaultfd.open({ writeProtect: true });
    this.#uffd = uffd;
    this.#regionSent = this.#h.memory.map((b) => new Uint16Array(Math.ceil(b.size / PAGE_SIZE / REGION_PAGES)));
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
  async #sendAll(w: StreamWriter): Promise<void> {
    const { ram, limiter } = this.#h;
    while (ram.stats.remainingPages > 0) {
      this.#h.checkCancelled();
      if (w.error) throw w.error;
      this.#takeFaults();
      const held = this.#h.io.unsent() > QUEUE_BYTES || limiter.exceeded();
      if (held && !ram.requests.queued) {
        // Until the socket drains or the cap's window ends — or at once for a write held.
        const wait = limiter.exceeded() ? Math.max(1, Math.min(5, limiter.waitMs())) : 1;
        await Promise.race([this.#h.sleep(wait), this.#waitForFault()]);
        continue;
      }
      writeSectionPart(w, 'part', this.#ramSectionId);
      ram.requests.send(w, held ? 0 : BACKGROUND_PAGES);
      writeSectionFooter(w, this.#ramSectionId);
      // Copied into the stream's buffer: the guest may write them from now on.
      this.#release(ram.requests.takeSent());
      await this.#h.io.flush(w);
      this.#h.updateCounters(w);
      // A macrotask boundary: QMP commands, timers and the fault waits come in here.
      await this.#h.sleep(0);
    }
  }

  /** Let go of all of RAM (whatever happened): no vCPU stays waiting on a write. */
  #stop(): void {
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
      // The page first, then the rest of its region: it is let go with them.
      const page = Number((fault.address - BigInt(memory[b]!.hostAddress!)) / BigInt(PAGE_SIZE));
      const ram = this.#h.ram;
      ram.requests.queueWrite(b, page);
      const first = page - (page % REGION_PAGES);
      const end = Math.min(first + REGION_PAGES, memory[b]!.size / PAGE_SIZE);
      for (let p = first; p < end; p++) if (p !== page) ram.requests.queueWrite(b, p);
    }
  }

  /** Count the pages sent (block index and page, in pairs); un-protect each region once all of its pages have gone. */
  #release(sent: readonly number[]): void {
    const uffd = this.#uffd!;
    const memory = this.#h.memory;
    for (let i = 0; i < sent.length; i += 2) {
      const b = sent[i]!;
      const region = Math.floor(sent[i + 1]! / REGION_PAGES);
      const counts = this.#regionSent[b]!;
      const size = memory[b]!.size;
      const pages = Math.min(REGION_PAGES, size / PAGE_SIZE - region * REGION_PAGES);
      counts[region] = counts[region]! + 1;
      if (counts[region] !== pages) continue;
      const offset = region * REGION_PAGES * PAGE_SIZE;
      uffd.writeProtect(BigInt(memory[b]!.hostAddress!) + BigInt(offset), pages * PAGE_SIZE, false);
    }
  }
}
