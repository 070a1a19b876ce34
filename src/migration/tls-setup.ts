// What a migration's TLS is, from its parameters and the objects object-add made (QEMU 7.2's
// migration/tls.c): `tls-creds` names the credentials, `tls-hostname` the name the source
// checks the destination's certificate against, `tls-authz` the one source certificate
// name a destination lets in. Everything here is decided before anything connects or
// listens, and refused in QEMU's words — never sent in clear instead. transport/tls.ts
// makes the sessions.

import { MigrationError } from '../errors.js';
import type { TlsCreds, TlsEndpoint } from '../crypto/tls-creds.js';

/** The object types that are TLS credentials (src/crypto/tls-creds.ts). */
const TLS_CREDS_TYPES: ReadonlySet<string> = new Set<TlsCreds['type']>(['tls-creds-x509', 'tls-creds-psk', 'tls-creds-anon']);
import type { Channel, Listener } from '../transport/channel.js';
import { tlsClientChannel, tlsListener, type TlsSetup } from '../transport/tls.js';
import { parseMigrationUri } from '../transport/uri.js';
import type { MigrationParameters } from './parameters.js';

/** The objects object-add made, by id (vmm/objects.ts). */
export type FindObject = ((id: string) => { readonly type: string } | undefined) | undefined;

/** A destination's TLS: its server credentials, and the identity tls-authz lets in. */
export type IncomingTls = Extract<TlsSetup, { role: 'server' }>;

/**
 * `tls-creds`: the credentials for this side (the source is the client, the destination the
 * server: QEMU's migration_tls_get_creds), or undefined without tls-creds. Refuses a
 * missing object, one that is no TLS credentials, or credentials made for the other end.
 */
export function tlsCredsFor(p: Readonly<MigrationParameters>, endpoint: TlsEndpoint, find: FindObject): TlsCreds | undefined {
  const id = p['tls-creds'];
  if (id === '') return undefined;
  const object = find?.(id);
  if (object === undefined) throw new MigrationError(`No TLS credentials with id '${id}'`);
  if (!TLS_CREDS_TYPES.has(object.type)) throw new MigrationError(`Object with id '${id}' is not TLS credentials`);
  const creds = object as TlsCreds;
  if (creds.endpoint !== endpoint) throw new MigrationError(`Expected TLS credentials for a ${endpoint} endpoint`);
  return creds;
}

/**
 * A destination's `tls-authz`: the authz-simple object it names, whose identity is the one
 * source certificate name let in (QEMU's qauthz_is_allowed_by_id, in its words); undefined
 * without tls-authz. QEMU checks it only for x509 credentials that verify the peer and
 * ignores it otherwise; Ferry refuses it there, rather than let every source in.
 */
export function tlsAuthzFor(p: Readonly<MigrationParameters>, creds: TlsCreds | undefined, find: FindObject): string | undefined {
  const id = p['tls-authz'];
  if (id === '') return undefined;
  const object = find?.(id);
  if (object === undefined) throw new MigrationError(`Cannot find QAuthZ object ID ${id}`);
  if (object.type !== 'authz-simple') throw new MigrationError(`Object '${id}' is not a QAuthZ subclass`);
  if (creds === undefined || creds.type !== 'tls-creds-x509' || !creds.verifyPeer) {
    throw new MigrationError(`tls-authz '${id}' checks the name in a source's certificate: it needs tls-creds naming tls-creds-x509 credentials with verify-peer=on`);
  }
  return (object as unknown as { readonly identity: string }).identity;
}

/**
 * The name a source checks the destination's certificate against: tls-hostname, else the
 * host of a tcp: URI (QEMU's migration_tls_client_create); none for unix:, fd:, exec:.
 */
export function tlsHostname(p: Readonly<MigrationParameters>, uri: string): string | undefined {
  if (p['tls-hostname'] !== '') return p['tls-hostname'];
  const parsed = parseMigrationUri(uri);
  return parsed.kind === 'tcp' && parsed.host !== '' ? parsed.host : undefined;
}

/** A destination's TLS (credentials and tls-authz), or undefined without tls-creds; refused as tlsCredsFor and tlsAuthzFor refuse. */
export function incomingTls(p: Readonly<MigrationParameters>, find: FindObject): IncomingTls | undefined {
  const creds = tlsCredsFor(p, 'server', find);
  const authz = tlsAuthzFor(p, creds, find);
  if (creds === undefined) return undefined;
  return { role: 'server', creds, ...(authz !== undefined ? { authz } : {}) };
}

/**
 * How a source opens each connection of a migration to `uri` — the main one and each
 * multifd channel — through `connect`: a TLS session when tls-creds says so (made by the
 * transport where it can, Channel.tls, else around the channel it returns). Checked now:
 * x509 credentials that verify the peer need a name to check it against.
 */
export function outgoingConnector(p: Readonly<MigrationParameters>, find: FindObject, uri: string, connect: (uri: string, options?: { tls?: TlsSetup }) => Promise<Channel>): () => Promise<Channel> {
  const creds = tlsCredsFor(p, 'client', find);
  if (creds === undefined) return () => connect(uri);
  const hostname = tlsHostname(p, uri);
  if (creds.type === 'tls-creds-x509' && creds.verifyPeer && hostname === undefined) {
    throw new MigrationError(`No hostname for certificate validation: ${uri} names no host; set tls-hostname to the name in the destination's certificate`);
  }
  const tls: TlsSetup = { role: 'client', creds, hostname };
  return async () => {
    const channel = await connect(uri, { tls });
    return channel.tls === true ? channel : tlsClientChannel(channel, creds, hostname);
  };
}

/** Listen on `uri` through `listen`; with `tls`, every connection accepted is a TLS session (the transport's, or wrapped). */
export async function listenWith(uri: string, tls: IncomingTls | undefined, listen: (uri: string, options?: { tls?: TlsSetup }) => Promise<Listener>): Promise<Listener> {
  if (tls === undefined) return listen(uri);
  return tlsListener(await listen(uri, { tls }), tls);
}
