// FULL-section savevm handlers for non-iterative state: one per StateSection (CPU,
// devices) through the VMState engine, plus QEMU's "globalstate" section that carries
// the source's run state so a paused source gives a paused destination.

import { StreamFormatError, VmStateError } from '../errors.js';
import type { StateSection } from '../hypervisor/types.js';
import type { RunState } from '../machine/run-state.js';
import type { StreamReader } from '../stream/reader.js';
import type { StreamWriter } from '../stream/writer.js';
import type { VmdescDevice } from '../stream/format.js';
import { vmstateLoad, vmstateSave, vmstateWarmUp } from './vmstate.js';
import type { VmStateDescription, VmStateValue } from './vmstate-types.js';
import type { SaveVmHandler } from './savevm.js';

/**
 * A StateSection as a FULL-section handler. Loaded state is checked by the section as it
 * arrives (StateSection.check) and kept aside; commit() installs it after the whole stream
 * was read and checked, so a stream that breaks later — or carries a value a device
 * refuses — leaves the destination's devices untouched. A refused value is a fault of the
 * stream: the error names the section and where its data began.
 */
export function stateSectionHandler(section: StateSection): SaveVmHandler {
  let loaded: { value: VmStateValue; offset: number; name: string } | undefined;
  return {
    idstr: section.idstr,
    instanceId: section.instanceId,
    version: section.description.version,
    minimumVersion: section.description.minimumVersion,
    async complete(w: StreamWriter): Promise<VmdescDevice> {
      return vmstateSave(w, section.description, section.save(), { idstr: section.idstr, instanceId: section.instanceId });
    },
    warmUp(): void {
      // A sample, not section.save(): a running vCPU's state cannot be read.
      vmstateWarmUp(section.description);
    },
    async load(r: StreamReader, versionId: number, name: string): Promise<void> {
      const offset = r.offset;
      const value = await vmstateLoad(r, section.description, versionId, name);
      atSection(offset, name, () => section.check?.(value));
      loaded = { value, offset, name };
    },
    commit(): void {
      if (loaded === undefined) return;
      const { value, offset, name } = loaded;
      loaded = undefined;
      // What check() cannot know, the hypervisor or emulator may still refuse here.
      atSection(offset, name, () => section.load(value));
    },
    cleanup(): void {
      loaded = undefined;
    },
  };
}

/** Run `fn`; a VmStateError from it becomes a StreamFormatError at the section's data. */
function atSection(offset: number, name: string, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    if (err instanceof VmStateError) throw new StreamFormatError(err.message, offset, name, { cause: err });
    throw err;
  }
}

/** QEMU's global state: `uint32 size` then a 100-byte NUL-padded run state name. */
export const GLOBAL_STATE_DESCRIPTION: VmStateDescription = {
  name: 'globalstate',
  version: 1,
  minimumVersion: 1,
  fields: [
    { name: 'size', type: 'uint32' },
    { name: 'runstate', type: 'buffer', size: 100 },
  ],
};

const RUNSTATE_BYTES = 100;

/**
 * QEMU 7.2's RunState names (qapi/run-state.json): a stream may carry any of them, and
 * QEMU refuses one that is not among them (global_state_post_load) — so does Ferry.
 */
const QEMU_RUN_STATES: ReadonlySet<string> = new Set([
  'debug', 'inmigrate', 'internal-error', 'io-error', 'paused', 'postmigrate', 'prelaunch', 'finish-migrate',
  'restore-vm', 'running', 'save-vm', 'shutdown', 'suspended', 'watchdog', 'guest-panicked', 'colo',
]);

export interface GlobalStateHandler extends SaveVmHandler {
  /** The run state the source reported, once a stream carried it. */
  readonly received: string | undefined;
}

function globalStateValue(runState: RunState): VmStateValue {
  const name = new TextEncoder().encode(runState);
  const buf = new Uint8Array(RUNSTATE_BYTES);
  buf.set(name.subarray(0, RUNSTATE_BYTES - 1));
  return { size: Math.min(name.length, RUNSTATE_BYTES - 1) + 1, runstate: buf };
}

/** `runState()` is read at switchover (source); `received` is set on load (destination). */
export function globalStateHandler(runState: () => RunState): GlobalStateHandler {
  let received: string | undefined;
  let pending: string | undefined;
  return {
    idstr: 'globalstate',
    instanceId: 0,
    version: 1,
    minimumVersion: 1,
    get received() {
      return received;
    },
    async complete(w: StreamWriter): Promise<VmdescDevice> {
      return vmstateSave(w, GLOBAL_STATE_DESCRIPTION, globalStateValue(runState()), { idstr: 'globalstate', instanceId: 0 });
    },
    warmUp(): void {
      vmstateWarmUp(GLOBAL_STATE_DESCRIPTION, globalStateValue(runState()));
    },
    async load(r: StreamReader, versionId: number, name: string): Promise<void> {
      const value = await vmstateLoad(r, GLOBAL_STATE_DESCRIPTION, versionId, name);
      const size = value['size'];
      const bytes = value['runstate'];
      if (typeof size !== 'number' || !(bytes instanceof Uint8Array) || size < 1 || size > RUNSTATE_BYTES) {
        throw new StreamFormatError(`Cannot load section "${name}": run state size ${String(size)} is not 1 to ${RUNSTATE_BYTES}`, r.offset, name);
      }
      const end = bytes.indexOf(0);
      const state = new TextDecoder().decode(bytes.subarray(0, end < 0 ? size : Math.min(end, size)));
      if (!QEMU_RUN_STATES.has(state)) {
        throw new StreamFormatError(`Cannot load section "${name}": unknown run state ${JSON.stringify(state)}`, r.offset, name);
      }
      pending = state;
    },
    commit(): void {
      received = pending;
    },
    cleanup(): void {
      pending = undefined;
    },
  };
}
