// The console path end to end, as the Machine wires it: the sim workload's "pass N"
// lines go through the I/O bus to the 16550A and out of a character backend (a file and
// a unix socket), and bytes typed into the socket reach the guest's receive FIFO.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PortIoBus } from '../src/machine/io-bus.js';
import { COM1_BASE, SERIAL_PORT_COUNT, Serial16550 } from '../src/devices/serial/serial.js';
import { openCharBackend } from '../src/chardev/char-backend.js';
import { createSimAccelerator } from '../src/sim/sim-accelerator.js';
import { readGuestParams } from '../src/guests/params.js';

const MiB = 1024 * 1024;

test('sim → I/O bus → 16550A → file: the progress lines land in the console file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-console-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'console.log');
  const backend = await openCharBackend(`file:${path}`);
  const bus = new PortIoBus();
  const irqs: boolean[] = [];
  const serial = new Serial16550({ output: backend, setIrq: (level) => irqs.push(level) });
  bus.register('serial', COM1_BASE, SERIAL_PORT_COUNT, serial);
  const accel = await createSimAccelerator({
    memorySize: 8 * MiB, vcpus: 1, ioBus: bus, incoming: false,
    guest: { kind: 'sweep', from: MiB, to: MiB + 32 * 4096, rate: 20_000 },
  });
  let pass: number;
  try {
    accel.resume();
    await sleep(300);
    await accel.pause();
    // Read before destroy: a destroyed accelerator's RAM is given back to the kernel.
    pass = readGuestParams(accel.memory[0]!.bytes)!.pass;
  } finally {
    await accel.destroy();
  }
  serial.close();
  await backend.close();
  assert.ok(pass >= 20, `${pass} passes`);
  const expected = Array.from({ length: pass }, (_, i) => `pass ${i + 1}\n`).join('');
  assert.equal(readFileSync(path, 'utf8'), expected);
  assert.deepEqual(irqs, [], 'the guest enabled no interrupt');
});

test('unix console: what a client types reaches the guest, what the guest writes reaches the client', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-console-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'console.sock');
  const backend = await openCharBackend(`unix:${path}`);
  const irqs: boolean[] = [];
  const serial = new Serial16550({ output: backend, setIrq: (level) => irqs.push(level) });
  backend.onInput((bytes) => serial.receive(bytes));
  const bus = new PortIoBus();
  bus.register('serial', COM1_BASE, SERIAL_PORT_COUNT, serial);

  const client = connect(path);
  await once(client, 'connect');
  let seen = '';
  client.on('data', (c: Buffer) => { seen += c.toString(); });

  // The guest's driver: FIFO on (trigger 1), receive interrupts on.
  bus.pioWrite(COM1_BASE + 2, 1, 0x07);
  bus.pioWrite(COM1_BASE + 1, 1, 0x01);
  client.write('echo me\n');
  const deadline = Date.now() + 3000;
  while (!serial.irq && Date.now() < deadline) await sleep(5);
  assert.equal(serial.irq, true, 'received data raised IRQ 4');
  // Echo what arrives, as a shell would, until the newline.
  let line = '';
  while (!line.endsWith('\n') && Date.now() < deadline) {
    if (bus.pioRead(COM1_BASE + 5, 1) & 0x01) {
      const c = bus.pioRead(COM1_BASE, 1);
      line += String.fromCharCode(c);
      bus.pioWrite(COM1_BASE, 1, c);
    } else {
      await sleep(5);
    }
  }
  assert.equal(line, 'echo me\n');
  while (seen !== 'echo me\n' && Date.now() < deadline) await sleep(5);
  assert.equal(seen, 'echo me\n');
  assert.equal(serial.irq, false, 'FIFO drained: line low again');
  serial.close();
  client.destroy();
  await backend.close();
});
