// The 16550A's state as one plain type, and its declarative description with QEMU's
// names, order, versions and subsections (hw/char/serial.c, vmstate_serial), so a
// Ferry stream's "serial" section reads like QEMU's and QEMU's tools decode it.

import { VmStateError } from '../../errors.js';
import type { VmStateDescription, VmStateSubsection, VmStateValue } from '../../migration/vmstate-types.js';

/** Bytes in each FIFO (QEMU's UART_FIFO_LENGTH). */
export const UART_FIFO_LENGTH = 16;

/** QEMU's Fifo8: a ring of `capacity` bytes; `head` is the oldest, `num` how many are held. */
export interface Fifo8 {
  data: Uint8Array;
  head: number;
  num: number;
}

/** Everything a 16550A holds that the guest can observe, named as QEMU's SerialState. */
export interface SerialState {
  divider: number;
  rbr: number;
  thr: number;
  tsr: number;
  ier: number;
  iir: number;
  lcr: number;
  mcr: number;
  lsr: number;
  msr: number;
  scr: number;
  fcr: number;
  /** 1 while a THR-empty interrupt is owed to the guest (cleared by reading IIR). */
  thrIpending: number;
  /** 1 while a character-timeout interrupt is owed (rx FIFO below its trigger level, idle). */
  timeoutIpending: number;
  /** Transmit retries outstanding; Ferry's backends never refuse a byte, so always 0 when saved. */
  tsrRetry: number;
  /** -1: the backend has no modem lines to poll (every Ferry backend). */
  pollMsl: number;
  recvFifo: Fifo8;
  xmitFifo: Fifo8;
}

export function emptyFifo(): Fifo8 {
  return { data: new Uint8Array(UART_FIFO_LENGTH), head: 0, num: 0 };
}

// Register bits the state checks need (the device has the full set).
const UART_IIR_ID = 0x06;
const UART_IIR_THRI = 0x02;
const UART_IER_THRI = 0x02;
const UART_LSR_TEMT = 0x40;

/** QEMU's vmstate_fifo8. */
export const FIFO8_DESCRIPTION: VmStateDescription = {
  name: 'Fifo8',
  version: 1,
  minimumVersion: 1,
  fields: [
    // QEMU sends `capacity` bytes, the length coming from the struct, not the stream.
    { name: 'data', type: 'buffer', size: UART_FIFO_LENGTH },
    { name: 'head', type: 'uint32' },
    { name: 'num', type: 'uint32' },
  ],
};

function sub(name: string, fields: VmStateDescription['fields'], needed: (s: VmStateValue) => boolean): VmStateSubsection<VmStateValue> {
  return { key: name, needed, description: { name, version: 1, minimumVersion: 1, fields } };
}

function inner(s: VmStateValue, key: string): VmStateValue | undefined {
  const v = s[key];
  return typeof v === 'object' && v !== null ? (v as VmStateValue) : undefined;
}

/**
 * QEMU's vmstate_serial, field for field. The two timers are carried as their be64
 * expiry (QEMU's "timer" type is 8 bytes); Ferry never sends them (it re-arms the FIFO
 * timeout from the FIFO contents on load).
 */
