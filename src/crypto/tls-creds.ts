// QEMU 7.2's `tls-creds-x509` object: X.509 credentials read once, when the object is made,
// from a directory by QEMU's file names, and checked as qcrypto_tls_creds_x509_load checks
// them (crypto/tlscredsx509.c, crypto/tlscreds.c), so that a directory QEMU accepts loads
// here and one QEMU refuses is refused in QEMU's words. What comes out is PEM for node:tls;
// who verifies whom during a session is not this file's business (transport/tls.ts).

import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { ConfigError, errorMessage } from '../errors.js';
import { errnoName } from '../sys/libc.js';
import { type CertificateExtensions, OID_ANY_EXTENDED_KEY_USAGE, OID_SERVER_AUTH, OID_CLIENT_AUTH, KU_DIGITAL_SIGNATURE, KU_KEY_ENCIPHERMENT, KU_KEY_CERT_SIGN, hasKeyUsage, readExtensions } from './x509-extensions.js';

export type TlsEndpoint = 'client' | 'server';

export interface TlsCredsX509 {
  readonly type: 'tls-creds-x509';
  readonly id: string;
  readonly endpoint: TlsEndpoint;
  readonly verifyPeer: boolean;
  readonly dir: string;
  /** PEM contents as read at load time (QEMU reads them once, at object creation). */
  readonly ca: Buffer;
  /** ca-crl.pem: read for a server only, and only when it is there. */
  readonly crl: Buffer | undefined;
  /**
   * server-cert.pem (a server must have it) or client-cert.pem (a client may). Set only
   * together with `key`: QEMU presents a certificate only when it has both files.
   */
  readonly cert: Buffer | undefined;
  /** server-key.pem or client-key.pem; set only together with `cert`. */
  readonly key: Buffer | undefined;
}

/**
 * QEMU's tls-creds-psk: pre-shared keys from DIR/keys.psk, lines of `name:hexkey` (as
 * psktool writes them). A client holds the key of its `username` (QEMU's default "qemu");
 * a server every key, found by the name the client gives.
 */
export interface TlsCredsPsk {
  readonly type: 'tls-creds-psk';
  readonly id: string;
  readonly endpoint: TlsEndpoint;
  readonly dir: string;
  /** A client's identity (username, or "qemu"); undefined for a server. */
  readonly username: string | undefined;
  /** name → key: a client's one, or all of a server's. */
  readonly keys: ReadonlyMap<string, Buffer>;
}

/**
 * QEMU's tls-creds-anon: anonymous Diffie-Hellman, no certificate and no key — the session
 * is encrypted, but neither end knows who the other is. A server may take its DH
 * parameters from DIR/dh-params.pem.
 */
export interface TlsCredsAnon {
  readonly type: 'tls-creds-anon';
  readonly id: string;
  readonly endpoint: TlsEndpoint;
  /** A server's DH parameters (PEM), when DIR/dh-params.pem was there. */
  readonly dhParams: Buffer | undefined;
}

/** Any kind of TLS credentials `tls-creds` may name. */
export type TlsCreds = TlsCredsX509 | TlsCredsPsk | TlsCredsAnon;

/** QEMU's DH parameters file in a credentials directory (include/crypto/tlscreds.h). */
export const DH_PARAMS_FILE = 'dh-params.pem';

/** QEMU's pre-shared key file name (include/crypto/tlscredspsk.h). */
export const PSK_FILE = 'keys.psk';
/** The identity a QEMU PSK client uses without a username. */
export const DEFAULT_PSK_USERNAME = 'qemu';

/** QEMU's file names in a credentials directory (include/crypto/tlscredsx509.h). */
export const CA_CERT_FILE = 'ca-cert.pem';
export const CA_CRL_FILE = 'ca-crl.pem';
export const SERVER_CERT_FILE = 'server-cert.pem';
export const SERVER_KEY_FILE = 'server-key.pem';
export const CLIENT_CERT_FILE = 'client-cert.pem';
export const CLIENT_KEY_FILE = 'client-key.pem';

const TYPE = 'tls-creds-x509';

