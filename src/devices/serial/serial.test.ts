import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmStateError } from '../../errors.js';
import {
  COM1_BASE, SERIAL_INPUT_QUEUE_MAX, Serial16550,
  UART_FCR_FE, UART_FCR_RFR, UART_FCR_XFR, UART_IER_MSI, UART_IER_RDI, UART_IER_RLSI, UART_IER_THRI,
  UART_IIR_CTI, UART_IIR_FE, UART_IIR_NO_INT, UART_IIR_RDI, UART_IIR_RLSI, UART_IIR_THRI,
  UART_LCR_DLAB, UART_LSR_DR, UART_LSR_OE, UART_LSR_TEMT, UART_LSR_THRE, UART_MCR_DTR, UART_MCR_LOOP,
  UART_MCR_OUT1, UART_MCR_OUT2, UART_MCR_RTS, UART_MSR_CTS, UART_MSR_DCD, UART_MSR_DSR, UART_MSR_RI,
} from './serial.js';
import { SERIAL_STATE_DESCRIPTION, VMSTATE_SERIAL, serialStateFromValue } from './serial-state.js';
import type { VmStateDescription, VmStateValue } from '../../migration/vmstate-types.js';

const RBR = COM1_BASE, THR = COM1_BASE, DLL = COM1_BASE, IER = COM1_BASE + 1, DLM = COM1_BASE + 1;
const IIR = COM1_BASE + 2, FCR = COM1_BASE + 2, LCR = COM1_BASE + 3, MCR = COM1_BASE + 4;
const LSR = COM1_BASE + 5, MSR = COM1_BASE + 6, SCR = COM1_BASE + 7;

function make() {
  const out: number[] = [];
  const irqs: boolean[] = [];
  const uart = new Serial16550({ output: { write: (b) => out.push(...b) }, setIrq: (l) => irqs.push(l) });
  const rd = (port: number): number => uart.pioRead(port, 1);
  const wr = (port: number, v: number): void => uart.pioWrite(port, 1, v);
  return { uart, out, irqs, rd, wr };
}

/** The section value with some of vmstate_serial's fields replaced. */
function patched(saved: VmStateValue, fields: VmStateValue): VmStateValue {
  return { state: { ...(saved['state'] as VmStateValue), ...fields } };
}

function core(saved: VmStateValue): VmStateValue {
  return saved['state'] as VmStateValue;
}

test('serial: power-on register values match a 16550A after reset', () => {
  const { rd } = make();
  assert.equal(rd(IER), 0);
  assert.equal(rd(IIR), UART_IIR_NO_INT);
  assert.equal(rd(LCR), 0);
  assert.equal(rd(MCR), UART_MCR_OUT2);
  assert.equal(rd(LSR), UART_LSR_THRE | UART_LSR_TEMT);
  assert.equal(rd(MSR), UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS);
  assert.equal(rd(SCR), 0);
});

test('serial: DLAB switches ports 0/1 to the divisor latch and back', () => {
  const { rd, wr, out } = make();
  wr(IER, UART_IER_RDI);
  wr(LCR, UART_LCR_DLAB | 0x03);
  assert.equal(rd(DLL), 0x0c);
  assert.equal(rd(DLM), 0x00);
  wr(DLL, 0x01);
  wr(DLM, 0x02);
  assert.equal(rd(DLL), 0x01);
  assert.equal(rd(DLM), 0x02);
  assert.deepEqual(out, [], 'a divisor write is not a transmitted byte');
  wr(LCR, 0x03);
  assert.equal(rd(IER), UART_IER_RDI, 'IER kept while DLAB was set');
  assert.equal(rd(LCR), 0x03);
});

test('serial: THR writes reach the output, LSR reports the transmitter empty again', async () => {
  const { uart, rd, wr, out } = make();
  for (const c of 'hi\n') wr(THR, c.charCodeAt(0));
  assert.equal(rd(LSR) & (UART_LSR_THRE | UART_LSR_TEMT), UART_LSR_THRE | UART_LSR_TEMT);
  await Promise.resolve();
  assert.equal(Buffer.from(out).toString(), 'hi\n');
  wr(THR, 0x41);
  uart.flushOutput();
  assert.equal(out.at(-1), 0x41);
});

test('serial: scratch register holds any byte', () => {
  const { rd, wr } = make();
  for (const v of [0x00, 0x55, 0xaa, 0xff]) {
    wr(SCR, v);
    assert.equal(rd(SCR), v);
  }
});

