// The destination side: read the header, dispatch each section to the handler
// registered under its idstr + instance, check footers and versions, and only after EOF
// — the whole stream read and checked — install device state. Errors name the section
// and the byte offset.

import { StreamFormatError, StreamTruncatedError, TransportError } from '../errors.js';
import { StreamReader } from '../stream/reader.js';
import { readHeader, readSectionFooter, readSectionHeader, readVmdesc } from '../stream/format.js';
import type { Vmdesc } from '../stream/format.js';
import { channelFromBytes } from '../stream/memory-channel.js';
import { streamCommand, type BlockRange, type ReturnPathCommand, type StreamCommand } from '../stream/return-path.js';
import { formatUuid } from '../uuid.js';
import type { SaveVmEntry, SaveVmRegistry } from './savevm.js';
import { MIGRATION_CAPABILITIES } from './parameters.js';

export interface LoadedStream {
  readonly machineType: string;
  readonly vmdesc: Vmdesc | null;
  readonly sections: number;
  /** The guest was started before the end of the stream (post-copy's RUN). */
  readonly startedEarly: boolean;
}

/**
 * What a post-copy stream's commands ask of the destination (postcopy-incoming.ts). Each
 * throws to refuse — the load then fails with the offset.
 */
export interface PostcopyLoadHooks {
  /** POSTCOPY_ADVISE with the source's page sizes: may this side do post-copy? */
  advise(pageSizeSummary: number, targetPageSize: number, offset: number): void;
  discard(idstr: string, ranges: readonly BlockRange[], offset: number): void | Promise<void>;
  /** From here RAM pages are placed, not written (the guest may run before they all arrive). */
  listen(offset: number): void;
  /** The device state is loaded and installed: run the guest. */
  run(offset: number): void;
  /**
   * Post-copy recovery (optional): the connection broke after RUN. Resolves with a reader
   * of the connection the source resumes on (migrate-recover); rejects to fail the load.
   */
  paused?(cause: Error): Promise<StreamReader>;
  /** RECV_BITMAP on the resumed connection: send which pages of `idstr` have arrived. */
  recvBitmap?(idstr: string, offset: number): void;
  /** POSTCOPY_RESUME: acknowledge, and pages flow again. */
  resume?(offset: number): void;
}

export interface LoadOptions {
  /** Told of OPEN_RETURN_PATH and PING (the return path's); without it they are refused. */
  readonly onCommand?: (command: ReturnPathCommand, offset: number) => void;
  /** This VM's UUID, when it was given one: a stream that carries another (validate-uuid) is refused. */
  readonly localUuid?: Uint8Array;
  /** Present when this side has postcopy-ram on. */
  readonly postcopy?: PostcopyLoadHooks;
  /** This side's x-ignore-shared: the configuration's capabilities must say the same. */
  readonly ignoreShared?: boolean;
}

/** What one load carries from the stream into its packages. */
interface LoadContext {
  readonly registry: SaveVmRegistry;
  readonly options: LoadOptions;
  readonly open: Map<number, { entry: SaveVmEntry; versionId: number }>;
  sections: number;
  /** Where a post-copy stream has got to (savevm.c's PostcopyState). */
  postcopy: 'none' | 'advised' | 'discarding' | 'listening' | 'running';
  committed: boolean;
}

/**
 * Read a whole stream into the registry's handlers, then commit them. Throws
 * StreamFormatError / StreamTruncatedError (from the reader) before anything is
 * committed if the stream is not complete and well-formed — except after a post-copy
 * RUN: the device state was committed then, and the guest runs while RAM still arrives.
 */
export async function loadVmStream(
  r: StreamReader,
  registry: SaveVmRegistry,
  localMachineType: string,
  options: LoadOptions = {},
): Promise<LoadedStream> {
  const { machineType, uuid, capabilities } = await readHeader(r);
  if (machineType !== localMachineType) {
    // QEMU's words for the same check in its configuration section.
    throw new StreamFormatError(`Machine type received is '${machineType}' and local is '${localMachineType}'`, r.offset, 'configuration');
  }
  // As QEMU's vmstate_uuid_post_load: checked only where this side has a UUID of its own.
  const localUuid = options.localUuid;
  if (uuid !== undefined && localUuid !== undefined && formatUuid(uuid) !== formatUuid(localUuid)) {
    throw new StreamFormatError(`UUID received is ${formatUuid(uuid)} and local is ${formatUuid(localUuid)}`, r.offset, 'configuration');
  }
  checkCapabilities(capabilities ?? [], options.ignoreShared === true, r.offset);
  const context: LoadContext = { registry, options, open: new Map(), sections: 0, postcopy: 'none', committed: false };
  await loadSections(r, context, false);
  // A stream may end at EOF (older writers); a vmdesc after it is read and checked when
  // present. Not after post-copy: its source sends none, and waits for this side's SHUT
  // before it closes — waiting for the end of the stream here would wait for ever.
  const vmdesc = context.postcopy === 'running' ? null : await readVmdesc(r);
  if (context.postcopy === 'listening') {
    throw new StreamFormatError(`The stream ended after POSTCOPY_LISTEN without POSTCOPY_RUN`, r.offset, 'command');
  }
  if (!context.committed) commit(context);
  return { machineType, vmdesc, sections: context.sections, startedEarly: context.postcopy === 'running' };
}

