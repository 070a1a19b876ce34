import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MigrationError, StreamFormatError } from '../errors.js';
import { channelFromBytes, createCollectingChannel } from '../stream/memory-channel.js';
import { writeEof, writeHeader, writeSectionFooter, writeSectionPart, writeSectionStart, writeVmdesc } from '../stream/format.js';
import { StreamReader } from '../stream/reader.js';
import { StreamWriter } from '../stream/writer.js';
import { loadVmStream, type PostcopyLoadHooks } from './incoming.js';
import {
  MIG_CMD_PACKAGED, MIG_CMD_POSTCOPY_ADVISE, MIG_CMD_POSTCOPY_LISTEN, MIG_CMD_POSTCOPY_RAM_DISCARD, MIG_CMD_POSTCOPY_RUN,
  be32Bytes, discardData, postcopyAdviseData, writeCommand,
} from '../stream/return-path.js';
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

/** Post-copy hooks that log what the stream asked, in order. */
function postcopyLog(): { hooks: PostcopyLoadHooks; log: string[] } {
  const log: string[] = [];
  return {
    log,
    hooks: {
      advise: (summary, target) => { log.push(`advise ${summary} ${target}`); },
      discard: (idstr, ranges) => { log.push(`discard ${idstr} ${ranges.map((r) => `${r.start}+${r.length}`).join(',')}`); },
      listen: () => { log.push('listen'); },
      run: () => { log.push('run'); },
    },
  };
}

/** The bytes of a package: `build` writes what goes inside. */
async function packaged(w: StreamWriter, build: (inner: StreamWriter) => void): Promise<void> {
  const sink = createCollectingChannel();
  const inner = new StreamWriter(sink);
  build(inner);
  await inner.flush();
  const bytes = sink.bytes();
  writeCommand(w, MIG_CMD_PACKAGED, be32Bytes(bytes.byteLength));
  w.bytes(bytes);
}

test('post-copy: ADVISE, DISCARD, a package of LISTEN, device state and RUN, then RAM to EOF — the device state is committed at RUN, before the rest of RAM', async () => {
  const ram = byteHandler('ram', { iterative: true, version: 4, minimumVersion: 4 });
  const dev = byteHandler('dev');
  const registry = new SaveVmRegistry();
  registry.register(ram.handler);
  registry.register(dev.handler);
  const { hooks, log } = postcopyLog();
  // The package is built first: the stream writer is synchronous.
  const sink = createCollectingChannel();
  const w = new StreamWriter(sink);
  writeHeader(w, 'pc-i440fx-7.2');
  writeCommand(w, MIG_CMD_POSTCOPY_ADVISE, postcopyAdviseData(4096, 4096));
  writeSectionStart(w, 'start', 0, 'ram', 0, 4); w.u8(1); writeSectionFooter(w, 0);
  writeCommand(w, MIG_CMD_POSTCOPY_RAM_DISCARD, discardData('pc.ram', [{ start: 4096, length: 8192 }]));
  await packaged(w, (inner) => {
    writeCommand(inner, MIG_CMD_POSTCOPY_LISTEN);
    writeSectionStart(inner, 'full', 1, 'dev', 0, 1); inner.u8(9); writeSectionFooter(inner, 1);
    writeCommand(inner, MIG_CMD_POSTCOPY_RUN);
  });
  writeSectionPart(w, 'part', 0); w.u8(2); writeSectionFooter(w, 0);
  writeSectionPart(w, 'end', 0); w.u8(3); writeSectionFooter(w, 0);
  writeEof(w);
  await w.flush();
  // Hooks log into the same list as the handlers, to see the order.
  const order: string[] = [];
  const loaded = await loadVmStream(new StreamReader(channelFromBytes(sink.bytes(), { chunkSize: 5 })), registry, 'pc-i440fx-7.2', {
    postcopy: {
      advise: (...a) => { hooks.advise(...a); order.push('advise'); },
      discard: (...a) => { hooks.discard(...a); order.push('discard'); },
      listen: (...a) => { hooks.listen(...a); order.push('listen'); },
      run: (...a) => { hooks.run(...a); order.push(`run (dev: ${dev.log.join('; ')}; ram: ${ram.log.join('; ')})`); },
    },
  });
  assert.equal(loaded.startedEarly, true);
  assert.equal(loaded.vmdesc, null, 'no vmdesc is waited for after a post-copy EOF');
  assert.deepEqual(log, ['advise 4096 4096', 'discard pc.ram 4096+8192', 'listen', 'run']);
  assert.deepEqual(order, ['advise', 'discard', 'listen', 'run (dev: load v1 9; commit; ram: load v4 1; commit)']);
  assert.deepEqual(ram.log, ['load v4 1', 'commit', 'load v4 2', 'load v4 3'], 'RAM goes on after RUN; nothing is committed twice');
  assert.deepEqual(dev.log, ['load v1 9', 'commit']);
});