test('serial: THRE interrupt on enabling THRI, cleared by reading IIR, raised again by a write', async () => {
  const { uart, rd, wr, irqs } = make();
  wr(IER, UART_IER_THRI);
  assert.equal(uart.irq, true);
  assert.equal(rd(IIR), UART_IIR_THRI);
  assert.equal(uart.irq, false, 'reading IIR acknowledges THRE');
  assert.equal(rd(IIR), UART_IIR_NO_INT);
  wr(THR, 0x20);
  assert.equal(uart.irq, true);
  assert.equal(rd(IIR), UART_IIR_THRI);
  assert.deepEqual(irqs, [true, false, true, false]);
  await Promise.resolve();
});

test('serial: non-FIFO receive sets DR; a second byte overruns (OE), LSR read clears OE', () => {
  const { uart, rd, wr } = make();
  wr(IER, UART_IER_RDI | UART_IER_RLSI);
  wr(MCR, UART_MCR_LOOP | UART_MCR_OUT2);
  wr(THR, 0x31);
  assert.equal(rd(LSR) & UART_LSR_DR, UART_LSR_DR);
  assert.equal(rd(IIR), UART_IIR_RDI);
  wr(THR, 0x32);
  // Line status outranks received data.
  assert.equal(rd(IIR), UART_IIR_RLSI);
  assert.equal(uart.irq, true);
  const lsr = rd(LSR);
  assert.equal(lsr & UART_LSR_OE, UART_LSR_OE);
  assert.equal(rd(LSR) & UART_LSR_OE, 0, 'OE clears on read');
  assert.equal(rd(IIR), UART_IIR_RDI);
  assert.equal(rd(RBR), 0x32, 'the newer byte overwrote the older');
  assert.equal(rd(LSR) & UART_LSR_DR, 0);
  assert.equal(rd(IIR), UART_IIR_NO_INT);
  assert.equal(uart.irq, false);
});

test('serial: IIR priorities — line status > rx data > THR empty > modem status', () => {
  const { uart, rd, wr } = make();
  wr(MCR, UART_MCR_LOOP);
  wr(IER, UART_IER_RDI | UART_IER_THRI | UART_IER_RLSI | UART_IER_MSI);
  assert.equal(rd(IIR), UART_IIR_THRI);
  wr(THR, 1);
  wr(THR, 2); // overrun
  assert.equal(rd(IIR) & 0x0f, UART_IIR_RLSI);
  rd(LSR);
  assert.equal(rd(IIR) & 0x0f, UART_IIR_RDI);
  rd(RBR);
  // The THR write left a THRE interrupt pending; it shows once rx is served.
  assert.equal(rd(IIR) & 0x0f, UART_IIR_THRI);
  assert.equal(rd(IIR) & 0x0f, UART_IIR_NO_INT);
  // Modem status: restore a delta through state, then it is the only source left.
  const state = uart.save();
  uart.load(patched(state, { msr: 0xb0 | 0x01 }));
  assert.equal(rd(IIR) & 0x0f, 0x00, 'MSI has id 0 with the pending bit clear');
  assert.equal(uart.irq, true);
  wr(MCR, 0);
  rd(MSR);
  assert.equal(rd(IIR) & 0x0f, UART_IIR_NO_INT);
  assert.equal(uart.irq, false);
});

test('serial: FIFO mode — IIR FIFO bits, 16-byte rx FIFO, trigger level and overrun', () => {
  const { uart, rd, wr } = make();
  wr(FCR, UART_FCR_FE | UART_FCR_RFR | UART_FCR_XFR | 0x80); // trigger at 8
  assert.equal(rd(IIR) & UART_IIR_FE, UART_IIR_FE);
  wr(IER, UART_IER_RDI);
  uart.receive(Uint8Array.from([1, 2, 3, 4, 5, 6, 7]));
  assert.equal(rd(LSR) & UART_LSR_DR, UART_LSR_DR);
  assert.equal(uart.irq, false, 'below the trigger level');
  uart.receive(Uint8Array.of(8));
  assert.equal(rd(IIR), UART_IIR_FE | UART_IIR_RDI);
  const got: number[] = [];
  while (rd(LSR) & UART_LSR_DR) got.push(rd(RBR));
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(uart.irq, false);
  // Loopback fills the FIFO past 16: the 17th is lost and flagged.
  wr(MCR, UART_MCR_LOOP);
  for (let i = 0; i < 17; i++) wr(THR, 0x40 + i);
  assert.equal(rd(LSR) & UART_LSR_OE, UART_LSR_OE);
  const looped: number[] = [];
  while (rd(LSR) & UART_LSR_DR) looped.push(rd(RBR));
  assert.equal(looped.length, 16);
  assert.equal(looped[15], 0x4f);
});