function commit(context: LoadContext): void {
  context.committed = true;
  for (const { handler } of context.registry.entries) handler.commit?.();
}

/**
 * Sections and commands until EOF (the stream) or POSTCOPY_RUN (a package: QEMU's
 * LOADVM_QUIT). Returns which ended it.
 */
async function loadSections(r: StreamReader, context: LoadContext, inPackage: boolean): Promise<'eof' | 'run'> {
  for (;;) {
    try {
      return await loadSectionsFrom(r, context, inPackage);
    } catch (err) {
      // After RUN the guest runs here on what has arrived: a broken connection pauses
      // post-copy until the source resumes on a new one (QEMU's postcopy-paused), where
      // this side can recover. Anything else — and a break before RUN — fails the load.
      const postcopy = context.options.postcopy;
      const broken = err instanceof StreamTruncatedError || err instanceof TransportError;
      if (inPackage || context.postcopy !== 'running' || !broken || postcopy?.paused === undefined) throw err;
      r = await postcopy.paused(err);
    }
  }
}

async function loadSectionsFrom(r: StreamReader, context: LoadContext, inPackage: boolean): Promise<'eof' | 'run'> {
  const { registry, open } = context;
  for (;;) {
    if (inPackage && (await r.atEnd())) {
      throw new StreamFormatError(`The package ended at offset ${r.offset} without POSTCOPY_RUN`, r.offset, 'command');
    }
    const header = await readSectionHeader(r);
    if (header.kind === 'eof') {
      if (inPackage) throw new StreamFormatError(`EOF inside a package at offset ${r.offset - 1}`, r.offset - 1, 'command');
      return 'eof';
    }
    if (header.kind === 'command') {
      const command = streamCommand(header.command, header.data, header.offset);
      if (await runCommand(r, context, command, header.offset, inPackage)) return 'run';
      continue;
    }
    let entry: SaveVmEntry;
    let versionId: number;
    if (header.kind === 'start' || header.kind === 'full') {
      const found = registry.find(header.idstr, header.instanceId);
      if (!found) {
        throw new StreamFormatError(`Unknown savevm section or instance '${header.idstr}' ${header.instanceId}`, r.offset, header.idstr);
      }
      const { handler } = found;
      if (header.versionId > handler.version) {
        throw new StreamFormatError(`Cannot load section "${header.idstr}": version ${header.versionId} is newer than ${handler.version}`, r.offset, header.idstr);
      }
      if (header.versionId < handler.minimumVersion) {
        throw new StreamFormatError(`Cannot load section "${header.idstr}": version ${header.versionId} is older than the minimum ${handler.minimumVersion}`, r.offset, header.idstr);
      }
      if (header.kind === 'start' && handler.iterate === undefined && handler.setup === undefined) {
        throw new StreamFormatError(`Cannot load section "${header.idstr}": a START section for a non-iterative handler`, r.offset, header.idstr);
      }
      if (open.has(header.sectionId)) {
        throw new StreamFormatError(`Cannot load section "${header.idstr}": section id ${header.sectionId} was already used`, r.offset, header.idstr);
      }
      if (context.committed) {
        // After RUN only RAM goes on: the device state in use must not change under the guest.
        throw new StreamFormatError(`Cannot load section "${header.idstr}": the guest already runs on the state loaded before POSTCOPY_RUN`, r.offset, header.idstr);
      }
      entry = found;
      versionId = header.versionId;
      if (header.kind === 'start') open.set(header.sectionId, { entry, versionId });
      else open.set(header.sectionId, { entry, versionId: -1 });
    } else {
      const known = open.get(header.sectionId);
      if (!known || known.versionId < 0) {
        throw new StreamFormatError(`Cannot load a ${header.kind.toUpperCase()} section: section id ${header.sectionId} was not started`, r.offset);
      }
      entry = known.entry;
      versionId = known.versionId;
    }
    const name = entry.handler.idstr;
    if (context.postcopy === 'discarding' && entry.handler.iterate !== undefined) {
      // Pages now would land in memory just discarded, outside what post-copy tracks.
      throw new StreamFormatError(`Cannot load section "${name}" between POSTCOPY_RAM_DISCARD and POSTCOPY_LISTEN`, r.offset, name);
    }
    await entry.handler.load(r, versionId, name);
    await readSectionFooter(r, header.sectionId, name);
    context.sections++;
  }
}

