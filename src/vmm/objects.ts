// User-creatable objects, as QEMU's `-object` and QMP `object-add` / `object-del` make
// them: for now the kinds a migration uses — `tls-creds-x509` and `tls-creds-psk` (what
// `tls-creds` names), `authz-simple` (what `tls-authz` names) — and the memory backends
// guest RAM can come from (`-machine memory-backend=ID`).
// QEMU keeps them under /objects by id; so does this registry.

import { ConfigError } from '../errors.js';
import { loadTlsCredsAnon, loadTlsCredsPsk, loadTlsCredsX509, type TlsCreds } from '../crypto/tls-creds.js';
import { parseSize } from '../size.js';

/** QEMU's authz-simple: the one identity (an x509 client certificate's name) it lets in. */
export interface AuthzSimple {
  readonly type: 'authz-simple';
  readonly id: string;
  readonly identity: string;
}

/** QEMU's memory-backend-file and memory-backend-ram, with the properties Ferry takes. */
export interface MemoryBackend {
  readonly type: 'memory-backend-file' | 'memory-backend-ram';
  readonly id: string;
  readonly size: number;
  /** memory-backend-file: the file (or a directory for a file of this VM's own). */
  readonly memPath?: string;
  /** MAP_SHARED: another process mapping the file sees the same memory. */
  readonly share: boolean;
  readonly prealloc: boolean;
}

export type UserObject = TlsCreds | AuthzSimple | MemoryBackend;

/** A boolean property as QEMU reads one from -object (on/off, yes/no, true/false) or from QMP (a JSON boolean). */
function boolProperty(name: string, value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  if (typeof value === 'string') {
    if (['on', 'yes', 'true', 'y'].includes(value)) return true;
    if (['off', 'no', 'false', 'n'].includes(value)) return false;
  }
  throw new ConfigError(`Parameter '${name}' expects 'on' or 'off'`);
}

/** memory-backend-file / memory-backend-ram from their properties, checked as QEMU checks them. */
function memoryBackendMaker(type: MemoryBackend['type']): (id: string, props: Record<string, unknown>) => MemoryBackend {
  return (id, props) => {
    let size = 0;
    let memPath: string | undefined;
    let share = false;
    let prealloc = false;
    for (const [name, value] of Object.entries(props)) {
      if (name === 'size') {
        if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) size = value;
        else if (typeof value === 'string') size = parseSize(value, `${type} size`);
        else throw new ConfigError("Parameter 'size' expects a size");
      } else if (name === 'mem-path' && type === 'memory-backend-file') {
        if (typeof value !== 'string') throw new ConfigError("Invalid parameter type for 'mem-path', expected: string");
        memPath = value;
      } else if (name === 'share') {
        share = boolProperty(name, value);
      } else if (name === 'prealloc') {
        prealloc = boolProperty(name, value);
      } else {
        throw new ConfigError(`Ferry's ${type} takes ${type === 'memory-backend-file' ? 'size, mem-path, share and prealloc' : 'size, share and prealloc'}, not '${name}'`);
      }
    }
    if (size === 0) throw new ConfigError("can't create backend with size 0");
    if (size % 4096 !== 0) throw new ConfigError(`${type} '${id}': size ${size} is not a multiple of 4 KiB`);
    if (type === 'memory-backend-file' && (memPath === undefined || memPath === '')) throw new ConfigError('mem-path property not set');
    if (type === 'memory-backend-ram' && share) {
      throw new ConfigError(`memory-backend-ram '${id}': share=on would share anonymous memory no other process can map; use memory-backend-file with a mem-path (e.g. under /dev/shm)`);
    }
    return Object.freeze({ type, id, size, ...(memPath !== undefined ? { memPath } : {}), share, prealloc });
  };
}

/** Whether `object` is a memory backend. */
export function isMemoryBackend(object: UserObject | undefined): object is MemoryBackend {
  return object?.type === 'memory-backend-file' || object?.type === 'memory-backend-ram';
}

/** authz-simple from its properties, as QEMU's (the identity is required). */
function makeAuthzSimple(id: string, props: Record<string, unknown>): AuthzSimple {
  let identity: string | undefined;
  for (const [name, value] of Object.entries(props)) {
    if (name !== 'identity') throw new ConfigError(`Property 'authz-simple.${name}' not found`);
    if (typeof value !== 'string') throw new ConfigError("Invalid parameter type for 'identity', expected: string");
    identity = value;
  }
  if (identity === undefined) throw new ConfigError("The 'identity' property must be set");
  return Object.freeze({ type: 'authz-simple', id, identity });
}

