// Walks a whole incoming stream (QEMU's qemu_loadvm_state): header, then sections with
// their footers until EOF, then the optional vmdesc — checking the framing and handing
// each section's data to the loader the caller picks for its idstr and instance.

import { StreamFormatError } from '../errors.js';
import { readHeader, readSectionFooter, readSectionHeader, readVmdesc } from './format.js';
import type { StreamHeader, Vmdesc } from './format.js';
import type { StreamReader } from './reader.js';
import { streamCommand } from './return-path.js';

export type SectionKind = 'start' | 'part' | 'end' | 'full';

export interface OpenedSection {
  readonly sectionId: number;
  readonly idstr: string;
  readonly instanceId: number;
  readonly versionId: number;
}

/** Reads one section's data; called for START/FULL and again for each PART/END of the same section. */
export interface SectionLoader {
  load(r: StreamReader, kind: SectionKind, section: OpenedSection, name: string): Promise<void>;
}

export interface StreamWalkCallbacks {
  /** After the header, before any section: refuse a machine type or configuration here. */
  header?(header: StreamHeader): void | Promise<void>;
  /** START/FULL: the loader for this section; throw when no handler has this idstr/instance. */
  openSection(section: OpenedSection): SectionLoader;
  /** Called after each section's data and footer were read. */
  sectionDone?(section: OpenedSection, kind: SectionKind): void | Promise<void>;
}

export interface StreamWalkResult {
  readonly header: StreamHeader;
  /** Sections opened, in stream order. */
  readonly sections: readonly OpenedSection[];
  readonly vmdesc: Vmdesc | null;
  /** Bytes read, which is the whole stream. */
  readonly length: number;
}

/** Sections a stream may open; far more than any machine registers. */
export const MAX_SECTIONS = 4096;

/**
 * Read a complete stream. Every failure is a typed error naming the section and offset:
 * an unknown section id in PART/END, data after END, a section id opened twice, a footer
 * that does not match, bytes after the vmdesc, or truncation anywhere.
 */
export async function walkStream(r: StreamReader, callbacks: StreamWalkCallbacks): Promise<StreamWalkResult> {
  const header = await readHeader(r);
  await callbacks.header?.(header);
  const open = new Map<number, { section: OpenedSection; loader: SectionLoader; ended: boolean }>();
  const sections: OpenedSection[] = [];
  for (;;) {
    const at = r.offset;
    const h = await readSectionHeader(r);
    if (h.kind === 'eof') break;
    if (h.kind === 'command') {
      // A saved stream may carry the return-path commands; nobody answers them here. A
      // post-copy package is checked for its length and passed over, not walked.
      const command = streamCommand(h.command, h.data, h.offset);
      if (command.type === 'packaged') {
        await r.ensure(command.length, 'command');
        r.bytes(command.length);
      }
      continue;
    }
    let entry;
    if (h.kind === 'start' || h.kind === 'full') {
      if (open.has(h.sectionId)) {
        throw new StreamFormatError(`Section id ${h.sectionId} ("${h.idstr}") at offset ${at} was already opened by "${open.get(h.sectionId)!.section.idstr}"`, at, h.idstr);
      }
      if (open.size >= MAX_SECTIONS) {
        throw new StreamFormatError(`Stream opens more than ${MAX_SECTIONS} sections (offset ${at})`, at, h.idstr);
      }
      const section: OpenedSection = { sectionId: h.sectionId, idstr: h.idstr, instanceId: h.instanceId, versionId: h.versionId };
      entry = { section, loader: callbacks.openSection(section), ended: h.kind === 'full' };
      open.set(h.sectionId, entry);
      sections.push(section);
    } else {
      entry = open.get(h.sectionId);
      if (!entry) {
        throw new StreamFormatError(`Unknown section id ${h.sectionId} in a ${h.kind.toUpperCase()} section at offset ${at}`, at, 'section header');
      }
      if (entry.ended) {
        throw new StreamFormatError(`Section "${entry.section.idstr}" (id ${h.sectionId}) continues at offset ${at} after it ended`, at, entry.section.idstr);
      }
      if (h.kind === 'end') entry.ended = true;
    }
    const name = entry.section.idstr;
    await entry.loader.load(r, h.kind, entry.section, name);
    await readSectionFooter(r, entry.section.sectionId, name);
    await callbacks.sectionDone?.(entry.section, h.kind);
  }
  const vmdesc = await readVmdesc(r);
  if (vmdesc !== null && !(await r.atEnd())) {
    throw new StreamFormatError(`Unexpected bytes after the vmdesc at offset ${r.offset}`, r.offset, 'vmdesc');
  }
  return { header, sections, vmdesc, length: r.offset };
}