/** What `-object` / `object-add` set, once every property has been read. */
interface CredsProperties {
  dir: string | undefined;
  endpoint: TlsEndpoint;
  verifyPeer: boolean;
  sanityCheck: boolean;
  /** tls-creds-psk only. */
  username: string | undefined;
}

/**
 * Make a tls-creds-x509 object called `id` from its properties, as object-add or -object
 * give them (without `qom-type` and `id`): JSON values from QMP, or strings from the
 * command line, which booleans accept as QEMU's do ('on'/'off', 'yes'/'no', …). Reads and
 * checks the files now; throws ConfigError in QEMU's words for anything QEMU refuses, and
 * for the two properties Ferry cannot honour (`passwordid`, `priority`).
 */
export function loadTlsCredsX509(id: string, props: Record<string, unknown>): TlsCredsX509 {
  const p = readProperties(TYPE, id, props);
  const isServer = p.endpoint === 'server';

  // The order QEMU looks for the files in, so the first missing one is the one named.
  // QEMU's server also takes dh-params.pem; Ferry does not look for it: Node negotiates
  // ECDHE (and TLS 1.3 has no use for the file), so finite-field DH parameters go unused.
  const caPath = credentialPath(p.dir, CA_CERT_FILE, true);
  const crlPath = isServer ? credentialPath(p.dir, CA_CRL_FILE, false) : undefined;
  const certPath = credentialPath(p.dir, isServer ? SERVER_CERT_FILE : CLIENT_CERT_FILE, isServer);
  const keyPath = credentialPath(p.dir, isServer ? SERVER_KEY_FILE : CLIENT_KEY_FILE, isServer);
  // ca-cert.pem is required at both ends, so a missing dir has been refused by now.
  const dir = p.dir ?? '';

  const ca = readCredential(caPath);
  const cert = certPath === undefined ? undefined : readCredential(certPath);
  const key = keyPath === undefined ? undefined : readCredential(keyPath);
  const crl = crlPath === undefined ? undefined : readCredential(crlPath);

  if (p.sanityCheck) sanityCheck(isServer, ca, cert);

  const caPem = loadTrust(ca);
  // As QEMU: a certificate without its key (or a key without its certificate) is not
  // used. The certificate was still checked above, as QEMU checks it.
  let pair: { cert: Buffer; key: Buffer } | undefined;
  if (cert !== undefined && key !== undefined) pair = loadCertAndKey(cert, key);
  const crlPem = crl === undefined ? undefined : loadCrl(crl);

  return Object.freeze({
    type: TYPE,
    id,
    endpoint: p.endpoint,
    verifyPeer: p.verifyPeer,
    dir,
    ca: caPem,
    crl: crlPem,
    cert: pair?.cert,
    key: pair?.key,
  });
}

// --- Properties -----------------------------------------------------------------------

/**
 * Make a tls-creds-psk object called `id` (properties as for loadTlsCredsX509): reads
 * DIR/keys.psk now, as QEMU's qcrypto_tls_creds_psk_load does, in its words — a server
 * may not have a username, a client's username (or "qemu") must have a key there. Each
 * key must be hex (GnuTLS's GNUTLS_PSK_KEY_HEX).
 */
export function loadTlsCredsPsk(id: string, props: Record<string, unknown>): TlsCredsPsk {
  const p = readProperties(PSK_TYPE, id, props);
  const isServer = p.endpoint === 'server';
  if (isServer && p.username !== undefined) throw new ConfigError('username should not be set when endpoint=server');
  const path = credentialPath(p.dir, PSK_FILE, true);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`Cannot read PSK file ${path}: ${strerror(err)}`, { cause: err });
  }
  const keys = new Map<string, Buffer>();
  const wanted = isServer ? undefined : (p.username ?? DEFAULT_PSK_USERNAME);
  for (const [i, line] of text.split('\n').entries()) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon);
    if (wanted !== undefined && name !== wanted) continue;
    const hex = line.slice(colon + 1).trim();
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) {
      throw new ConfigError(`Cannot set PSK ${isServer ? 'server' : 'client'} credentials: the key of '${name}' (line ${i + 1} of ${path}) is not hex`);
    }
    // The first line for a name wins, as QEMU's lookup_key takes the first.
    if (!keys.has(name)) keys.set(name, Buffer.from(hex, 'hex'));
  }
  if (wanted !== undefined && !keys.has(wanted)) throw new ConfigError(`Username ${wanted} not found in PSK file ${path}`);
  return Object.freeze({ type: PSK_TYPE, id, endpoint: p.endpoint, dir: p.dir ?? '', username: wanted, keys });
}

