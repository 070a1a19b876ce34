// The 16550A UART at COM1 (I/O ports 0x3f8–0x3ff, IRQ 4): registers, 16-byte receive
// FIFO, interrupt priorities and loopback, as a Linux 8250 driver expects. Bytes go to
// an output sink at once (transmission takes no time here); input waits in a bounded
// queue until the guest has room for it.

import { debuglog } from 'node:util';
import type { StateSection } from '../../hypervisor/types.js';
import type { VmStateValue } from '../../migration/vmstate-types.js';
import {
  SERIAL_STATE_DESCRIPTION, UART_FIFO_LENGTH, emptyFifo, serialStateFromValue, serialStateToValue,
} from './serial-state.js';
import type { Fifo8, SerialState } from './serial-state.js';

const trace = debuglog('ferry');

export const COM1_BASE = 0x3f8;
export const COM1_IRQ = 4;
export const SERIAL_PORT_COUNT = 8;

/** The UART's input clock over 16: divisor 1 gives 115200 baud. */
const BAUD_BASE = 115200;
/** Host input held back while the guest's FIFO is full; more than this is dropped. */
export const SERIAL_INPUT_QUEUE_MAX = 64 * 1024;

// Register offsets
const UART_RBR_THR_DLL = 0;
const UART_IER_DLM = 1;
const UART_IIR_FCR = 2;
const UART_LCR = 3;
const UART_MCR = 4;
const UART_LSR = 5;
const UART_MSR = 6;
const UART_SCR = 7;

export const UART_IER_RDI = 0x01;
export const UART_IER_THRI = 0x02;
export const UART_IER_RLSI = 0x04;
export const UART_IER_MSI = 0x08;

export const UART_IIR_NO_INT = 0x01;
export const UART_IIR_ID = 0x06;
export const UART_IIR_MSI = 0x00;
export const UART_IIR_THRI = 0x02;
export const UART_IIR_RDI = 0x04;
export const UART_IIR_RLSI = 0x06;
export const UART_IIR_CTI = 0x0c;
export const UART_IIR_FE = 0xc0;

export const UART_FCR_FE = 0x01;
export const UART_FCR_RFR = 0x02;
export const UART_FCR_XFR = 0x04;
export const UART_FCR_ITL_MASK = 0xc0;

export const UART_LCR_DLAB = 0x80;

export const UART_MCR_DTR = 0x01;
export const UART_MCR_RTS = 0x02;
export const UART_MCR_OUT1 = 0x04;
export const UART_MCR_OUT2 = 0x08;
export const UART_MCR_LOOP = 0x10;

export const UART_LSR_DR = 0x01;
export const UART_LSR_OE = 0x02;
export const UART_LSR_PE = 0x04;
export const UART_LSR_FE = 0x08;
export const UART_LSR_BI = 0x10;
export const UART_LSR_THRE = 0x20;
export const UART_LSR_TEMT = 0x40;
export const UART_LSR_INT_ANY = 0x1e;

export const UART_MSR_DCTS = 0x01;
export const UART_MSR_DDSR = 0x02;
export const UART_MSR_TERI = 0x04;
export const UART_MSR_DDCD = 0x08;
export const UART_MSR_CTS = 0x10;
export const UART_MSR_DSR = 0x20;
export const UART_MSR_RI = 0x40;
export const UART_MSR_DCD = 0x80;
export const UART_MSR_ANY_DELTA = 0x0f;

export interface SerialOptions {
  /** Where transmitted bytes go (a character backend). */
  readonly output?: { write(bytes: Uint8Array): void };
  /** The interrupt line (IRQ 4); called when its level changes. */
  readonly setIrq?: (level: boolean) => void;
  /** First I/O port (default COM1, 0x3f8). */
  readonly base?: number;
  /** The section's instance id (0 for COM1). */
  readonly instanceId?: number;
}

function resetState(): SerialState {
  return {
    divider: 0x0c, // 9600 baud
    rbr: 0, thr: 0, tsr: 0,
    ier: 0,
    iir: UART_IIR_NO_INT,
    lcr: 0,
    mcr: UART_MCR_OUT2,
    lsr: UART_LSR_TEMT | UART_LSR_THRE,
    msr: UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS,
    scr: 0,
    fcr: 0,
    thrIpending: 0,
    timeoutIpending: 0,
    tsrRetry: 0,
    pollMsl: -1,
    recvFifo: emptyFifo(),
    xmitFifo: emptyFifo(),
  };
}

function fifoPush(f: Fifo8, byte: number): void {
  f.data[(f.head + f.num) % UART_FIFO_LENGTH] = byte;
  f.num++;
}