test('serial: FCR receive reset empties the FIFO; disabling the FIFO clears the IIR bits', () => {
  const { uart, rd, wr } = make();
  wr(FCR, UART_FCR_FE);
  uart.receive(Uint8Array.from([1, 2, 3]));
  wr(FCR, UART_FCR_FE | UART_FCR_RFR);
  assert.equal(rd(LSR) & UART_LSR_DR, 0);
  wr(FCR, 0);
  assert.equal(rd(IIR) & UART_IIR_FE, 0);
});

test('serial: character timeout interrupt when data sits below the trigger level', async () => {
  const { uart, rd, wr } = make();
  wr(LCR, UART_LCR_DLAB);
  wr(DLL, 1); // 115200 baud: the timeout is the 1 ms floor
  wr(LCR, 0x03);
  wr(FCR, UART_FCR_FE | 0xc0); // trigger at 14
  wr(IER, UART_IER_RDI);
  uart.receive(Uint8Array.of(0x7a));
  assert.equal(uart.irq, false);
  await sleep(20);
  assert.equal(uart.irq, true);
  assert.equal(rd(IIR), UART_IIR_FE | UART_IIR_CTI);
  assert.equal(rd(RBR), 0x7a);
  assert.equal(uart.irq, false);
  uart.close();
});

test('serial: input beyond the FIFO waits in the queue and flows as the guest reads', () => {
  const { uart, rd, wr } = make();
  wr(FCR, UART_FCR_FE);
  const text = Buffer.from('The quick brown fox jumps over the lazy dog');
  uart.receive(text);
  assert.equal(uart.pendingInput, text.length - 16);
  assert.equal(rd(LSR) & UART_LSR_OE, 0, 'flow control, not overrun');
  const got: number[] = [];
  while (rd(LSR) & UART_LSR_DR) got.push(rd(RBR));
  assert.equal(Buffer.from(got).toString(), text.toString());
  assert.equal(uart.pendingInput, 0);
  uart.close();
});

test('serial: the input queue is bounded', () => {
  const { uart } = make();
  uart.receive(new Uint8Array(SERIAL_INPUT_QUEUE_MAX + 100));
  // The queue filled, the overflow was dropped, then one byte moved on into RBR (no FIFO).
  assert.equal(uart.droppedInput, 100);
  assert.equal(uart.pendingInput, SERIAL_INPUT_QUEUE_MAX - 1);
});

test('serial: loopback — output stays inside, MSR mirrors MCR, outside input waits', async () => {
  const { uart, rd, wr, out } = make();
  wr(MCR, UART_MCR_LOOP | UART_MCR_DTR);
  assert.equal(rd(MSR), UART_MSR_DSR);
  wr(MCR, UART_MCR_LOOP | UART_MCR_RTS);
  assert.equal(rd(MSR), UART_MSR_CTS);
  wr(MCR, UART_MCR_LOOP | UART_MCR_OUT1);
  assert.equal(rd(MSR), UART_MSR_RI);
  wr(MCR, UART_MCR_LOOP | UART_MCR_OUT2);
  assert.equal(rd(MSR), UART_MSR_DCD);
  wr(THR, 0x55);
  assert.equal(rd(RBR), 0x55);
  uart.receive(Uint8Array.of(0x66));
  assert.equal(rd(LSR) & UART_LSR_DR, 0, 'the line is disconnected in loopback');
  wr(MCR, UART_MCR_OUT2);
  assert.equal(rd(RBR), 0x66);
  await Promise.resolve();
  assert.deepEqual(out, []);
});

