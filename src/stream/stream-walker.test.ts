import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError, StreamTruncatedError } from '../errors.js';
import { writeEof, writeHeader, writeSectionFooter, writeSectionPart, writeSectionStart, writeVmdesc } from './format.js';
import { walkStream } from './stream-walker.js';
import type { OpenedSection, SectionKind, SectionLoader } from './stream-walker.js';
import type { StreamWriter } from './writer.js';
import { readerOf, writtenBytes } from './testing.js';

/** Sections whose data is one byte; the loader records what it was called with. */
function recorder(log: string[]): (s: OpenedSection) => SectionLoader {
  return (s) => {
    if (s.idstr === 'unknown') throw new StreamFormatError(`Unknown savevm section "${s.idstr}"`, 0, s.idstr);
    return {
      load: async (r, kind: SectionKind, section, name) => {
        await r.ensure(1, name);
        log.push(`${kind} ${section.sectionId} ${name} v${section.versionId} = ${r.u8()}`);
      },
    };
  };
}

async function stream(body: (w: StreamWriter) => void): Promise<Uint8Array> {
  return writtenBytes((w) => {
    writeHeader(w, 'pc');
    body(w);
  });
}

const GOOD = (w: StreamWriter): void => {
  writeSectionStart(w, 'start', 0, 'ram', 0, 4);
  w.u8(1);
  writeSectionFooter(w, 0);
  writeSectionPart(w, 'part', 0);
  w.u8(2);
  writeSectionFooter(w, 0);
  writeSectionPart(w, 'end', 0);
  w.u8(3);
  writeSectionFooter(w, 0);
  writeSectionStart(w, 'full', 1, 'serial', 0, 2);
  w.u8(4);
  writeSectionFooter(w, 1);
  writeEof(w);
  writeVmdesc(w, { page_size: 4096, devices: [] });
};

test('walker: dispatches every section kind in order and returns header, sections and vmdesc', async () => {
  const bytes = await stream(GOOD);
  const log: string[] = [];
  const done: string[] = [];
  const result = await walkStream(readerOf(bytes, 3), {
    header: (h) => void log.push(`header ${h.machineType}`),
    openSection: recorder(log),
    sectionDone: (s, kind) => void done.push(`${kind}:${s.idstr}`),
  });
  assert.deepEqual(log, ['header pc', 'start 0 ram v4 = 1', 'part 0 ram v4 = 2', 'end 0 ram v4 = 3', 'full 1 serial v2 = 4']);
  assert.deepEqual(done, ['start:ram', 'part:ram', 'end:ram', 'full:serial']);
  assert.equal(result.header.machineType, 'pc');
  assert.deepEqual(result.sections.map((s) => s.idstr), ['ram', 'serial']);
  assert.deepEqual(result.vmdesc, { page_size: 4096, devices: [] });
  assert.equal(result.length, bytes.length);
});

test('walker: a stream that ends right after EOF has no vmdesc', async () => {
  const bytes = await stream((w) => writeEof(w));
  const result = await walkStream(readerOf(bytes), { openSection: recorder([]) });
  assert.equal(result.vmdesc, null);
});

test('walker: framing errors are StreamFormatErrors naming the section', async () => {
  const cases: Array<[string, (w: StreamWriter) => void, RegExp]> = [
    ['PART for an unknown id', (w) => { writeSectionPart(w, 'part', 9); w.u8(0); }, /Unknown section id 9 in a PART/],
    ['PART after END', (w) => {
      writeSectionStart(w, 'start', 0, 'ram', 0, 4); w.u8(0); writeSectionFooter(w, 0);
      writeSectionPart(w, 'end', 0); w.u8(0); writeSectionFooter(w, 0);
      writeSectionPart(w, 'part', 0); w.u8(0);
    }, /continues at offset \d+ after it ended/],
    ['PART of a FULL section', (w) => {
      writeSectionStart(w, 'full', 0, 'dev', 0, 1); w.u8(0); writeSectionFooter(w, 0);
      writeSectionPart(w, 'part', 0); w.u8(0);
    }, /after it ended/],
    ['an id opened twice', (w) => {
      writeSectionStart(w, 'full', 0, 'a', 0, 1); w.u8(0); writeSectionFooter(w, 0);
      writeSectionStart(w, 'full', 0, 'b', 0, 1);
    }, /already opened by "a"/],
    ['footer of another section', (w) => { writeSectionStart(w, 'full', 3, 'dev', 0, 1); w.u8(0); writeSectionFooter(w, 4); }, /read 4, expected 3/],
    ['an unknown section idstr', (w) => { writeSectionStart(w, 'full', 0, 'unknown', 0, 1); }, /Unknown savevm section "unknown"/],
    ['bytes after the vmdesc', (w) => { writeEof(w); writeVmdesc(w, { page_size: 4096, devices: [] }); w.u8(0); }, /Unexpected bytes after the vmdesc/],
    ['garbage after EOF', (w) => { writeEof(w); w.u8(0x42); w.be32(0); }, /Expected the vmdesc/],
  ];
  for (const [what, body, message] of cases) {
    const bytes = await stream(body);
    await assert.rejects(walkStream(readerOf(bytes), { openSection: recorder([]) }), (e: unknown) => {
      assert.ok(e instanceof StreamFormatError, `${what}: ${String(e)}`);
      assert.match(e.message, message, what);
      return true;
    });
  }
});

test('walker: truncation at every offset is a StreamTruncatedError', async () => {
  const bytes = await stream(GOOD);
  await walkStream(readerOf(bytes), { openSection: recorder([]) });
  // Cut exactly after EOF, the stream is complete without its optional vmdesc.
  const eofEnd = bytes.length - (1 + 4 + JSON.stringify({ page_size: 4096, devices: [] }).length);
  for (let n = 0; n < bytes.length; n++) {
    const walking = walkStream(readerOf(bytes.subarray(0, n), 2), { openSection: recorder([]) });
    if (n === eofEnd) {
      assert.equal((await walking).vmdesc, null);
      continue;
    }
    await assert.rejects(walking, (e: unknown) => {
      assert.ok(e instanceof StreamTruncatedError, `cut at ${n}: ${String(e)}`);
      return true;
    });
  }
});