export const VMSTATE_SERIAL: VmStateDescription = {
  name: 'serial',
  version: 3,
  minimumVersion: 2,
  fields: [
    { name: 'divider', type: 'uint16', sinceVersion: 2 },
    { name: 'rbr', type: 'uint8' },
    { name: 'ier', type: 'uint8' },
    { name: 'iir', type: 'uint8' },
    { name: 'lcr', type: 'uint8' },
    { name: 'mcr', type: 'uint8' },
    { name: 'lsr', type: 'uint8' },
    { name: 'msr', type: 'uint8' },
    { name: 'scr', type: 'uint8' },
    { name: 'fcr_vmstate', type: 'uint8', sinceVersion: 3 },
  ],
  subsections: [
    sub('serial/thr_ipending', [{ name: 'thr_ipending', type: 'int32' }], (s) => {
      // As QEMU: only when IER.THRI is on and the flag disagrees with what IIR implies.
      if (((s['ier'] as number) & UART_IER_THRI) === 0) return false;
      const expected = ((s['iir'] as number) & UART_IIR_ID) === UART_IIR_THRI ? 1 : 0;
      return inner(s, 'serial/thr_ipending')?.['thr_ipending'] !== expected;
    }),
    sub('serial/tsr', [
      { name: 'tsr_retry', type: 'uint32' },
      { name: 'thr', type: 'uint8' },
      { name: 'tsr', type: 'uint8' },
    ], (s) => inner(s, 'serial/tsr')?.['tsr_retry'] !== 0),
    sub('serial/recv_fifo', [{ name: 'recv_fifo', type: 'struct', struct: FIFO8_DESCRIPTION }],
      (s) => (inner(inner(s, 'serial/recv_fifo') ?? {}, 'recv_fifo')?.['num'] ?? 0) !== 0),
    sub('serial/xmit_fifo', [{ name: 'xmit_fifo', type: 'struct', struct: FIFO8_DESCRIPTION }],
      (s) => (inner(inner(s, 'serial/xmit_fifo') ?? {}, 'xmit_fifo')?.['num'] ?? 0) !== 0),
    sub('serial/fifo_timeout_timer', [{ name: 'fifo_timeout_timer', type: 'int64' }], () => false),
    sub('serial/timeout_ipending', [{ name: 'timeout_ipending', type: 'int32' }],
      (s) => (inner(s, 'serial/timeout_ipending')?.['timeout_ipending'] ?? 0) !== 0),
    sub('serial/poll', [
      { name: 'poll_msl', type: 'int32' },
      { name: 'modem_status_poll', type: 'int64' },
    ], (s) => ((inner(s, 'serial/poll')?.['poll_msl'] as number | undefined) ?? -1) >= 0),
  ],
};

/**
 * The section "serial" as QEMU's isa-serial writes it (vmstate_isa_serial): one struct
 * field "state" holding vmstate_serial. The bytes are those of vmstate_serial alone; the
 * wrapper makes the vmdesc JSON the same as QEMU's, so tools see one device layout.
 */
export const SERIAL_STATE_DESCRIPTION: VmStateDescription = {
  name: 'serial',
  version: 3,
  minimumVersion: 2,
  fields: [{ name: 'state', type: 'struct', struct: VMSTATE_SERIAL }],
};

function fifoValue(f: Fifo8): VmStateValue {
  return { data: f.data.slice(), head: f.head, num: f.num };
}

/** The section's value for the engine: QEMU's field names, subsection state under the subsection's name. */
export function serialStateToValue(s: SerialState): VmStateValue {
  return { state: serialCoreToValue(s) };
}

function serialCoreToValue(s: SerialState): VmStateValue {
  return {
    divider: s.divider,
    rbr: s.rbr,
    ier: s.ier,
    iir: s.iir,
    lcr: s.lcr,
    mcr: s.mcr,
    lsr: s.lsr,
    msr: s.msr,
    scr: s.scr,
    fcr_vmstate: s.fcr,
    // Unused while IER.THRI is off (enabling it re-samples LSR.THRE), so it saves as 0
    // then: a destination derives the same, and save → load → save is stable.
    'serial/thr_ipending': { thr_ipending: s.ier & UART_IER_THRI ? s.thrIpending : 0 },
    'serial/tsr': { tsr_retry: s.tsrRetry, thr: s.thr, tsr: s.tsr },
    'serial/recv_fifo': { recv_fifo: fifoValue(s.recvFifo) },
    'serial/xmit_fifo': { xmit_fifo: fifoValue(s.xmitFifo) },
    'serial/fifo_timeout_timer': { fifo_timeout_timer: 0n },
    'serial/timeout_ipending': { timeout_ipending: s.timeoutIpending },
    'serial/poll': { poll_msl: s.pollMsl, modem_status_poll: 0n },
  };
}