test('serial: save → load round trip restores every register, the FIFO and the pending interrupt', () => {
  const a = make();
  a.wr(LCR, UART_LCR_DLAB);
  a.wr(DLL, 0x03);
  a.wr(LCR, 0x1b);
  a.wr(FCR, UART_FCR_FE | 0x40);
  a.wr(IER, UART_IER_RDI | UART_IER_THRI);
  a.wr(SCR, 0x5a);
  a.wr(MCR, UART_MCR_OUT2 | UART_MCR_DTR);
  a.uart.receive(Uint8Array.from([10, 20, 30, 40, 50]));
  a.rd(RBR); // head moves: the ring is not at 0
  const saved = a.uart.save();
  assert.equal(core(saved)['fcr_vmstate'], UART_FCR_FE | 0x40);
  assert.deepEqual((core(saved)['serial/recv_fifo'] as { recv_fifo: { num: number; head: number } }).recv_fifo.num, 4);

  const b = make();
  b.uart.load(saved);
  assert.deepEqual(b.uart.save(), saved);
  assert.equal(b.rd(LCR), 0x1b);
  assert.equal(b.rd(SCR), 0x5a);
  assert.equal(b.rd(IIR) & UART_IIR_FE, UART_IIR_FE);
  assert.equal(b.uart.irq, a.uart.irq);
  const got: number[] = [];
  while (b.rd(LSR) & UART_LSR_DR) got.push(b.rd(RBR));
  assert.deepEqual(got, [20, 30, 40, 50]);
  b.wr(LCR, 0x80 | 0x1b);
  assert.equal(b.rd(DLL), 0x03);
  a.uart.close();
  b.uart.close();
});

test('serial: subsections are sent only when QEMU would send them', () => {
  const { uart, rd, wr } = make();
  const needed = (s: VmStateValue): string[] => (VMSTATE_SERIAL.subsections ?? []).filter((x) => x.needed(core(s))).map((x) => x.description.name);
  assert.deepEqual(needed(uart.save()), []);
  wr(IER, UART_IER_THRI);
  rd(IIR); // acknowledged: thr_ipending 0 matches IIR
  assert.deepEqual(needed(uart.save()), []);
  wr(IER, 0);
  wr(IER, UART_IER_THRI | UART_IER_RLSI);
  wr(MCR, UART_MCR_LOOP);
  wr(THR, 1);
  wr(THR, 2); // overrun: IIR says line status while a THRE interrupt is also owed
  assert.deepEqual(needed(uart.save()), ['serial/thr_ipending']);
  wr(FCR, UART_FCR_FE);
  wr(THR, 3);
  assert.deepEqual(needed(uart.save()).includes('serial/recv_fifo'), true);
  uart.close();
});

test('serial: load takes state without fcr_vmstate (a version 2 vmstate_serial) and defaults what is absent', () => {
  const { uart, rd } = make();
  const v2: VmStateValue = { divider: 12, rbr: 0, ier: 0x02, iir: 0x02, lcr: 3, mcr: 8, lsr: 0x60, msr: 0xb0, scr: 0 };
  uart.load({ state: v2 });
  assert.equal(rd(IIR), UART_IIR_THRI, 'thr_ipending derived from IIR');
  assert.equal(rd(IIR), UART_IIR_NO_INT);
  assert.equal(serialStateFromValue({ state: v2 }).fcr, 0);
});

test('serial: load refuses inconsistent or out-of-range state', () => {
  const { uart } = make();
  const good = uart.save();
  assert.throws(() => uart.load(patched(good, { lsr: 0x20 })), (e: unknown) => e instanceof VmStateError && /transmitter not empty, tsr_retry=0/.test(e.message));
  assert.throws(() => uart.load(patched(good, { lcr: 300 })), /field "lcr" = 300/);
  assert.throws(() => uart.load(patched(good, { 'serial/recv_fifo': { recv_fifo: { data: new Uint8Array(4), head: 0, num: 1 } } })), /recv_fifo.data is not 16 bytes/);
  assert.throws(() => uart.load(patched(good, { 'serial/recv_fifo': { recv_fifo: { data: new Uint8Array(16), head: 0, num: 17 } } })), /"num" = 17/);
  assert.throws(() => uart.load({}), /field "state" is missing/);
  // A refused load leaves the device as it was.
  assert.deepEqual(uart.save(), good);
});

test('serial: a pending transmit in a loaded stream is sent, not lost', async () => {
  const { uart, out } = make();
  uart.load(patched(uart.save(), { lsr: 0x20, 'serial/tsr': { tsr_retry: 1, thr: 0x42, tsr: 0x42 } }));
  uart.flushOutput();
  assert.deepEqual(out, [0x42]);
  assert.equal(core(uart.save())['lsr'], UART_LSR_THRE | UART_LSR_TEMT);
});