const PSK_TYPE = 'tls-creds-psk';
const ANON_TYPE = 'tls-creds-anon';

/**
 * Make a tls-creds-anon object called `id` (properties as for loadTlsCredsX509): nothing
 * to load but a server's DIR/dh-params.pem, when a dir is given and the file is there
 * (QEMU's qcrypto_tls_creds_anon_load; without it, it makes parameters, as Node does).
 */
export function loadTlsCredsAnon(id: string, props: Record<string, unknown>): TlsCredsAnon {
  const p = readProperties(ANON_TYPE, id, props);
  const path = p.endpoint === 'server' && p.dir !== undefined ? credentialPath(p.dir, DH_PARAMS_FILE, false) : undefined;
  let dhParams: Buffer | undefined;
  if (path !== undefined) {
    const file = readCredential(path);
    if (file.data === undefined) throw new ConfigError(`Cannot load DH parameters from ${path}: ${readFailure(file)}`, { cause: file.readError });
    if (!/-----BEGIN DH PARAMETERS-----/.test(file.data.toString('latin1'))) throw new ConfigError(`Cannot load DH parameters from ${path}: not PEM-encoded DH parameters`);
    dhParams = file.data;
  }
  return Object.freeze({ type: ANON_TYPE, id, endpoint: p.endpoint, dhParams });
}

function readProperties(type: typeof TYPE | typeof PSK_TYPE | typeof ANON_TYPE, id: string, props: Record<string, unknown>): CredsProperties {
  const p: CredsProperties = { dir: undefined, endpoint: 'client', verifyPeer: true, sanityCheck: true, username: undefined };
  // In the order given: QEMU sets properties one by one and stops at the first it refuses.
  for (const [name, value] of Object.entries(props)) {
    if (type !== TYPE && (name === 'sanity-check' || name === 'passwordid')) throw new ConfigError(`Property '${type}.${name}' not found`);
    if (type !== PSK_TYPE && name === 'username') throw new ConfigError(`Property '${type}.${name}' not found`);
    switch (name) {
      case 'username':
        p.username = stringProperty(name, value);
        break;
      case 'dir':
        p.dir = stringProperty(name, value);
        break;
      case 'endpoint': {
        const endpoint = stringProperty(name, value);
        if (endpoint !== 'client' && endpoint !== 'server') {
          throw new ConfigError(`Parameter 'endpoint' does not accept value '${endpoint}'`);
        }
        p.endpoint = endpoint;
        break;
      }
      case 'verify-peer':
        p.verifyPeer = boolProperty(name, value);
        break;
      case 'sanity-check':
        p.sanityCheck = boolProperty(name, value);
        break;
      case 'loaded':
        // Deprecated in QEMU and without effect: credentials are loaded when the object
        // is complete whatever it says. Checked as a boolean, then ignored.
        boolProperty(name, value);
        break;
      case 'passwordid':
        stringProperty(name, value);
        throw new ConfigError(
          `Cannot use 'passwordid' for ${TYPE} '${id}': Ferry has no secret objects to hold the key's password; ` +
            'decrypt the key (openssl pkey -in KEY -out KEY) and leave passwordid out',
        );
      case 'priority':
        stringProperty(name, value);
        throw new ConfigError(
          `Cannot use 'priority' for ${type} '${id}': it is a GnuTLS priority string, and Ferry's TLS is Node's ` +
            '(OpenSSL), which cannot apply one; leave priority out',
        );
      default:
        throw new ConfigError(`Property '${type}.${name}' not found`);
    }
  }
  return p;
}

function stringProperty(name: string, value: unknown): string {
  if (typeof value !== 'string') throw new ConfigError(`Invalid parameter type for '${name}', expected: string`);
  return value;
}