function fifoPop(f: Fifo8): number {
  const byte = f.data[f.head]!;
  f.head = (f.head + 1) % UART_FIFO_LENGTH;
  f.num--;
  return byte;
}

function fifoReset(f: Fifo8): void {
  f.head = 0;
  f.num = 0;
}

export class Serial16550 {
  readonly base: number;
  readonly section: StateSection;
  private s: SerialState = resetState();
  private readonly output: { write(bytes: Uint8Array): void } | undefined;
  private readonly setIrq: ((level: boolean) => void) | undefined;
  private irqLevel = false;
  /** Host input not yet in the FIFO (flow control: the guest takes it as it reads). */
  private readonly inputQueue: number[] = [];
  private inputHead = 0;
  private dropped = 0;
  /** Transmitted bytes gathered within one turn of the event loop, written once. */
  private outBuffer: number[] = [];
  private timeoutTimer: NodeJS.Timeout | undefined;

  constructor(options: SerialOptions = {}) {
    this.base = options.base ?? COM1_BASE;
    this.output = options.output;
    this.setIrq = options.setIrq;
    this.section = {
      idstr: 'serial',
      instanceId: options.instanceId ?? 0,
      description: SERIAL_STATE_DESCRIPTION,
      save: () => this.save(),
      load: (state) => this.load(state),
      check: (state) => {
        serialStateFromValue(state);
      },
    };
  }

  /** The receive FIFO's trigger level, from FCR bits 7:6. */
  private get triggerLevel(): number {
    return [1, 4, 8, 14][(this.s.fcr & UART_FCR_ITL_MASK) >> 6]!;
  }

  private get fifoEnabled(): boolean {
    return (this.s.fcr & UART_FCR_FE) !== 0;
  }

  /** Bytes the host has queued for the guest and not yet delivered to the FIFO. */
  get pendingInput(): number {
    return this.inputQueue.length - this.inputHead;
  }

  /** Input bytes dropped because the queue was full. */
  get droppedInput(): number {
    return this.dropped;
  }

  pioRead(port: number, size: 1 | 2 | 4): number {
    const offset = port - this.base;
    // Wider accesses read the addressed register only, as QEMU's 1-byte-max access does.
    void size;
    return this.readRegister(offset);
  }

  pioWrite(port: number, size: 1 | 2 | 4, value: number): void {
    void size;
    this.writeRegister(port - this.base, value & 0xff);
  }

  /** Bytes from the host for the guest (typed on the console). */
  receive(bytes: Uint8Array): void {
    for (const byte of bytes) {
      if (this.pendingInput >= SERIAL_INPUT_QUEUE_MAX) {
        this.dropped++;
        continue;
      }
      this.inputQueue.push(byte);
    }
    if (this.dropped > 0) trace('serial: input queue full, %d bytes dropped so far', this.dropped);
    this.pumpInput();
  }

  save(): VmStateValue {
    return serialStateToValue(this.s);
  }

  load(value: VmStateValue): void {
    const next = serialStateFromValue(value);
    this.cancelTimeout();
    this.s = next;
    // QEMU's post_load runs the FCR setter for its side effects (IIR FIFO bits).
    this.applyFcr(next.fcr);
    // A byte the source could not yet send is sent now: Ferry's backends never refuse.
    this.flushPendingTransmit();
    if (this.fifoEnabled && this.s.recvFifo.num > 0 && this.s.recvFifo.num < this.triggerLevel) this.armTimeout();
    this.updateIrq();
    // Input typed here while the state was on its way may flow now.
    this.pumpInput();
  }

  /** Back to the power-on state (the host input queue is kept). */
  reset(): void {
    this.cancelTimeout();
    this.s = resetState();
    this.updateIrq();
  }

