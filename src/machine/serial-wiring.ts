// Puts the 16550A on the Machine's I/O bus at COM1 and connects it to the console.
// IRQ 4 has no interrupt controller to reach yet (the built-in guests poll); the line
// level is kept so a future PIC/IOAPIC can pick it up.

import { COM1_BASE, SERIAL_PORT_COUNT, Serial16550 } from '../devices/serial/serial.js';
import type { StateSection } from '../hypervisor/types.js';
import type { PortIoBus } from './io-bus.js';

export interface AttachedSerial {
  readonly device: Serial16550;
  readonly section: StateSection;
  input(bytes: Uint8Array): void;
}

export function attachSerial(bus: PortIoBus, output: { write(bytes: Uint8Array): void }): AttachedSerial {
  const device = new Serial16550({ output, base: COM1_BASE, instanceId: 0 });
  bus.register('serial', COM1_BASE, SERIAL_PORT_COUNT, device);
  return { device, section: device.section, input: (bytes) => device.receive(bytes) };
}