// The spellings QEMU's qapi_bool_parse takes from the command line.
const ON = new Set(['on', 'yes', 'true', 'y']);
const OFF = new Set(['off', 'no', 'false', 'n']);

function boolProperty(name: string, value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  if (typeof value !== 'string') throw new ConfigError(`Invalid parameter type for '${name}', expected: boolean`);
  if (ON.has(value)) return true;
  if (OFF.has(value)) return false;
  throw new ConfigError(`Parameter '${name}' expects 'on' or 'off'`);
}

// --- Files ----------------------------------------------------------------------------

/**
 * qcrypto_tls_creds_get_path: DIR/FILE if it can be stat()ed; undefined for an optional
 * file that does not exist (or when there is no directory and the file is optional).
 */
function credentialPath(dir: string | undefined, file: string, required: true): string;
function credentialPath(dir: string | undefined, file: string, required: boolean): string | undefined;
function credentialPath(dir: string | undefined, file: string, required: boolean): string | undefined {
  if (dir === undefined) {
    if (required) throw new ConfigError("Missing 'dir' property value");
    return undefined;
  }
  // Joined as QEMU joins them ("%s/%s"), so the path in a message is the one QEMU prints.
  const path = `${dir}/${file}`;
  try {
    statSync(path);
    return path;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !required) return undefined;
    throw new ConfigError(`Unable to access credentials ${path}: ${strerror(err)}`, { cause: err });
  }
}

/** The C library's text for a failed fs call's errno, as QEMU's error_setg_errno prints it. */
function strerror(err: unknown): string {
  const errno = (err as NodeJS.ErrnoException).errno;
  // Node reports errno negated (libuv's convention).
  return typeof errno === 'number' ? errnoName(Math.abs(errno)) : errorMessage(err);
}

/** A credentials file: its path and its bytes, or why they could not be read. */
interface Credential {
  readonly path: string;
  readonly data: Buffer | undefined;
  readonly readError: unknown;
}

function readCredential(path: string): Credential {
  try {
    return { path, data: readFileSync(path), readError: undefined };
  } catch (err) {
    // stat() found it, but it cannot be read (permissions, a directory). QEMU's sanity
    // check skips such a file and GnuTLS's loader then fails on it; so do these.
    return { path, data: undefined, readError: err };
  }
}

/** Why a file that stat() found could not be read: GnuTLS's words, and the errno's. */
function readFailure(file: Credential): string {
  return `Error while reading file (${strerror(file.readError)})`;
}

// --- PEM ------------------------------------------------------------------------------

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** QEMU's MAX_CERTS: at most this many CA certificates in ca-cert.pem are checked. */
const MAX_CA_CERTS = 16;

/** Every certificate in a PEM file, in order; text around them is ignored, as GnuTLS does. */
function parseCertificates(pem: Buffer): X509Certificate[] {
  const blocks = pem.toString('latin1').match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new Error('no PEM certificate found');
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new Error(`certificate ${i + 1} in the file is not valid (${errorMessage(err)})`, { cause: err });
    }
  });
}

/** The first certificate of a PEM file (the rest, if any, is its chain). */
function parseFirstCertificate(pem: Buffer): X509Certificate {
  const first = parseCertificates(pem)[0];
  if (first === undefined) throw new Error('no PEM certificate found');
  return first;
}

function parsePrivateKey(pem: Buffer): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (err) {
    // An encrypted key lands here too: Node says a passphrase is required.
    throw new Error(`the key is not a usable PEM private key (${errorMessage(err)})`, { cause: err });
  }
}

// --- Loading, as GnuTLS would load the files -----------------------------------------

function loadTrust(ca: Credential): Buffer {
  const fail = (reason: string, cause?: unknown): ConfigError =>
    new ConfigError(`Cannot load CA certificate '${ca.path}': ${reason}`, { cause });
  if (ca.data === undefined) throw fail(readFailure(ca), ca.readError);
  try {
    parseCertificates(ca.data);
  } catch (err) {
    throw fail(errorMessage(err), err);
  }
  return ca.data;
}

