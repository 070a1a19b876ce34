// Guest-physical memory made of several blocks (src/hypervisor/ram-layout.ts): reads and
// writes by guest address, for the code that plays or checks a built-in guest from the
// host side (the sim's workload model, the sweep check after a migration).

/** One stretch of guest RAM: its guest-physical address and the host's view of it. */
export interface RamPiece {
  readonly guestAddress: number;
  readonly bytes: Uint8Array;
}

interface Piece {
  readonly start: number;
  readonly end: number;
  readonly view: DataView;
}

export class GuestPhysical {
  readonly #pieces: readonly Piece[];
  /** The piece the last access fell in: a sweep stays in one for a million pages. */
  #last: Piece;

  constructor(pieces: readonly RamPiece[]) {
    if (pieces.length === 0) throw new RangeError('Guest-physical memory needs at least one RAM block');
    this.#pieces = [...pieces]
      .sort((a, b) => a.guestAddress - b.guestAddress)
      .map((p) => ({ start: p.guestAddress, end: p.guestAddress + p.bytes.byteLength, view: new DataView(p.bytes.buffer, p.bytes.byteOffset, p.bytes.byteLength) }));
    this.#last = this.#pieces[0]!;
  }

  /** Bytes of RAM in all blocks. */
  get size(): number {
    return this.#pieces.reduce((sum, p) => sum + (p.end - p.start), 0);
  }

  /** True when [address, address + length) lies inside one block. */
  contains(address: number, length = 1): boolean {
    return this.#pieces.some((p) => address >= p.start && address + length <= p.end);
  }

  getUint32(address: number): number {
    const p = this.#piece(address, 4);
    return p.view.getUint32(address - p.start, true);
  }

  setUint32(address: number, value: number): void {
    const p = this.#piece(address, 4);
    p.view.setUint32(address - p.start, value, true);
  }

  getBigUint64(address: number): bigint {
    const p = this.#piece(address, 8);
    return p.view.getBigUint64(address - p.start, true);
  }

  setBigUint64(address: number, value: bigint): void {
    const p = this.#piece(address, 8);
    p.view.setBigUint64(address - p.start, value, true);
  }

  #piece(address: number, length: number): Piece {
    const last = this.#last;
    if (address >= last.start && address + length <= last.end) return last;
    for (const p of this.#pieces) {
      if (address >= p.start && address + length <= p.end) {
        this.#last = p;
        return p;
      }
    }
    throw new RangeError(`Guest-physical address 0x${address.toString(16)} (+${length}) is not in guest RAM`);
  }
}
