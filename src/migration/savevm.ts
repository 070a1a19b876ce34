// The savevm handler table (QEMU's savevm_state.handlers): every piece of state that
// goes into a stream registers here under an idstr + instance, and gets a section id in
// registration order. RAM is one iterative handler; devices are FULL-section handlers.

import { MigrationError } from '../errors.js';
import type { StreamReader } from '../stream/reader.js';
import type { StreamWriter } from '../stream/writer.js';
import type { VmdescDevice } from '../stream/format.js';

export interface SaveVmHandler {
  readonly idstr: string;
  readonly instanceId: number;
  /** The version this side writes, and the newest it loads. */
  readonly version: number;
  /** The oldest stream version load() still accepts. */
  readonly minimumVersion: number;
  /**
   * Iterative handlers only (those with `iterate`): the START section's data, sent at
   * setup (RAM: the block list, and dirty logging on).
   */
  setup?(w: StreamWriter): Promise<void>;
  /** Cheap estimate of the bytes still to send (QEMU's pending estimate). */
  pending?(): number;
  /** Exact figure, syncing the dirty log first (QEMU's pending exact). */
  pendingExact?(): number;
  /** One PART section's data; returns once the rate limit or its time slice says stop. */
  iterate?(w: StreamWriter): Promise<void>;
  /**
   * With the guest stopped: an iterative handler sends the rest (END section); any other
   * writes its FULL section and returns its vmdesc entry.
   */
  complete(w: StreamWriter): Promise<VmdescDevice | undefined>;
  /**
   * Source, at setup, non-iterative handlers: encode a stand-in for the state into nothing,
   * so the code complete() runs with the guest stopped is compiled by then. No side effects.
   */
  warmUp?(): void;
  /** Destination: read one section's data (START/PART/END/FULL) of stream version `versionId`. */
  load(r: StreamReader, versionId: number, section: string): Promise<void>;
  /** Destination, after EOF with every section read: install what load() kept aside. */
  commit?(): void;
  /** Both sides, success or not: release what setup or load took (dirty logging off). */
  cleanup?(): void;
}

export interface SaveVmEntry {
  readonly sectionId: number;
  readonly handler: SaveVmHandler;
}

export class SaveVmRegistry {
  readonly #entries: SaveVmEntry[] = [];

  /** Add a handler; its section id is its position, as QEMU assigns them. */
  register(handler: SaveVmHandler): number {
    if (this.find(handler.idstr, handler.instanceId)) {
      throw new MigrationError(`Cannot register savevm handler "${handler.idstr}" instance ${handler.instanceId}: already registered`);
    }
    if (handler.idstr.length === 0 || handler.idstr.length > 255) {
      throw new MigrationError(`Cannot register savevm handler "${handler.idstr}": an idstr is 1 to 255 bytes`);
    }
    const sectionId = this.#entries.length;
    this.#entries.push({ sectionId, handler });
    return sectionId;
  }

  get entries(): readonly SaveVmEntry[] {
    return this.#entries;
  }

  get iterative(): readonly SaveVmEntry[] {
    return this.#entries.filter((e) => e.handler.iterate !== undefined);
  }

  get nonIterative(): readonly SaveVmEntry[] {
    return this.#entries.filter((e) => e.handler.iterate === undefined);
  }

  find(idstr: string, instanceId: number): SaveVmEntry | undefined {
    return this.#entries.find((e) => e.handler.idstr === idstr && e.handler.instanceId === instanceId);
  }

  cleanupAll(): void {
    for (const { handler } of this.#entries) handler.cleanup?.();
  }
}