function loadCertAndKey(cert: Credential, key: Credential): { cert: Buffer; key: Buffer } {
  const fail = (reason: string, cause?: unknown): ConfigError =>
    new ConfigError(`Cannot load certificate '${cert.path}' & key '${key.path}': ${reason}`, { cause });
  if (cert.data === undefined) throw fail(readFailure(cert), cert.readError);
  if (key.data === undefined) throw fail(readFailure(key), key.readError);
  let x509: X509Certificate;
  let privateKey: KeyObject;
  try {
    x509 = parseFirstCertificate(cert.data);
    privateKey = parsePrivateKey(key.data);
  } catch (err) {
    throw fail(errorMessage(err), err);
  }
  // GnuTLS's text for GNUTLS_E_CERTIFICATE_KEY_MISMATCH.
  if (!x509.checkPrivateKey(privateKey)) throw fail('The certificate and the given key do not match.');
  return { cert: cert.data, key: key.data };
}

function loadCrl(crl: Credential): Buffer {
  const fail = (reason: string, cause?: unknown): ConfigError => new ConfigError(`Cannot load CRL '${crl.path}': ${reason}`, { cause });
  if (crl.data === undefined) throw fail(readFailure(crl), crl.readError);
  // node:crypto has no CRL parser; a secure context parses it as a session would.
  try {
    createSecureContext({ crl: crl.data });
  } catch (err) {
    throw fail(errorMessage(err), err);
  }
  return crl.data;
}

// --- Sanity check (qcrypto_tls_creds_x509_sanity_check) -------------------------------

/**
 * Check our own certificate (when there is one) and every CA certificate as QEMU does:
 * validity times, basic constraints, key usage, and for our own certificate its purpose
 * and that one of the CAs issued it. Files that could not be read are skipped, as QEMU
 * skips what access(R_OK) refuses; loading them fails afterwards.
 */
function sanityCheck(isServer: boolean, ca: Credential, cert: Credential | undefined): void {
  const role = isServer ? 'server' : 'client';
  let own: X509Certificate | undefined;
  if (cert?.data !== undefined) {
    try {
      own = parseFirstCertificate(cert.data);
    } catch (err) {
      throw new ConfigError(`Unable to import ${role} certificate ${cert.path}: ${errorMessage(err)}`, { cause: err });
    }
  }
  let cas: X509Certificate[] = [];
  if (ca.data !== undefined) {
    try {
      cas = parseCertificates(ca.data);
    } catch (err) {
      throw new ConfigError(`Unable to import CA certificate list ${ca.path}: ${errorMessage(err)}`, { cause: err });
    }
    // GnuTLS's list import refuses a list longer than the array QEMU gives it.
    if (cas.length > MAX_CA_CERTS) {
      throw new ConfigError(`Unable to import CA certificate list ${ca.path}: more than ${MAX_CA_CERTS} certificates`);
    }
  }

  if (own !== undefined && cert !== undefined) checkCertificate(own, cert.path, isServer, false);
  for (const caCert of cas) checkCertificate(caCert, ca.path, isServer, true);
  if (own !== undefined && cert !== undefined && cas.length > 0) checkIssuedBy(own, cert.path, cas, ca.path);
}

function checkCertificate(cert: X509Certificate, path: string, isServer: boolean, isCA: boolean): void {
  checkTimes(cert, path, isServer, isCA);
  // Node's X509Certificate tells neither whether an extension is critical nor whether
  // basicConstraints is there at all (`ca` is false both for CA:FALSE and for no
  // extension), and QEMU's checks turn on both: so the extensions are read from the DER.
  let ext: CertificateExtensions;
  try {
    ext = readExtensions(cert.raw);
  } catch (err) {
    throw new ConfigError(`Unable to query certificate ${path} extensions: ${errorMessage(err)}`, { cause: err });
  }
  checkBasicConstraints(ext, path, isServer, isCA);
  checkKeyUsage(ext, path, isCA);
  if (!isCA) checkKeyPurpose(ext, path, isServer);
}

