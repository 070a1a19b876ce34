import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError, VmStateError } from '../errors.js';
import type { StateSection } from '../hypervisor/types.js';
import type { RunState } from '../machine/run-state.js';
import type { StreamReader } from '../stream/reader.js';
import { readerOf, writtenBytes } from '../stream/testing.js';
import { GLOBAL_STATE_DESCRIPTION, globalStateHandler, stateSectionHandler } from './state-handlers.js';
import { vmstateSave } from './vmstate.js';
import type { VmStateValue } from './vmstate-types.js';

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

/** A device with one 32-bit register that refuses odd values but 7 (its reset value). */
function device(options: { withCheck: boolean }): StateSection & { value: number; loads: number } {
  const description = { name: 'dev', version: 1, minimumVersion: 1, fields: [{ name: 'reg', type: 'uint32' as const }] };
  const refuse = (state: VmStateValue): void => {
    const reg = Number(state['reg']);
    if (reg % 2 === 1 && reg !== 7) throw new VmStateError(`Cannot load section "dev": register ${reg} is odd`);
  };
  return {
    idstr: 'dev',
    instanceId: 0,
    description,
    value: 7,
    loads: 0,
    save() {
      return { reg: this.value };
    },
    load(state) {
      this.loads++;
      refuse(state);
      this.value = Number(state['reg']);
    },
    ...(options.withCheck ? { check: refuse } : {}),
  };
}

/** The section's data with a byte before it, so that where it begins is not offset 0. */
async function afterOneByte(reg: number): Promise<StreamReader> {
  const bytes = await writtenBytes((w) => {
    w.u8(0xaa);
    vmstateSave(w, device({ withCheck: false }).description, { reg });
  });
  const r = readerOf(bytes);
  await r.ensure(1);
  r.u8();
  return r;
}

function refusedAtOffset1(err: unknown): boolean {
  assert.ok(err instanceof StreamFormatError, String(err));
  assert.equal(err.offset, 1);
  assert.equal(err.section, 'dev');
  assert.equal(err.message, 'Cannot load section "dev": register 9 is odd');
  return true;
}

test('a value the device checks is refused as the section arrives, naming the section and where its data began', async () => {
  const dev = device({ withCheck: true });
  const handler = stateSectionHandler(dev);
  await assert.rejects(handler.load(await afterOneByte(9), 1, 'dev'), refusedAtOffset1);
  handler.commit!();
  assert.equal(dev.loads, 0, 'nothing was installed');
  assert.equal(dev.value, 7);
});

test('a device without check() refuses at commit, with the same error', async () => {
  const dev = device({ withCheck: false });
  const handler = stateSectionHandler(dev);
  await handler.load(await afterOneByte(9), 1, 'dev');
  assert.throws(() => handler.commit!(), refusedAtOffset1);
  assert.equal(dev.value, 7);
  const good = stateSectionHandler(dev);
  await good.load(await afterOneByte(4), 1, 'dev');
  good.commit!();
  assert.equal(dev.value, 4);
});
