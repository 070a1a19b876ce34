import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MigrationError, StreamFormatError } from '../errors.js';
import { channelFromBytes, createCollectingChannel } from '../stream/memory-channel.js';
import { writeEof, writeHeader, writeSectionFooter, writeSectionPart, writeSectionStart, writeVmdesc } from '../stream/format.js';
import { StreamReader } from '../stream/reader.js';
import { StreamWriter } from '../stream/writer.js';
import { loadVmStream } from './incoming.js';
import { SaveVmRegistry } from './savevm.js';
import type { SaveVmHandler } from './savevm.js';

/** A handler whose section data is one u8; it records what it loaded and when it was committed. */
function byteHandler(idstr: string, opts: { iterative?: boolean; version?: number; minimumVersion?: number } = {}) {
  const log: string[] = [];
  const handler: SaveVmHandler = {
    idstr,
    instanceId: 0,
    version: opts.version ?? 1,
    minimumVersion: opts.minimumVersion ?? 1,
    ...(opts.iterative ? { iterate: async () => {}, setup: async () => {} } : {}),
    complete: async () => undefined,
    load: async (r, versionId) => {
      await r.ensure(1, idstr);
      log.push(`load v${versionId} ${r.u8()}`);
    },
    commit: () => log.push('commit'),
  };
  return { handler, log };
}

async function stream(build: (w: StreamWriter) => void): Promise<StreamReader> {
  const sink = createCollectingChannel();
  const w = new StreamWriter(sink);
  writeHeader(w, 'pc-i440fx-7.2');
  build(w);
  await w.flush();
  return new StreamReader(channelFromBytes(sink.bytes(), { chunkSize: 7 }));
}

test('sections go to the handler under their idstr + instance, PARTs to the one STARTed; commit after EOF', async () => {
  const ram = byteHandler('ram', { iterative: true, version: 4, minimumVersion: 4 });
  const dev = byteHandler('dev', { version: 3, minimumVersion: 1 });
  const registry = new SaveVmRegistry();
  assert.equal(registry.register(ram.handler), 0);
  assert.equal(registry.register(dev.handler), 1);
  const r = await stream((w) => {
    writeSectionStart(w, 'start', 7, 'ram', 0, 4); w.u8(1); writeSectionFooter(w, 7);
    writeSectionPart(w, 'part', 7); w.u8(2); writeSectionFooter(w, 7);
    writeSectionPart(w, 'end', 7); w.u8(3); writeSectionFooter(w, 7);
    writeSectionStart(w, 'full', 9, 'dev', 0, 2); w.u8(4); writeSectionFooter(w, 9);
    writeEof(w);
    writeVmdesc(w, { page_size: 4096, devices: [] });
  });
  const loaded = await loadVmStream(r, registry, 'pc-i440fx-7.2');
  assert.equal(loaded.sections, 4);
  assert.deepEqual(loaded.vmdesc, { page_size: 4096, devices: [] });
  assert.deepEqual(ram.log, ['load v4 1', 'load v4 2', 'load v4 3', 'commit']);
  assert.deepEqual(dev.log, ['load v2 4', 'commit'], 'an older version within the minimum loads');
});

test('malformed section sequences are refused before anything is committed', async () => {
  const cases: Array<[string, (w: StreamWriter) => void, RegExp]> = [
    ['PART before START', (w) => { writeSectionPart(w, 'part', 3); w.u8(0); writeSectionFooter(w, 3); }, /section id 3 was not started/],
    ['START for a FULL-only handler', (w) => { writeSectionStart(w, 'start', 1, 'dev', 0, 1); w.u8(0); writeSectionFooter(w, 1); }, /a START section for a non-iterative handler/],
    ['section id used twice', (w) => {
      writeSectionStart(w, 'full', 1, 'dev', 0, 1); w.u8(0); writeSectionFooter(w, 1);
      writeSectionStart(w, 'full', 1, 'dev', 0, 1); w.u8(0); writeSectionFooter(w, 1);
    }, /section id 1 was already used/],
    ['PART for a FULL section', (w) => {
      writeSectionStart(w, 'full', 1, 'dev', 0, 1); w.u8(0); writeSectionFooter(w, 1);
      writeSectionPart(w, 'part', 1); w.u8(0); writeSectionFooter(w, 1);
    }, /section id 1 was not started/],
    ['unknown instance', (w) => { writeSectionStart(w, 'full', 1, 'dev', 1, 1); }, /Unknown savevm section or instance 'dev' 1/],
    ['footer of another section', (w) => { writeSectionStart(w, 'full', 1, 'dev', 0, 1); w.u8(0); writeSectionFooter(w, 2); }, /Mismatched section id in footer for "dev"/],
  ];
  for (const [what, build, pattern] of cases) {
    const dev = byteHandler('dev');
    const registry = new SaveVmRegistry();
    registry.register(dev.handler);
    const r = await stream((w) => { build(w); writeEof(w); });
    await assert.rejects(loadVmStream(r, registry, 'pc-i440fx-7.2'), (err: unknown) => {
      assert.ok(err instanceof StreamFormatError, what);
      assert.match(err.message, pattern, what);
      assert.ok(err.offset > 0, what);
      return true;
    });
    assert.ok(!dev.log.includes('commit'), `${what}: nothing committed`);
  }
});

test('the registry refuses a second handler under the same idstr + instance, and bad idstrs', () => {
  const registry = new SaveVmRegistry();
  registry.register(byteHandler('dev').handler);
  assert.throws(() => registry.register(byteHandler('dev').handler), (err: unknown) => err instanceof MigrationError && /"dev" instance 0: already registered/.test(err.message));
  assert.throws(() => registry.register(byteHandler('').handler), /1 to 255 bytes/);
  assert.throws(() => registry.register(byteHandler('x'.repeat(256)).handler), /1 to 255 bytes/);
  const iter = byteHandler('ram', { iterative: true });
  registry.register(iter.handler);
  assert.deepEqual(registry.iterative.map((e) => [e.sectionId, e.handler.idstr]), [[1, 'ram']]);
  assert.deepEqual(registry.nonIterative.map((e) => [e.sectionId, e.handler.idstr]), [[0, 'dev']]);
});