function checkTimes(cert: X509Certificate, path: string, isServer: boolean, isCA: boolean): void {
  const what = isCA ? 'CA' : isServer ? 'server' : 'client';
  // Node 20 gives the times as OpenSSL prints them ("Dec  7 22:39:33 2026 GMT").
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  if (Number.isNaN(notBefore) || Number.isNaN(notAfter)) {
    throw new ConfigError(`Unable to read the validity times of certificate ${path} ('${cert.validFrom}' to '${cert.validTo}')`);
  }
  // GnuTLS compares whole seconds.
  const now = Math.floor(Date.now() / 1000) * 1000;
  if (notAfter < now) throw new ConfigError(`The ${what} certificate ${path} has expired`);
  if (notBefore > now) throw new ConfigError(`The ${what} certificate ${path} is not yet active`);
}

function checkBasicConstraints(ext: CertificateExtensions, path: string, isServer: boolean, isCA: boolean): void {
  const bc = ext.basicConstraints;
  if (bc === undefined) {
    if (isCA) throw new ConfigError(`The certificate ${path} is missing basic constraints for a CA`);
  } else if (bc.ca) {
    if (!isCA) {
      throw new ConfigError(`The certificate ${path} basic constraints show a CA, but we need one for a ${isServer ? 'server' : 'client'}`);
    }
  } else if (isCA) {
    throw new ConfigError(`The certificate ${path} basic constraints do not show a CA`);
  }
}

/** Only a critical keyUsage that lacks a bit is refused, as in QEMU. */
function checkKeyUsage(ext: CertificateExtensions, path: string, isCA: boolean): void {
  const ku = ext.keyUsage;
  if (ku === undefined || !ku.critical) return;
  if (isCA) {
    if (!hasKeyUsage(ku.bits, KU_KEY_CERT_SIGN)) throw new ConfigError(`Certificate ${path} usage does not permit certificate signing`);
    return;
  }
  if (!hasKeyUsage(ku.bits, KU_DIGITAL_SIGNATURE)) throw new ConfigError(`Certificate ${path} usage does not permit digital signature`);
  if (!hasKeyUsage(ku.bits, KU_KEY_ENCIPHERMENT)) throw new ConfigError(`Certificate ${path} usage does not permit key encipherment`);
}

/**
 * extendedKeyUsage: no extension allows both ends; otherwise serverAuth (or anyExtendedKeyUsage)
 * allows a server, clientAuth a client. As in QEMU, a purpose that does not fit is refused
 * only when the extension is critical. (OpenSSL, which Node's TLS is, checks the peer's
 * purpose during the handshake whatever the criticality; that is the session's affair.)
 */
function checkKeyPurpose(ext: CertificateExtensions, path: string, isServer: boolean): void {
  const eku = ext.extKeyUsage;
  if (eku === undefined || !eku.critical) return;
  const any = eku.purposes.includes(OID_ANY_EXTENDED_KEY_USAGE);
  if (isServer && !any && !eku.purposes.includes(OID_SERVER_AUTH)) {
    throw new ConfigError(`Certificate ${path} purpose does not allow use with a TLS server`);
  }
  if (!isServer && !any && !eku.purposes.includes(OID_CLIENT_AUTH)) {
    throw new ConfigError(`Certificate ${path} purpose does not allow use with a TLS client`);
  }
}

/**
 * qcrypto_tls_creds_check_cert_pair: one of the CA certificates issued ours. Every
 * certificate in ca-cert.pem is a trust anchor, so there is no chain to build: one
 * that names ours as issued by it (subject and key identifier, checkIssued) and whose
 * key checks our signature is enough. Times and CA-ness were checked above.
 */
function checkIssuedBy(cert: X509Certificate, certPath: string, cas: readonly X509Certificate[], caPath: string): void {
  const issuers = cas.filter((ca) => cert.checkIssued(ca));
  if (issuers.some((ca) => cert.verify(ca.publicKey))) return;
  // GnuTLS's reasons: no CA by the issuer's name, or one whose key does not check the signature.
  const reason = issuers.length === 0 ? "The certificate hasn't got a known issuer" : 'The certificate is not trusted';
  throw new ConfigError(`Our own certificate ${certPath} failed validation against ${caPath}: ${reason}`);
}