test('post-copy: commands out of order, a package without RUN, device state after RUN, and no postcopy-ram here are refused with the offset, before RUN commits anything', async () => {
  const advise = (w: StreamWriter): void => writeCommand(w, MIG_CMD_POSTCOPY_ADVISE, postcopyAdviseData(4096, 4096));
  const cases: Array<[string, (w: StreamWriter) => Promise<void> | void, RegExp, boolean?]> = [
    ['ADVISE without postcopy-ram here', (w) => advise(w), /The source asks for post-copy \(CMD_POSTCOPY_ADVISE at offset 26\), but postcopy-ram is off here/, false],
    ['ADVISE twice', (w) => { advise(w); advise(w); }, /CMD_POSTCOPY_ADVISE at offset 47 in the wrong post-copy state \(advised\)/],
    ['an empty ADVISE with postcopy-ram on here', (w) => writeCommand(w, MIG_CMD_POSTCOPY_ADVISE), /is empty, but postcopy-ram is on here/],
    ['DISCARD before ADVISE', (w) => writeCommand(w, MIG_CMD_POSTCOPY_RAM_DISCARD, discardData('pc.ram', [{ start: 0, length: 4096 }])), /CMD_POSTCOPY_RAM_DISCARD at offset 26 in the wrong post-copy state \(none\)/],
    ['LISTEN before ADVISE', (w) => writeCommand(w, MIG_CMD_POSTCOPY_LISTEN), /CMD_POSTCOPY_LISTEN at offset 26 in the wrong post-copy state/],
    ['RUN before LISTEN', (w) => { advise(w); writeCommand(w, MIG_CMD_POSTCOPY_RUN); }, /CMD_POSTCOPY_RUN at offset 47 in the wrong post-copy state \(advised\)/],
    ['a package without RUN', async (w) => { advise(w); await packaged(w, (inner) => writeCommand(inner, MIG_CMD_POSTCOPY_LISTEN)); }, /The package ended at offset 5 without POSTCOPY_RUN \(in the package at offset 56/],
    ['EOF in a package', async (w) => { advise(w); await packaged(w, (inner) => { writeCommand(inner, MIG_CMD_POSTCOPY_LISTEN); writeEof(inner); }); }, /EOF inside a package/],
    ['a package in a package', async (w) => { advise(w); await packaged(w, (inner) => writeCommand(inner, MIG_CMD_PACKAGED, be32Bytes(0))); }, /CMD_PACKAGED at offset 0 inside a package/],
    ['a package cut short', async (w) => {
      advise(w);
      await packaged(w, (inner) => { writeCommand(inner, MIG_CMD_POSTCOPY_LISTEN); writeSectionStart(inner, 'full', 1, 'dev', 0, 1); });
    }, /in the package at offset 56/],
    ['RAM between DISCARD and LISTEN', (w) => {
      advise(w);
      writeSectionStart(w, 'start', 0, 'ram', 0, 4); w.u8(1); writeSectionFooter(w, 0);
      writeCommand(w, MIG_CMD_POSTCOPY_RAM_DISCARD, discardData('pc.ram', [{ start: 0, length: 4096 }]));
      writeSectionPart(w, 'part', 0); w.u8(2); writeSectionFooter(w, 0);
    }, /Cannot load section "ram" between POSTCOPY_RAM_DISCARD and POSTCOPY_LISTEN/],
    ['device state after RUN', async (w) => {
      advise(w);
      await packaged(w, (inner) => { writeCommand(inner, MIG_CMD_POSTCOPY_LISTEN); writeCommand(inner, MIG_CMD_POSTCOPY_RUN); });
      writeSectionStart(w, 'full', 1, 'dev', 0, 1); w.u8(0); writeSectionFooter(w, 1);
    }, /Cannot load section "dev": the guest already runs on the state loaded before POSTCOPY_RUN/],
    ['LISTEN and EOF without RUN', (w) => { advise(w); writeCommand(w, MIG_CMD_POSTCOPY_LISTEN); }, /ended after POSTCOPY_LISTEN without POSTCOPY_RUN/],
  ];
  for (const [what, build, pattern, postcopyOn] of cases) {
    const dev = byteHandler('dev');
    const ram = byteHandler('ram', { iterative: true, version: 4, minimumVersion: 4 });
    const registry = new SaveVmRegistry();
    registry.register(ram.handler);
    registry.register(dev.handler);
    const sink = createCollectingChannel();
    const w = new StreamWriter(sink);
    writeHeader(w, 'pc-i440fx-7.2');
    await build(w);
    writeEof(w);
    await w.flush();
    const { hooks, log } = postcopyLog();
    await assert.rejects(loadVmStream(new StreamReader(channelFromBytes(sink.bytes(), { chunkSize: 6 })), registry, 'pc-i440fx-7.2', postcopyOn === false ? {} : { postcopy: hooks }), (err: unknown) => {
      assert.ok(err instanceof StreamFormatError, `${what}: ${String(err)}`);
      assert.match(err.message, pattern, what);
      return true;
    });
    if (what !== 'device state after RUN') {
      assert.ok(!dev.log.includes('commit') && !log.includes('run'), `${what}: nothing committed, the guest not run (${log.join(', ')})`);
    }
  }
});
