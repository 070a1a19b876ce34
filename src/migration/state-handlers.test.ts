import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError, VmStateError } from '../errors.js';
import type { StateSection } from '../hypervisor/types.js';
import type { RunState } from '../machine/run-state.js';
import { readerOf, writtenBytes } from '../stream/testing.js';
import { GLOBAL_STATE_DESCRIPTION, globalStateHandler, stateSectionHandler } from './state-handlers.js';
import { vmstateSave } from './vmstate.js';

/** The globalstate section's body as a source in `state` writes it. */
function section(state: string): Promise<Uint8Array> {
  return writtenBytes((w) => {
    const handler = globalStateHandler(() => state as RunState);
    return handler.complete(w).then(() => undefined);
  });
}

/** The same body with `runstate` spelled out, any bytes (as a corrupted stream may carry). */
function raw(runstate: string): Promise<Uint8Array> {
  const name = new TextEncoder().encode(runstate);
  const buf = new Uint8Array(100);
  buf.set(name);
  return writtenBytes((w) => {
    vmstateSave(w, GLOBAL_STATE_DESCRIPTION, { size: name.length + 1, runstate: buf });
  });
}

test('globalstate: the run state a source sends is what the destination receives, once committed', async () => {
  // Ferry's own states as its source writes them; two more of QEMU's as a QEMU source would.
  const streams: Array<[string, Promise<Uint8Array>]> = [
    ...(['running', 'paused', 'postmigrate'] as const).map((state) => [state, section(state)] as [string, Promise<Uint8Array>]),
    ['suspended', raw('suspended')],
    ['guest-panicked', raw('guest-panicked')],
  ];
  for (const [state, bytes] of streams) {
    const handler = globalStateHandler(() => 'inmigrate');
    await handler.load!(readerOf(await bytes), 1, 'globalstate');
    assert.equal(handler.received, undefined, 'nothing is received before the stream is committed');
    handler.commit!();
    assert.equal(handler.received, state);
  }
});

test('globalstate: a run state QEMU does not know is refused, naming the section and where', async () => {
  for (const bad of ['rinning', 'RUNNING', '', 'running\u0001']) {
    const handler = globalStateHandler(() => 'inmigrate');
    await assert.rejects(handler.load!(readerOf(await raw(bad)), 1, 'globalstate'), (err: unknown) => {
      assert.ok(err instanceof StreamFormatError, String(err));
      assert.equal(err.section, 'globalstate');
      assert.ok(err.offset > 0);
      assert.match(err.message, /Cannot load section "globalstate": unknown run state/);
      return true;
    });
    assert.equal(handler.received, undefined);
  }
});

/** A device with one 32-bit register whose load() sets it, then refuses odd values (having set it). */
function device(): StateSection & { value: number } {
  const description = { name: 'dev', version: 1, minimumVersion: 1, fields: [{ name: 'reg', type: 'uint32' as const }] };
  return {
    idstr: 'dev',
    instanceId: 0,
    description,
    value: 7,
    save() {
      return { reg: this.value };
    },
    load(state) {
      this.value = Number(state['reg']);
      if (this.value % 2 === 1 && this.value !== 7) throw new VmStateError(`Cannot load section "dev": register ${this.value} is odd`);
    },
  };
}

test('a device that refuses its loaded state: the error names the section and where its data began, and it keeps its state', async () => {
  const dev = device();
  const handler = stateSectionHandler(dev);
  const bytes = await writtenBytes((w) => {
    w.u8(0xaa); // something before the section's data, so that its offset is not 0
    vmstateSave(w, dev.description, { reg: 9 });
  });
  const r = readerOf(bytes);
  await r.ensure(1);
  r.u8();
  await handler.load(r, 1, 'dev');
  assert.throws(() => handler.commit!(), (err: unknown) => {
    assert.ok(err instanceof StreamFormatError, String(err));
    assert.equal(err.offset, 1);
    assert.equal(err.section, 'dev');
    assert.equal(err.message, 'Cannot load section "dev": register 9 is odd');
    return true;
  });
  assert.equal(dev.value, 7, 'the value the refused load set was put back');
});

test('a committed device gets its state back when a later one refuses (rollback)', async () => {
  const dev = device();
  const handler = stateSectionHandler(dev);
  await handler.load(readerOf(await writtenBytes((w) => { vmstateSave(w, dev.description, { reg: 4 }); })), 1, 'dev');
  handler.commit!();
  assert.equal(dev.value, 4);
  handler.rollback!();
  assert.equal(dev.value, 7);
});
