// The argument schema of a QMP command: a few composable types whose TypeScript type is
// inferred for the handler, and one validator that rejects what QEMU's QAPI input
// visitor rejects (missing, unexpected, mistyped members) with QEMU's wording.

import { QmpError } from '../errors.js';

export interface StrSchema { readonly kind: 'str' }
/** A JSON integer that fits a JavaScript number exactly (QAPI `int`). */
export interface IntSchema { readonly kind: 'int' }
/** A non-negative integer (QAPI `uint64`/`size`), at most Number.MAX_SAFE_INTEGER here. */
export interface UintSchema { readonly kind: 'uint' }
export interface NumberSchema { readonly kind: 'number' }
export interface BoolSchema { readonly kind: 'bool' }
/** Anything JSON, passed through unchecked (QAPI `any`). */
export interface AnySchema { readonly kind: 'any' }
export interface EnumSchema<V extends string = string> { readonly kind: 'enum'; readonly values: readonly V[] }
export interface ArraySchema<E extends Schema> { readonly kind: 'array'; readonly of: E }
export interface ObjectSchema<F extends Fields> { readonly kind: 'object'; readonly fields: F }
/** The value or JSON null (as QAPI's StrOrNull for `tls-creds`). */
export interface NullableSchema<S extends Schema> { readonly kind: 'nullable'; readonly of: S }

export type Schema =
  | StrSchema
  | IntSchema
  | UintSchema
  | NumberSchema
  | BoolSchema
  | AnySchema
  | EnumSchema
  // `any` here stops TypeScript from expanding Infer<Schema> forever; each concrete schema
  // keeps its precise parameters.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  | ArraySchema<any>
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  | ObjectSchema<any>
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  | NullableSchema<any>;

/**
 * Members of an object, by wire name. A name ending in `?` is optional: `'detach?': t.bool`
 * accepts a missing `detach`; the handler sees `detach?: boolean`.
 */
export type Fields = { readonly [name: string]: Schema };

type Simplify<T> = { [K in keyof T]: T[K] } & {};

export type InferFields<F extends Fields> = Simplify<
  { -readonly [K in keyof F as K extends `${string}?` ? never : K]: Infer<F[K]> } & {
    -readonly [K in keyof F as K extends `${infer N}?` ? N : never]?: Infer<F[K]>;
  }
>;

/** The TypeScript type of values a schema accepts. */
export type Infer<S> = 0 extends 1 & S
  ? unknown // S is `any` (a schema of unknown shape): stop here instead of expanding forever
  : S extends StrSchema
  ? string
  : S extends IntSchema | UintSchema | NumberSchema
    ? number
    : S extends BoolSchema
      ? boolean
      : S extends AnySchema
        ? unknown
        : S extends EnumSchema<infer V>
          ? V
          : S extends ArraySchema<infer E>
            ? Infer<E>[]
            : S extends ObjectSchema<infer F>
              ? InferFields<F>
              : S extends NullableSchema<infer I>
                ? Infer<I> | null
                : never;

const str: StrSchema = { kind: 'str' };
const int: IntSchema = { kind: 'int' };
const uint: UintSchema = { kind: 'uint' };
const number: NumberSchema = { kind: 'number' };
const bool: BoolSchema = { kind: 'bool' };
const any: AnySchema = { kind: 'any' };

function enumOf<const V extends string>(values: readonly V[]): EnumSchema<V> {
  if (values.length === 0) throw new RangeError('An enum schema needs at least one value');
  return { kind: 'enum', values };
}

function array<E extends Schema>(of: E): ArraySchema<E> {
  return { kind: 'array', of };
}

function object<const F extends Fields>(fields: F): ObjectSchema<F> {
  return { kind: 'object', fields };
}

function nullable<S extends Schema>(of: S): NullableSchema<S> {
  return { kind: 'nullable', of };
}

/**
 * The schema vocabulary: `t.str`, `t.int`, `t.uint`, `t.number`, `t.bool`, `t.any`,
 * `t.enum(['a', 'b'])`, `t.array(t.str)`, `t.object({ 'name?': t.str })`, `t.nullable(t.str)`.
 */