function int(v: VmStateValue, name: string, min: number, max: number, fallback?: number): number {
  const x = v[name];
  if (x === undefined && fallback !== undefined) return fallback;
  if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max) {
    throw new VmStateError(`Cannot load section "serial": field "${name}" = ${String(x)} is not an integer in ${min}..${max}`);
  }
  return x;
}

function fifoFromValue(v: VmStateValue | undefined, name: string): Fifo8 {
  const f = v && inner(v, name);
  if (!f) return emptyFifo();
  const data = f['data'];
  if (!(data instanceof Uint8Array) || data.length !== UART_FIFO_LENGTH) {
    throw new VmStateError(`Cannot load section "serial": ${name}.data is not ${UART_FIFO_LENGTH} bytes`);
  }
  return { data: data.slice(), head: int(f, 'head', 0, UART_FIFO_LENGTH - 1), num: int(f, 'num', 0, UART_FIFO_LENGTH) };
}

/**
 * A loaded section value as device state, with QEMU's post_load checks and defaults for
 * what an older stream or an absent subsection leaves out.
 */
export function serialStateFromValue(value: VmStateValue): SerialState {
  const v = inner(value, 'state');
  if (!v) throw new VmStateError('Cannot load section "serial": field "state" is missing');
  return serialCoreFromValue(v);
}

function serialCoreFromValue(v: VmStateValue): SerialState {
  const u8 = (name: string, fallback?: number): number => int(v, name, 0, 0xff, fallback);
  const iir = u8('iir');
  const ier = u8('ier');
  const lsr = u8('lsr');
  const thrSub = inner(v, 'serial/thr_ipending');
  const tsrSub = inner(v, 'serial/tsr');
  const timeoutSub = inner(v, 'serial/timeout_ipending');
  const pollSub = inner(v, 'serial/poll');
  const state: SerialState = {
    divider: int(v, 'divider', 0, 0xffff, 0x0c),
    rbr: u8('rbr'),
    ier, iir, lsr,
    lcr: u8('lcr'),
    mcr: u8('mcr'),
    msr: u8('msr'),
    scr: u8('scr'),
    // Version 2 streams have no FCR: QEMU then loads 0 (FIFOs off).
    fcr: u8('fcr_vmstate', 0),
    thr: tsrSub ? int(tsrSub, 'thr', 0, 0xff) : 0,
    tsr: tsrSub ? int(tsrSub, 'tsr', 0, 0xff) : 0,
    tsrRetry: tsrSub ? int(tsrSub, 'tsr_retry', 0, 0xffffffff) : 0,
    // Absent: what IIR implies, as QEMU's post_load decides.
    thrIpending: thrSub ? int(thrSub, 'thr_ipending', 0, 1) : (iir & UART_IIR_ID) === UART_IIR_THRI ? 1 : 0,
    timeoutIpending: timeoutSub ? int(timeoutSub, 'timeout_ipending', 0, 1) : 0,
    pollMsl: -1,
    recvFifo: fifoFromValue(inner(v, 'serial/recv_fifo'), 'recv_fifo'),
    xmitFifo: fifoFromValue(inner(v, 'serial/xmit_fifo'), 'xmit_fifo'),
  };
  if (pollSub) int(pollSub, 'poll_msl', -1, 0x7fffffff);
  if (state.tsrRetry > 0 && (lsr & UART_LSR_TEMT) !== 0) {
    throw new VmStateError(`Cannot load section "serial": inconsistent state (transmitter empty, tsr_retry=${state.tsrRetry})`);
  }
  if (state.tsrRetry === 0 && (lsr & UART_LSR_TEMT) === 0) {
    throw new VmStateError('Cannot load section "serial": inconsistent state (transmitter not empty, tsr_retry=0)');
  }
  return state;
}