  private readRegister(offset: number): number {
    const s = this.s;
    switch (offset) {
      case UART_RBR_THR_DLL: {
        if (s.lcr & UART_LCR_DLAB) return s.divider & 0xff;
        let ret: number;
        if (this.fifoEnabled) {
          ret = s.recvFifo.num === 0 ? 0 : fifoPop(s.recvFifo);
          if (s.recvFifo.num === 0) {
            s.lsr &= ~(UART_LSR_DR | UART_LSR_BI);
            this.cancelTimeout();
          } else {
            this.armTimeout();
          }
          s.timeoutIpending = 0;
        } else {
          ret = s.rbr;
          s.lsr &= ~(UART_LSR_DR | UART_LSR_BI);
        }
        this.updateIrq();
        if (!(s.mcr & UART_MCR_LOOP)) this.pumpInput();
        return ret;
      }
      case UART_IER_DLM:
        return s.lcr & UART_LCR_DLAB ? (s.divider >> 8) & 0xff : s.ier;
      case UART_IIR_FCR: {
        const ret = s.iir;
        // Reading IIR acknowledges a THR-empty interrupt (the lowest "clear on read" one).
        if ((ret & UART_IIR_ID) === UART_IIR_THRI) {
          s.thrIpending = 0;
          this.updateIrq();
        }
        return ret;
      }
      case UART_LCR:
        return s.lcr;
      case UART_MCR:
        return s.mcr;
      case UART_LSR: {
        const ret = s.lsr;
        if (s.lsr & (UART_LSR_BI | UART_LSR_OE)) {
          s.lsr &= ~(UART_LSR_BI | UART_LSR_OE);
          this.updateIrq();
        }
        return ret;
      }
      case UART_MSR: {
        if (s.mcr & UART_MCR_LOOP) {
          // Loopback wires the modem outputs to the inputs: OUT2→DCD, OUT1→RI, RTS→CTS, DTR→DSR.
          return ((s.mcr & (UART_MCR_OUT2 | UART_MCR_OUT1)) << 4) | ((s.mcr & UART_MCR_RTS) << 3) | ((s.mcr & UART_MCR_DTR) << 5);
        }
        const ret = s.msr;
        if (s.msr & UART_MSR_ANY_DELTA) {
          s.msr &= 0xf0;
          this.updateIrq();
        }
        return ret;
      }
      case UART_SCR:
        return s.scr;
      default:
        return 0xff;
    }
  }

  private writeRegister(offset: number, value: number): void {
    const s = this.s;
    switch (offset) {
      case UART_RBR_THR_DLL:
        if (s.lcr & UART_LCR_DLAB) {
          s.divider = (s.divider & 0xff00) | value;
          return;
        }
        this.transmit(value);
        return;
      case UART_IER_DLM: {
        if (s.lcr & UART_LCR_DLAB) {
          s.divider = (s.divider & 0x00ff) | (value << 8);
          return;
        }
        const changed = (s.ier ^ value) & 0x0f;
        s.ier = value & 0x0f;
        // Turning THRI on re-samples THRE: guests (Windows, Linux's THRE test) rely on
        // getting an interrupt at once when the transmitter is already empty.
        if (changed & UART_IER_THRI) {
          s.thrIpending = s.ier & UART_IER_THRI && s.lsr & UART_LSR_THRE ? 1 : 0;
        }
        if (changed) this.updateIrq();
        return;
      }
      case UART_IIR_FCR: {
        let fcr = value;
        // Toggling the enable bit flushes both FIFOs.
        if ((fcr ^ s.fcr) & UART_FCR_FE) fcr |= UART_FCR_XFR | UART_FCR_RFR;
        if (fcr & UART_FCR_RFR) {
          s.lsr &= ~(UART_LSR_DR | UART_LSR_BI);
          this.cancelTimeout();
          s.timeoutIpending = 0;
          fifoReset(s.recvFifo);
        }
        if (fcr & UART_FCR_XFR) {
          s.lsr |= UART_LSR_THRE;
          s.thrIpending = 1;
          fifoReset(s.xmitFifo);
        }
        this.applyFcr(fcr & 0xc9);
        this.updateIrq();
        this.pumpInput();
        return;
      }
      case UART_LCR:
        s.lcr = value;
        return;
      case UART_MCR:
        s.mcr = value & 0x1f;
        // Leaving loopback reconnects the line: input held back may flow again.
        this.pumpInput();
        return;
      case UART_LSR:
      case UART_MSR:
        // Read-only on a 16550A (factory test writes are ignored, as QEMU does).
        return;
      case UART_SCR:
        s.scr = value;
        return;
      default:
        return;
    }
  }

  private applyFcr(fcr: number): void {
    const s = this.s;
    s.fcr = fcr;
    if (fcr & UART_FCR_FE) s.iir |= UART_IIR_FE;
    else s.iir &= ~UART_IIR_FE;
  }

  private transmit(byte: number): void {
    const s = this.s;
    s.thr = byte;
    s.thrIpending = 0;
    s.lsr &= ~(UART_LSR_THRE | UART_LSR_TEMT);
    this.updateIrq();
    // The shift register takes the byte and sends it at once.
    s.tsr = byte;
    if (s.mcr & UART_MCR_LOOP) {
      this.receiveByte(byte);
    } else {
      this.emit(byte);
    }
    s.lsr |= UART_LSR_THRE | UART_LSR_TEMT;
    s.thrIpending = 1;
    this.updateIrq();
  }