export const t = { str, int, uint, number, bool, any, enum: enumOf, array, object, nullable } as const;

/** QEMU's word for each type in "Invalid parameter type for 'x', expected: …". */
const EXPECTED: Record<Schema['kind'], string> = {
  str: 'string',
  int: 'integer',
  uint: 'integer',
  number: 'number',
  bool: 'boolean',
  any: 'any',
  enum: 'string',
  array: 'array',
  object: 'object',
  nullable: 'null',
};

function typeError(path: string, schema: Schema): QmpError {
  const expected =
    schema.kind === 'nullable' ? `${EXPECTED[(schema.of as Schema).kind]} or null` : EXPECTED[schema.kind];
  return new QmpError('GenericError', `Invalid parameter type for '${path}', expected: ${expected}`);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function memberPath(parent: string, name: string): string {
  return parent === '' ? name : `${parent}.${name}`;
}

/** Check the members of an object against `fields`; `path` names the object ('' at the top). */
export function validateFields<F extends Fields>(fields: F, value: Record<string, unknown>, path = ''): InferFields<F> {
  return checkFields(fields, value, path) as InferFields<F>;
}

/** validateFields with the types erased, for the dispatcher (which holds schemas of every shape). */
export function checkFields(fields: Fields, value: Record<string, unknown>, path = ''): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const known = new Set<string>();
  for (const [key, schema] of Object.entries(fields)) {
    const optional = key.endsWith('?');
    const name = optional ? key.slice(0, -1) : key;
    known.add(name);
    if (!Object.hasOwn(value, name)) {
      if (!optional) throw new QmpError('GenericError', `Parameter '${memberPath(path, name)}' is missing`);
      continue;
    }
    out[name] = check(schema, value[name], memberPath(path, name));
  }
  for (const name of Object.keys(value)) {
    if (!known.has(name)) throw new QmpError('GenericError', `Parameter '${memberPath(path, name)}' is unexpected`);
  }
  return out;
}

/**
 * Check `value` against `schema` and return it (objects are rebuilt from their declared
 * members). Throws a GenericError QmpError naming the member by its path
 * (`capabilities[0].state`), as QEMU does.
 */
export const validate: <S extends Schema>(schema: S, value: unknown, path: string) => Infer<S> =
  // The cast only restates what check() guarantees at run time; TypeScript cannot follow
  // a recursive conditional type through a switch.
  check as never;

/** validate with the types erased, for callers that hold a schema of unknown shape. */
export function check(schema: Schema, value: unknown, path: string): unknown {
  switch (schema.kind) {
    case 'str':
      if (typeof value !== 'string') throw typeError(path, schema);
      return value;
    case 'int':
      if (typeof value !== 'number') throw typeError(path, schema);
      if (!Number.isSafeInteger(value)) throw new QmpError('GenericError', `Parameter '${path}' expects int64`);
      return value;
    case 'uint':
      if (typeof value !== 'number') throw typeError(path, schema);
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new QmpError('GenericError', `Parameter '${path}' expects uint64`);
      }
      return value;
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value)) throw typeError(path, schema);
      return value;
    case 'bool':
      if (typeof value !== 'boolean') throw typeError(path, schema);
      return value;
    case 'any':
      return value;
    case 'enum':
      if (typeof value !== 'string') throw typeError(path, schema);
      if (!schema.values.includes(value)) {
        throw new QmpError('GenericError', `Parameter '${path}' does not accept value '${value}'`);
      }
      return value;
    case 'array':
      if (!Array.isArray(value)) throw typeError(path, schema);
      return value.map((item, index) => check(schema.of, item, `${path}[${index}]`));
    case 'object':
      if (!isPlainObject(value)) throw typeError(path, schema);
      return checkFields(schema.fields as Fields, value, path);
    case 'nullable':
      if (value === null) return null;
      try {
        return check(schema.of, value, path);
      } catch (err) {
        // Only the top-level type mismatch mentions null; deeper errors stay as they are.
        if (err instanceof QmpError && err.message.startsWith(`Invalid parameter type for '${path}',`)) {
          throw typeError(path, schema);
        }
        throw err;
      }
  }
}