/** The description as one line per field: the wire format of section "serial". */
function encodeDescription(d: VmStateDescription, indent = ''): string[] {
  const lines = [`${indent}${d.name} v${d.version} (min ${d.minimumVersion})`];
  for (const f of d.fields) {
    lines.push(`${indent}  ${f.name}: ${f.type}${f.size ? `[${f.size}]` : ''}${f.sinceVersion ? ` since v${f.sinceVersion}` : ''}`);
    if (f.struct) lines.push(...encodeDescription(f.struct, `${indent}    `));
  }
  for (const s of d.subsections ?? []) lines.push(...encodeDescription(s.description, `${indent}  `));
  return lines;
}

test('serial: the state description is QEMU\'s vmstate_isa_serial around vmstate_serial, field by field', () => {
  assert.deepEqual(encodeDescription(SERIAL_STATE_DESCRIPTION), [
    'serial v3 (min 2)',
    '  state: struct',
    ...encodeDescription(VMSTATE_SERIAL, '    '),
  ]);
  assert.deepEqual(encodeDescription(VMSTATE_SERIAL), [
    'serial v3 (min 2)',
    '  divider: uint16 since v2',
    '  rbr: uint8',
    '  ier: uint8',
    '  iir: uint8',
    '  lcr: uint8',
    '  mcr: uint8',
    '  lsr: uint8',
    '  msr: uint8',
    '  scr: uint8',
    '  fcr_vmstate: uint8 since v3',
    '  serial/thr_ipending v1 (min 1)',
    '    thr_ipending: int32',
    '  serial/tsr v1 (min 1)',
    '    tsr_retry: uint32',
    '    thr: uint8',
    '    tsr: uint8',
    '  serial/recv_fifo v1 (min 1)',
    '    recv_fifo: struct',
    '      Fifo8 v1 (min 1)',
    '        data: buffer[16]',
    '        head: uint32',
    '        num: uint32',
    '  serial/xmit_fifo v1 (min 1)',
    '    xmit_fifo: struct',
    '      Fifo8 v1 (min 1)',
    '        data: buffer[16]',
    '        head: uint32',
    '        num: uint32',
    '  serial/fifo_timeout_timer v1 (min 1)',
    '    fifo_timeout_timer: int64',
    '  serial/timeout_ipending v1 (min 1)',
    '    timeout_ipending: int32',
    '  serial/poll v1 (min 1)',
    '    poll_msl: int32',
    '    modem_status_poll: int64',
  ]);
});

test('serial: the section is "serial", instance 0, with this description', () => {
  const { uart } = make();
  assert.equal(uart.section.idstr, 'serial');
  assert.equal(uart.section.instanceId, 0);
  assert.equal(uart.section.description, SERIAL_STATE_DESCRIPTION);
  assert.deepEqual(uart.section.save(), uart.save());
});

test('serial: the XFR bit re-arms THRE', () => {
  const { uart, rd, wr } = make();
  wr(IER, UART_IER_THRI);
  rd(IIR);
  assert.equal(uart.irq, false);
  wr(FCR, UART_FCR_FE | UART_FCR_XFR);
  assert.equal(uart.irq, true);
  assert.equal(rd(IIR), UART_IIR_FE | UART_IIR_THRI);
});

test('serial: Linux 8250 autoconfig sees a 16550A (IER test, loopback test, FIFO type)', () => {
  const { rd, wr } = make();
  // IER read-back test
  wr(IER, 0);
  assert.equal(rd(IER) & 0x0f, 0);
  wr(IER, 0x0f);
  assert.equal(rd(IER) & 0x0f, 0x0f);
  wr(IER, 0);
  // Loopback test: OUT2|RTS in loopback reads back as DCD|CTS
  wr(MCR, UART_MCR_LOOP | 0x0a);
  assert.equal(rd(MSR) & 0xf0, 0x90);
  wr(MCR, UART_MCR_OUT2);
  // FIFO type: enabling FIFOs with trigger 14 makes IIR bits 7:6 read 3 (16550A)
  wr(FCR, 0xe7);
  assert.equal(rd(IIR) >> 6, 3);
  // 16750 test: bit 5 of FCR (64-byte FIFO) is not kept, so IIR bit 5 stays clear
  wr(LCR, UART_LCR_DLAB);
  wr(FCR, UART_FCR_FE | 0x20);
  wr(LCR, 0);
  assert.equal(rd(IIR) & 0x20, 0);
  // Scratch test
  wr(SCR, 0xa5);
  assert.equal(rd(SCR), 0xa5);
});
