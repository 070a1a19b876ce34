// The end of a pre-copy switchover once the downtime guard let it go on (QEMU's
// qemu_savevm_state_complete_precopy and the rest of migration_completion): END of each
// iterative section, the device state, EOF and the vmdesc; then every byte out and taken
// by the destination, its SHUT 0 where there is a return path, and the channels closed.
// The guest's downtime ends before the close (`end`).

import { MigrationError, errorMessage } from '../errors.js';
import { PAGE_SIZE } from '../hypervisor/types.js';
import { writeEof, writeSectionFooter, writeSectionPart, writeSectionStart, writeVmdesc, type VmdescDevice } from '../stream/format.js';
import type { StreamWriter } from '../stream/writer.js';
import type { MultifdSender } from './multifd-send.js';
import type { OutgoingDelivery } from './outgoing-delivery.js';
import { refusedByDestination, type SourceReturnPath } from './return-path.js';
import type { SaveVmRegistry } from './savevm.js';
import type { SavedDevices } from './switchover-guard.js';

export interface CompletionInput {
  readonly registry: SaveVmRegistry;
  readonly io: OutgoingDelivery;
  /** The device state the guard saved ahead, into memory; without it the devices are saved now. */
  readonly saved?: SavedDevices;
  readonly returnPath?: SourceReturnPath;
  /** Rejects on migrate_cancel: the wait for SHUT ends with it. */
  readonly cancelSignal: Promise<never>;
  readonly now: () => number;
  /** For the account of where the time went: when the migration started, the stop began and the vCPUs were stopped (engine clock), and the bytes written by then. */
  readonly startTime: number;
  readonly stopStart: number;
  readonly pausedAt: number;
  readonly bytesAtStop: number;
  readonly trace?: (message: string) => void;
}

/**
 * Returns the end of the downtime (engine clock): every byte out, the destination's answer
 * in. Throws when the migration failed: nothing has told the destination it may run the guest.
 */
export async function completeStream(w: StreamWriter, c: CompletionInput): Promise<number> {
  const { registry, io, saved, now } = c;
  for (const { sectionId, handler } of registry.iterative) {
    writeSectionPart(w, 'end', sectionId);
    await handler.complete(w);
    writeSectionFooter(w, sectionId);
  }
  const ramDoneAt = now();
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
  const devicesDoneAt = now();
  const deviceMs = (saved?.ms ?? 0) + (devicesDoneAt - ramDoneAt);
  await w.drain();
  if (w.error) throw w.error;
  await io.multifd?.drain();
  const drainedAt = now();
  await io.waitDelivered(w);
  const deliveredAt = now();
  let acknowledgedAt: number | undefined;
  if (c.returnPath) {
    // The destination says whether it loaded everything; until then a failure on either
    // side (or a cancel) runs this guest again. QEMU's downtime includes this wait.
    const shut = await Promise.race([c.returnPath.shut, c.cancelSignal]);
    if (shut !== 0) throw new MigrationError(refusedByDestination(shut));
    acknowledgedAt = now();
  }
  // Every byte is out: the destination will start the guest. A cancel that arrives now
  // is too late — running the source again would leave two copies running.
  // Without a return path the downtime ends with the last byte flushed (ARCHITECTURE.md)
  // and taken from the socket's queue, as QEMU's ends before it closes the channel —
  // closing `exec:` waits for the command to exit, which is no part of the guest's downtime.
  const end = now();
  // The migration has succeeded only once the channel closed cleanly (exec: status 0) —
  // unless the destination already said it has everything: it may run the guest now, so
  // this one must not run again whatever closing says.
  try {
    // The multifd channels end first: the destination finishes on the main stream's EOF.
    await io.multifd?.close();
    await w.close();
    if (w.error) throw w.error;
  } catch (err) {
    if (acknowledgedAt === undefined) throw err;
    c.trace?.(`migration: closing the channel after the destination's SHUT 0 failed (${errorMessage(err)}); the migration stands`);
  }
  const closedAt = now();
  const { stopStart, pausedAt } = c;
  c.trace?.(
    `migration: completed in ${(end - c.startTime).toFixed(1)} ms, downtime ${(end - stopStart).toFixed(1)} ms ` +
      `(stopping the vCPUs ${(pausedAt - stopStart).toFixed(1)} ms, the last RAM ${(ramDoneAt - pausedAt).toFixed(1)} ms, ` +
      `device state ${deviceMs.toFixed(1)} ms, the last flush ${(drainedAt - devicesDoneAt).toFixed(1)} ms, ` +
      `the destination taking the bytes still queued ${(deliveredAt - drainedAt).toFixed(1)} ms` +
      `${acknowledgedAt === undefined ? '' : `, the destination's SHUT ${(acknowledgedAt - drainedAt).toFixed(1)} ms`}; ` +
      `${io.written(w) - c.bytesAtStop} B after the stop; then closing the channel ${(closedAt - end).toFixed(1)} ms), ` +
      `${io.written(w)} B in all, ${w.bytesByReference} B of it from guest RAM by reference${multifdSummary(io.multifd)}`,
  );
  return end;
}

/** What the multifd channels carried. */
function multifdSummary(mf: MultifdSender | undefined): string {
  if (mf === undefined) return '';
  const compressed = mf.compressedFrom > 0 ? `, ${mf.compressedFrom} B of them compressed to ${mf.compressedTo} B` : '';
  return ` (the main stream; ${mf.packets} multifd packets on ${mf.channels} channels carried ${mf.pages} pages${compressed})`;
}
