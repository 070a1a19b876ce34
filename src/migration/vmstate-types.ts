// The vocabulary of declarative state descriptions (QEMU's VMStateDescription): a
// device says once what its state is made of, and one engine saves, loads and
// describes it (vmdesc). These are only the types; the engine is vmstate.ts.

/** QEMU's scalar field types, as they appear in the vmdesc JSON. */
export type VmStateScalarType =
  | 'uint8' | 'uint16' | 'uint32' | 'uint64'
  | 'int8' | 'int16' | 'int32' | 'int64'
  | 'bool';

export type VmStateFieldType = VmStateScalarType | 'buffer' | 'struct';

/**
 * One field of a state description. Values in a state object:
 * - uint8..uint32, int8..int32: number; uint64/int64: bigint; bool: boolean
 * - buffer: Uint8Array of `size` bytes, or of the length held in `lengthField`
 * - struct: a plain object described by `struct`
 * - with `count` (or `countField`): an array of that many such values
 */
export interface VmStateField {
  readonly name: string;
  readonly type: VmStateFieldType;
  /** buffer: its fixed length in bytes. */
  readonly size?: number;
  /** buffer: the name of an earlier integer field of the same struct that holds its length. */
  readonly lengthField?: string;
  /** Upper bound for a variable length (buffer bytes or array elements), checked on load. */
  readonly maxLength?: number;
  /** A fixed-length array of this field. */
  readonly count?: number;
  /** An array whose length is held in an earlier integer field of the same struct. */
  readonly countField?: string;
  /** struct: its description. */
  readonly struct?: VmStateDescription;
  /** The field exists in streams of this version and later (QEMU's field version_id). */
  readonly sinceVersion?: number;
}

export interface VmStateSubsection<S = any> {
  readonly description: VmStateDescription;
  /** Whether the subsection is sent for this state (QEMU's .needed). */
  readonly needed: (state: S) => boolean;
  /** Where in the parent state object the subsection's own state lives. */
  readonly key: string;
}

export interface VmStateDescription {
  /** The section or subsection name, e.g. "serial" (QEMU's vmsd->name). */
  readonly name: string;
  readonly version: number;
  /** The oldest stream version this description can still load. */
  readonly minimumVersion: number;
  readonly fields: readonly VmStateField[];
  readonly subsections?: readonly VmStateSubsection[];
}

/** A plain state object: field name → value, as described above. */
export type VmStateValue = Record<string, unknown>;