  private flushPendingTransmit(): void {
    const s = this.s;
    while (s.xmitFifo.num > 0) this.emit(fifoPop(s.xmitFifo));
    if (s.tsrRetry > 0) {
      this.emit(s.tsr);
      s.tsrRetry = 0;
      s.lsr |= UART_LSR_TEMT | UART_LSR_THRE;
    }
  }

  private emit(byte: number): void {
    if (!this.output) return;
    this.outBuffer.push(byte);
    // One write per turn of the event loop instead of one per byte (a syscall each on stdout).
    if (this.outBuffer.length === 1) queueMicrotask(() => this.flushOutput());
  }

  /** Hand gathered output to the sink now (called on its own after each burst). */
  flushOutput(): void {
    if (this.outBuffer.length === 0 || !this.output) return;
    const bytes = Uint8Array.from(this.outBuffer);
    this.outBuffer = [];
    this.output.write(bytes);
  }

  /** Whether one more byte fits without an overrun (QEMU's can_receive). */
  private canReceive(): boolean {
    if (this.fifoEnabled) return this.s.recvFifo.num < UART_FIFO_LENGTH;
    return (this.s.lsr & UART_LSR_DR) === 0;
  }

  private pumpInput(): void {
    // In loopback the line is disconnected from the outside world.
    if (this.s.mcr & UART_MCR_LOOP) return;
    let delivered = false;
    while (this.pendingInput > 0 && this.canReceive()) {
      this.receiveByte(this.inputQueue[this.inputHead++]!, false);
      delivered = true;
    }
    if (this.inputHead > 4096 && this.inputHead * 2 > this.inputQueue.length) {
      this.inputQueue.splice(0, this.inputHead);
      this.inputHead = 0;
    }
    if (delivered) this.updateIrq();
  }

  private receiveByte(byte: number, update = true): void {
    const s = this.s;
    if (this.fifoEnabled) {
      if (s.recvFifo.num === UART_FIFO_LENGTH) s.lsr |= UART_LSR_OE;
      else fifoPush(s.recvFifo, byte);
      s.lsr |= UART_LSR_DR;
      this.armTimeout();
    } else {
      if (s.lsr & UART_LSR_DR) s.lsr |= UART_LSR_OE;
      s.rbr = byte;
      s.lsr |= UART_LSR_DR;
    }
    if (update) this.updateIrq();
  }

  /** Four character times at the programmed speed, as a real UART waits before CTI. */
  private charTimeoutMs(): number {
    const divider = this.s.divider || 1;
    const bitsPerChar = 10;
    return Math.max(1, (4 * bitsPerChar * 1000 * divider) / BAUD_BASE);
  }

  private armTimeout(): void {
    this.cancelTimeout();
    const timer = setTimeout(() => {
      this.timeoutTimer = undefined;
      this.s.timeoutIpending = 1;
      this.updateIrq();
    }, this.charTimeoutMs());
    // A guest waiting on its console must not keep Ferry alive on its own.
    timer.unref();
    this.timeoutTimer = timer;
  }

  private cancelTimeout(): void {
    if (this.timeoutTimer) clearTimeout(this.timeoutTimer);
    this.timeoutTimer = undefined;
  }

  /** Pick the highest-priority pending interrupt into IIR and drive the line. */
  private updateIrq(): void {
    const s = this.s;
    let id = UART_IIR_NO_INT;
    if (s.ier & UART_IER_RLSI && s.lsr & UART_LSR_INT_ANY) {
      id = UART_IIR_RLSI;
    } else if (s.ier & UART_IER_RDI && s.timeoutIpending) {
      id = UART_IIR_CTI;
    } else if (s.ier & UART_IER_RDI && s.lsr & UART_LSR_DR && (!this.fifoEnabled || s.recvFifo.num >= this.triggerLevel)) {
      id = UART_IIR_RDI;
    } else if (s.ier & UART_IER_THRI && s.thrIpending) {
      id = UART_IIR_THRI;
    } else if (s.ier & UART_IER_MSI && s.msr & UART_MSR_ANY_DELTA) {
      id = UART_IIR_MSI;
    }
    s.iir = id | (s.iir & 0xf0);
    const level = id !== UART_IIR_NO_INT;
    if (level !== this.irqLevel) {
      this.irqLevel = level;
      this.setIrq?.(level);
    }
  }

  /** The interrupt line's level now. */
  get irq(): boolean {
    return this.irqLevel;
  }

  /** Release the FIFO timer and hand over any output not yet written. */
  close(): void {
    this.cancelTimeout();
    this.flushOutput();
  }
}
