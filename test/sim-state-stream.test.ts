// The sim "cpu" section and the serial device's "serial" section through the real
// VMState engine: golden bytes as QEMU 7.2 writes vmstate_serial, and round trips.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { vmstateLoad, vmstateSave } from '../src/migration/vmstate.js';
import { asciiHex, fromHex, readerOf, toHex, writtenBytes } from '../src/stream/testing.js';
import { Serial16550 } from '../src/devices/serial/serial.js';
import { SERIAL_STATE_DESCRIPTION } from '../src/devices/serial/serial-state.js';
import { SIM_CPU_STATE_DESCRIPTION, saveCpuState, loadCpuState } from '../src/sim/cpu-state.js';
import { WORKLOAD_RANDOM } from '../src/sim/workload.js';
import type { WorkloadCpuState } from '../src/sim/workload.js';

test('serial section: a freshly reset UART encodes as QEMU writes it (no subsections)', async () => {
  const uart = new Serial16550();
  const bytes = await writtenBytes((w) => { vmstateSave(w, SERIAL_STATE_DESCRIPTION, uart.save(), { idstr: 'serial', instanceId: 0 }); });
  assert.equal(toHex(bytes), toHex(fromHex(
    '000c' + // divider: 9600 baud
    '00' + // rbr
    '00' + // ier
    '01' + // iir: no interrupt
    '00' + // lcr
    '08' + // mcr: OUT2
    '60' + // lsr: THRE | TEMT
    'b0' + // msr: DCD | DSR | CTS
    '00' + // scr
    '00', // fcr_vmstate
  )));
});

test('serial section: the vmdesc entry is the one QEMU 7.2 writes for isa-serial', async () => {
  let entry: unknown;
  await writtenBytes((w) => { entry = vmstateSave(w, SERIAL_STATE_DESCRIPTION, new Serial16550().save(), { idstr: 'serial', instanceId: 0 }); });
  // Captured from `qemu-system-x86_64 -S -device isa-serial …` migrated to a file and
  // printed with analyze-migration.py -d desc (its section bytes match the test above).
  const u8 = (name: string) => ({ name, type: 'uint8', size: 1 });
  assert.deepEqual(JSON.parse(JSON.stringify(entry)), {
    name: 'serial', instance_id: 0, vmsd_name: 'serial', version: 3,
    fields: [{
      name: 'state', type: 'struct', size: 11,
      struct: {
        vmsd_name: 'serial', version: 3,
        fields: [{ name: 'divider', type: 'uint16', size: 2 }, u8('rbr'), u8('ier'), u8('iir'), u8('lcr'), u8('mcr'), u8('lsr'), u8('msr'), u8('scr'), u8('fcr_vmstate')],
      },
    }],
  });
});

test('serial section: rx FIFO contents travel in the "serial/recv_fifo" subsection and load back', async () => {
  const uart = new Serial16550();
  uart.pioWrite(0x3fa, 1, 0x01); // FIFO on
  uart.receive(Uint8Array.from([0x61, 0x62, 0x63]));
  uart.pioRead(0x3f8, 1); // consume 'a': head 1, num 2
  const saved = uart.save();
  const bytes = await writtenBytes((w) => { vmstateSave(w, SERIAL_STATE_DESCRIPTION, saved); });
  const fifoData = '616263' + '00'.repeat(13); // the ring as stored: 'a' consumed, head moved past it
  assert.equal(toHex(bytes), toHex(fromHex(
    '000c 00 00 c1 00 08 61 b0 00 01' + // registers; iir shows the FIFO bits, lsr DR
    '05' + '10' + asciiHex('serial/recv_fifo') + '00000001' + // subsection header: name, version 1
    fifoData + '00000001' + '00000002', // Fifo8: data[16], head 1, num 2
  )));
  const loaded = await vmstateLoad(readerOf(bytes, 3), SERIAL_STATE_DESCRIPTION, 3, 'serial');
  const other = new Serial16550();
  other.load(loaded);
  assert.deepEqual(other.save(), saved);
  assert.equal(other.pioRead(0x3f8, 1), 0x62);
  assert.equal(other.pioRead(0x3f8, 1), 0x63);
  uart.close();
  other.close();
});

test('cpu section: the sim workload state survives the engine', async () => {
  const state: WorkloadCpuState = { kind: WORKLOAD_RANDOM, from: 0x100000, to: 0x4000000, cursor: 0x100000, pass: 3, rate: 250_000, steps: 123456, prng: [0xdeadbeef, 1, 2, 0xffffffff] };
  const bytes = await writtenBytes((w) => { vmstateSave(w, SIM_CPU_STATE_DESCRIPTION, saveCpuState(state), { idstr: 'cpu', instanceId: 0 }); });
  assert.equal(bytes.length, 4 + 4 + 6 * 8 + 16);
  assert.equal(toHex(bytes.subarray(0, 4)), '434d4953', 'magic first, big-endian');
  const loaded = await vmstateLoad(readerOf(bytes, 5), SIM_CPU_STATE_DESCRIPTION, 1, 'cpu');
  assert.deepEqual(loadCpuState(loaded, 0x4000000), state);
});