/** Carry out one command; true when it was a package's RUN (its loop ends there). */
async function runCommand(r: StreamReader, context: LoadContext, command: StreamCommand, offset: number, inPackage: boolean): Promise<boolean> {
  const { options } = context;
  const postcopy = options.postcopy;
  const wrongState = (name: string): StreamFormatError =>
    new StreamFormatError(`CMD_${name} at offset ${offset} in the wrong post-copy state (${context.postcopy})`, offset, 'command');
  switch (command.type) {
    case 'open-return-path':
    case 'ping':
      if (!options.onCommand) {
        throw new StreamFormatError(`Command ${command.type === 'ping' ? 'PING' : 'OPEN_RETURN_PATH'} at offset ${offset}: this stream cannot be answered (no return path here)`, offset, 'command');
      }
      options.onCommand(command, offset);
      return false;
    case 'postcopy-advise':
      if (context.postcopy !== 'none') throw wrongState('POSTCOPY_ADVISE');
      if (command.pageSizeSummary === undefined || command.targetPageSize === undefined) {
        // The source will not do post-copy of RAM (QEMU sends this for dirty bitmaps alone).
        if (postcopy) throw new StreamFormatError(`CMD_POSTCOPY_ADVISE at offset ${offset} is empty, but postcopy-ram is on here: the source did not turn it on`, offset, 'command');
        return false;
      }
      if (!postcopy) {
        throw new StreamFormatError(`The source asks for post-copy (CMD_POSTCOPY_ADVISE at offset ${offset}), but postcopy-ram is off here: turn it on with migrate-set-capabilities on the destination too`, offset, 'command');
      }
      postcopy.advise(command.pageSizeSummary, command.targetPageSize, offset);
      context.postcopy = 'advised';
      return false;
    case 'postcopy-ram-discard':
      if (!postcopy || (context.postcopy !== 'advised' && context.postcopy !== 'discarding')) throw wrongState('POSTCOPY_RAM_DISCARD');
      await postcopy.discard(command.idstr, command.ranges, offset);
      context.postcopy = 'discarding';
      return false;
    case 'postcopy-listen':
      if (!postcopy || (context.postcopy !== 'advised' && context.postcopy !== 'discarding')) throw wrongState('POSTCOPY_LISTEN');
      postcopy.listen(offset);
      context.postcopy = 'listening';
      return false;
    case 'postcopy-run':
      if (!postcopy || context.postcopy !== 'listening') throw wrongState('POSTCOPY_RUN');
      // Every device section came before RUN (in the package): install them, then run.
      for (const [sectionId, { entry, versionId }] of context.open) {
        if (versionId >= 0 && entry.handler.iterate === undefined) {
          throw new StreamFormatError(`CMD_POSTCOPY_RUN at offset ${offset}: section ${sectionId} ("${entry.handler.idstr}") is still open`, offset, 'command');
        }
      }
      commit(context);
      context.postcopy = 'running';
      postcopy.run(offset);
      return inPackage;
    case 'recv-bitmap':
      if (!postcopy?.recvBitmap || context.postcopy !== 'running') throw wrongState('RECV_BITMAP');
      postcopy.recvBitmap(command.idstr, offset);
      return false;
    case 'postcopy-resume':
      if (!postcopy?.resume || context.postcopy !== 'running') throw wrongState('POSTCOPY_RESUME');
      postcopy.resume(offset);
      return false;
    case 'packaged': {
      if (inPackage) throw new StreamFormatError(`CMD_PACKAGED at offset ${offset} inside a package`, offset, 'command');
      if (!postcopy || (context.postcopy !== 'advised' && context.postcopy !== 'discarding')) throw wrongState('PACKAGED');
      await r.ensure(command.length, 'command');
      const start = r.offset;
      const bytes = r.bytes(command.length);
      const inner = new StreamReader(channelFromBytes(bytes, { description: `the package at offset ${start}` }));
      try {
        await loadSections(inner, context, true);
      } catch (err) {
        // Offsets in the package are counted from its start: name the stream's. A package
        // cut short is no truncated stream (its length said how long it is): a bad one.
        if (err instanceof StreamFormatError || err instanceof StreamTruncatedError) {
          throw new StreamFormatError(`${err.message} (in the package at offset ${start}: offset ${start + err.offset} of the stream)`, start + err.offset, err.section, { cause: err });
        }
        throw err;
      }
      return false;
    }
  }
}

/**
 * QEMU's configuration_validate_capabilities: the capabilities it validates — in 7.2
 * x-ignore-shared alone, which changes the RAM section's format — must be on at both
 * ends or at neither; a name QEMU does not know is refused (get_capability).
 */
function checkCapabilities(received: readonly string[], ignoreShared: boolean, offset: number): void {
  const unknown = received.find((name) => !(MIGRATION_CAPABILITIES as readonly string[]).includes(name));
  if (unknown !== undefined) throw new StreamFormatError(`Received unknown capability ${unknown}`, offset, 'configuration');
  const sent = received.includes('x-ignore-shared');
  if (sent !== ignoreShared) {
    throw new StreamFormatError(`Capability x-ignore-shared is ${ignoreShared ? 'on' : 'off'}, but received capability is ${sent ? 'on' : 'off'}`, offset, 'configuration');
  }
}