/** The object types Ferry creates, and how each is built from its properties. */
const MAKERS: Readonly<Record<string, (id: string, props: Record<string, unknown>) => UserObject>> = {
  'tls-creds-x509': loadTlsCredsX509,
  'tls-creds-psk': loadTlsCredsPsk,
  'tls-creds-anon': loadTlsCredsAnon,
  'authz-simple': makeAuthzSimple,
  'memory-backend-file': memoryBackendMaker('memory-backend-file'),
  'memory-backend-ram': memoryBackendMaker('memory-backend-ram'),
};

/**
 * QEMU object types Ferry knows of and does not create, so that asking for one says that
 * rather than that no such type exists.
 */
const NOT_CREATED = new Set(['secret', 'secret_keyring', 'authz-list', 'authz-listfile', 'authz-pam', 'memory-backend-memfd', 'iothread', 'rng-random', 'rng-builtin', 'throttle-group']);

/** QEMU's id_wellformed: a letter, then letters, digits, '-', '.' and '_'. */
const ID = /^[A-Za-z][A-Za-z0-9_.-]*$/;

export class ObjectRegistry {
  readonly #objects = new Map<string, UserObject>();

  /**
   * object-add / -object: make an object of `type` called `id` from `props`. Refused, with
   * nothing changed, for a bad id, a taken one, a type Ferry does not create, or
   * properties the type refuses (its own words: a missing file, a certificate that does
   * not verify).
   */
  add(type: string, id: string, props: Record<string, unknown>): UserObject {
    if (!ID.test(id)) throw new ConfigError("Parameter 'id' expects an identifier");
    const make = MAKERS[type];
    if (make === undefined) {
      if (NOT_CREATED.has(type)) throw new ConfigError(`Ferry does not create objects of type '${type}' (it creates: ${Object.keys(MAKERS).join(', ')})`);
      throw new ConfigError(`Parameter 'qom-type' does not accept value '${type}'`);
    }
    if (this.#objects.has(id)) throw new ConfigError(`attempt to add duplicate property '${id}' to object (type 'container')`);
    const object = make(id, props);
    this.#objects.set(id, object);
    return object;
  }

  /** object-del. A migration that is running keeps what it took when it began. */
  delete(id: string): void {
    if (!this.#objects.delete(id)) throw new ConfigError(`object '${id}' not found`);
  }

  get(id: string): UserObject | undefined {
    return this.#objects.get(id);
  }

  /** Ids and types, in the order they were made (qom-list /objects). */
  list(): Array<{ id: string; type: string }> {
    return [...this.#objects].map(([id, o]) => ({ id, type: o.type }));
  }
}

/**
 * QEMU's `-object TYPE,id=ID,key=value,…` (also `qom-type=TYPE,…`) as the type, id and
 * properties; values stay strings, which each type reads as it reads the command line. A
 * doubled comma is a comma in a value, as in QEMU's (an authz identity "CN=a,,O=b").
 */
export function parseObjectOption(text: string): { type: string; id: string; props: Record<string, string> } {
  const parts = text.replaceAll(',,', '\u0000').split(',').map((part) => part.replaceAll('\u0000', ','));
  let type: string | undefined;
  const props: Record<string, string> = {};
  parts.forEach((part, i) => {
    const eq = part.indexOf('=');
    if (eq < 0) {
      if (i === 0 && part !== '') type = part;
      else throw new ConfigError(`Invalid -object "${text}": "${part}" is not key=value`);
      return;
    }
    const key = part.slice(0, eq);
    if (key in props) throw new ConfigError(`Invalid -object "${text}": ${key} given twice`);
    props[key] = part.slice(eq + 1);
  });
  if (type === undefined) {
    type = props['qom-type'];
    delete props['qom-type'];
  }
  if (type === undefined) throw new ConfigError(`Invalid -object "${text}": no type (TYPE,id=ID,… or qom-type=TYPE,id=ID,…)`);
  const id = props['id'];
  delete props['id'];
  if (id === undefined) throw new ConfigError(`Invalid -object "${text}": Parameter 'id' is missing`);
  return { type, id, props };
}
