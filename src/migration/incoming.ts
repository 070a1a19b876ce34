// The destination side: read the header, dispatch each section to the handler
// registered under its idstr + instance, check footers and versions, and only after EOF
// — the whole stream read and checked — install device state. Errors name the section
// and the byte offset.

import { StreamFormatError } from '../errors.js';
import type { StreamReader } from '../stream/reader.js';
import { readHeader, readSectionFooter, readSectionHeader, readVmdesc } from '../stream/format.js';
import type { Vmdesc } from '../stream/format.js';
import { precopyCommand, type PrecopyCommand } from '../stream/return-path.js';
import { formatUuid } from '../uuid.js';
import type { SaveVmEntry, SaveVmRegistry } from './savevm.js';

export interface LoadedStream {
  readonly machineType: string;
  readonly vmdesc: Vmdesc | null;
  readonly sections: number;
}

/**
 * Read a whole stream into the registry's handlers, then commit them. Throws
 * StreamFormatError / StreamTruncatedError (from the reader) before anything is
 * committed if the stream is not complete and well-formed.
 */
export async function loadVmStream(
  r: StreamReader,
  registry: SaveVmRegistry,
  localMachineType: string,
  /** Told of each command between sections (the return path's); without it a command is refused. */
  onCommand?: (command: PrecopyCommand, offset: number) => void,
  /** This VM's UUID, when it was given one: a stream that carries another (validate-uuid) is refused. */
  localUuid?: Uint8Array,
): Promise<LoadedStream> {
  const { machineType, uuid } = await readHeader(r);
  if (machineType !== localMachineType) {
    // QEMU's words for the same check in its configuration section.
    throw new StreamFormatError(`Machine type received is '${machineType}' and local is '${localMachineType}'`, r.offset, 'configuration');
  }
  // As QEMU's vmstate_uuid_post_load: checked only where this side has a UUID of its own.
  if (uuid !== undefined && localUuid !== undefined && formatUuid(uuid) !== formatUuid(localUuid)) {
    throw new StreamFormatError(`UUID received is ${formatUuid(uuid)} and local is ${formatUuid(localUuid)}`, r.offset, 'configuration');
  }
  const open = new Map<number, { entry: SaveVmEntry; versionId: number }>();
  let sections = 0;
  for (;;) {
    const header = await readSectionHeader(r);
    if (header.kind === 'eof') break;
    if (header.kind === 'command') {
      const command = precopyCommand(header.command, header.data, header.offset);
      if (!onCommand) {
        throw new StreamFormatError(`Command 0x${header.command.toString(16).padStart(4, '0')} at offset ${header.offset}: this stream cannot be answered (no return path here)`, header.offset, 'command');
      }
      onCommand(command, header.offset);
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
    await entry.handler.load(r, versionId, name);
    await readSectionFooter(r, header.sectionId, name);
    sections++;
  }
  // A stream may end at EOF (older writers); a vmdesc after it is read and checked when present.
  const vmdesc = await readVmdesc(r);
  for (const { handler } of registry.entries) handler.commit?.();
  return { machineType, vmdesc, sections };
}
