// What an outgoing migration is given (OutgoingOptions: the VM, how to connect, the
// capabilities that shape it) and what it reports (OutgoingFigures: the times and rates
// query-migrate shows for the source).

import type { Channel } from '../transport/channel.js';
import type { MultifdCompression } from '../stream/multifd-compression.js';
import type { MigrationParameters } from './parameters.js';
import type { RamHandler } from './ram.js';
import type { RateLimiter } from './rate-limiter.js';
import type { SaveVmRegistry } from './savevm.js';
import type { MigrationStateMachine } from './states.js';
import type { MigrationVm } from './vm.js';

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
  /**
   * What the configuration section carries besides the machine type: the `validate-uuid`
   * capability's UUID, for the destination to check, and the capabilities the destination
   * must have on too (QEMU 7.2 validates x-ignore-shared).
   */
  readonly header?: { readonly uuid?: Uint8Array; readonly capabilities?: readonly string[] };
  /** Diagnostics (the Node side wires util.debuglog('ferry') here). */
  readonly trace?: (message: string) => void;
}

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
