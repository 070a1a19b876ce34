import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QmpError } from '../errors.js';
import { t, validate, validateFields, type InferFields } from './schema.js';

const migrateArgs = { uri: t.str, 'detach?': t.bool, 'resume?': t.bool } as const;
const capsArgs = {
  capabilities: t.array(t.object({ capability: t.enum(['xbzrle', 'events']), state: t.bool })),
} as const;

// Compile-time checks: the handler's argument type is inferred from the schema.
type MigrateArgs = InferFields<typeof migrateArgs>;
const _m1: MigrateArgs = { uri: 'tcp:1:2' };
const _m2: MigrateArgs = { uri: 'x', detach: true };
// @ts-expect-error uri is required
const _m3: MigrateArgs = { detach: true };
type CapsArgs = InferFields<typeof capsArgs>;
// @ts-expect-error 'bogus' is not in the enum
const _c1: CapsArgs = { capabilities: [{ capability: 'bogus', state: true }] };
void [_m1, _m2, _m3, _c1];

function rejects(fn: () => unknown, desc: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof QmpError, `expected QmpError, got ${String(err)}`);
    assert.equal(err.errorClass, 'GenericError');
    assert.equal(err.message, desc);
    return true;
  });
}

test('accepts valid arguments and drops nothing declared', () => {
  assert.deepEqual(validateFields(migrateArgs, { uri: 'tcp:a:1', detach: false }), { uri: 'tcp:a:1', detach: false });
  assert.deepEqual(validateFields(migrateArgs, { uri: 'u' }), { uri: 'u' });
});

test('missing, unexpected and mistyped members use QEMU wording', () => {
  rejects(() => validateFields(migrateArgs, {}), "Parameter 'uri' is missing");
  rejects(() => validateFields(migrateArgs, { uri: 'u', speed: 1 }), "Parameter 'speed' is unexpected");
  rejects(() => validateFields(migrateArgs, { uri: 5 }), "Invalid parameter type for 'uri', expected: string");
  rejects(() => validateFields(migrateArgs, { uri: 'u', detach: 't' }), "Invalid parameter type for 'detach', expected: boolean");
});

test('nested paths name array elements and members as QEMU does', () => {
  rejects(
    () => validateFields(capsArgs, { capabilities: [{ capability: 'xbzrle', state: 'yes' }] }),
    "Invalid parameter type for 'capabilities[0].state', expected: boolean",
  );
  rejects(() => validateFields(capsArgs, { capabilities: [{ capability: 'xbzrle', state: true }, { capability: 'events' }] }),
    "Parameter 'capabilities[1].state' is missing");
  rejects(() => validateFields(capsArgs, { capabilities: {} }), "Invalid parameter type for 'capabilities', expected: array");
  rejects(() => validateFields(capsArgs, { capabilities: [{ capability: 'bogus', state: true }] }),
    "Parameter 'capabilities[0].capability' does not accept value 'bogus'");
  rejects(() => validateFields(capsArgs, { capabilities: [{ capability: 3, state: true }] }),
    "Invalid parameter type for 'capabilities[0].capability', expected: string");
  rejects(() => validateFields(capsArgs, { capabilities: [[]] }), "Invalid parameter type for 'capabilities[0]', expected: object");
});

test('integers: int, uint and number', () => {
  assert.equal(validate(t.int, -5, 'x'), -5);
  rejects(() => validate(t.int, 1.5, 'x'), "Parameter 'x' expects int64");
  rejects(() => validate(t.int, '1', 'x'), "Invalid parameter type for 'x', expected: integer");
  rejects(() => validate(t.int, 2 ** 64, 'x'), "Parameter 'x' expects int64");
  assert.equal(validate(t.uint, 0, 'x'), 0);
  rejects(() => validate(t.uint, -1, 'downtime-limit'), "Parameter 'downtime-limit' expects uint64");
  rejects(() => validate(t.uint, 1.5, 'downtime-limit'), "Parameter 'downtime-limit' expects uint64");
  assert.equal(validate(t.number, 1.5, 'x'), 1.5);
  rejects(() => validate(t.number, true, 'x'), "Invalid parameter type for 'x', expected: number");
});

test('null is a type error unless the schema is nullable or any', () => {
  rejects(() => validate(t.str, null, 'tls-creds'), "Invalid parameter type for 'tls-creds', expected: string");
  assert.equal(validate(t.nullable(t.str), null, 'tls-creds'), null);
  assert.equal(validate(t.nullable(t.str), 'c', 'tls-creds'), 'c');
  rejects(() => validate(t.nullable(t.str), 1, 'tls-creds'), "Invalid parameter type for 'tls-creds', expected: string or null");
  assert.equal(validate(t.any, null, 'x'), null);
  assert.deepEqual(validate(t.any, { deep: [1] }, 'x'), { deep: [1] });
});

test('an inherited member name is not mistaken for an argument', () => {
  rejects(() => validateFields(migrateArgs, JSON.parse('{"uri":"u","__proto__":{"x":1}}') as Record<string, unknown>),
    "Parameter '__proto__' is unexpected");
  rejects(() => validateFields({ 'toString?': t.str }, { constructor: 'x' }), "Parameter 'constructor' is unexpected");
});

test('an empty enum is a programming error', () => {
  assert.throws(() => t.enum([]), RangeError);
});
