// The port-I/O and MMIO bus: devices claim address ranges; accesses from the guest
// (forwarded by the accelerator) reach the device that owns the address.

import { debuglog } from 'node:util';
import type { IoBus } from '../hypervisor/types.js';

const trace = debuglog('ferry');

export interface PortDevice {
  pioRead(port: number, size: 1 | 2 | 4): number;
  pioWrite(port: number, size: 1 | 2 | 4, value: number): void;
}

interface PortRange {
  readonly base: number;
  readonly length: number;
  readonly device: PortDevice;
  readonly name: string;
}

export class PortIoBus implements IoBus {
  private readonly ranges: PortRange[] = [];
  /** A one-entry cache: guests hammer the same device (the UART) over and over. */
  private last: PortRange | undefined;

  register(name: string, base: number, length: number, device: PortDevice): void {
    for (const r of this.ranges) {
      if (base < r.base + r.length && r.base < base + length) {
        throw new Error(`I/O ports 0x${base.toString(16)}+${length} of ${name} overlap ${r.name}`);
      }
    }
    this.ranges.push({ base, length, device, name });
  }

  private find(port: number): PortRange | undefined {
    const last = this.last;
    if (last && port >= last.base && port < last.base + last.length) return last;
    for (const r of this.ranges) {
      if (port >= r.base && port < r.base + r.length) {
        this.last = r;
        return r;
      }
    }
    return undefined;
  }

  pioRead(port: number, size: 1 | 2 | 4): number {
    const range = this.find(port);
    if (!range) {
      trace('unclaimed port read 0x%s/%d', port.toString(16), size);
      // Nothing answers on an ISA bus with no device: the lines float high.
      return size === 1 ? 0xff : size === 2 ? 0xffff : 0xffffffff;
    }
    return range.device.pioRead(port, size);
  }

  pioWrite(port: number, size: 1 | 2 | 4, value: number): void {
    const range = this.find(port);
    if (!range) {
      trace('unclaimed port write 0x%s/%d = 0x%s', port.toString(16), size, value.toString(16));
      return;
    }
    range.device.pioWrite(port, size, value);
  }

  mmioRead(address: number, size: 1 | 2 | 4 | 8): number {
    trace('unclaimed MMIO read 0x%s/%d', address.toString(16), size);
    return 0;
  }

  mmioWrite(address: number, size: 1 | 2 | 4 | 8, value: number): void {
    trace('unclaimed MMIO write 0x%s/%d = 0x%s', address.toString(16), size, value.toString(16));
  }
}
