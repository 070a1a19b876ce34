// Certificates for tests, made with the openssl CLI and laid out under QEMU's
// tls-creds-x509 file names (ca-cert.pem, server-cert.pem, …), so a test can point a
// credentials object — Ferry's or QEMU's — at a directory. Keys are EC P-256, made by
// node:crypto without a process; each certificate costs one openssl run.

import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';

/** A CA's certificate and private key, as files. */
export interface TestCa {
  readonly certPath: string;
  readonly keyPath: string;
}

/** The extensions a CA gets unless told otherwise: what QEMU's sanity check asks of one. */
export const CA_EXTENSIONS: readonly string[] = [
  'basicConstraints = critical, CA:TRUE',
  'keyUsage = critical, keyCertSign, cRLSign',
  'subjectKeyIdentifier = hash',
];

/**
 * A leaf's usual extensions. keyUsage names both bits QEMU wants of a critical one
 * (digitalSignature and keyEncipherment), as certtool's templates in QEMU's docs do.
 */
const LEAF_EXTENSIONS: readonly string[] = [
  'basicConstraints = critical, CA:FALSE',
  'keyUsage = critical, digitalSignature, keyEncipherment',
  'subjectKeyIdentifier = hash',
  'authorityKeyIdentifier = keyid',
];

/** Subject alternative names every test server certificate has: the loopback addresses and localhost. */
export const DEFAULT_SERVER_NAMES: readonly string[] = ['127.0.0.1', '::1', 'localhost'];

export function serverExtensions(names: readonly string[] = DEFAULT_SERVER_NAMES): string[] {
  const alt = names.map((name) => (isIP(name) !== 0 ? `IP:${name}` : `DNS:${name}`)).join(', ');
  return [...LEAF_EXTENSIONS, 'extendedKeyUsage = serverAuth', `subjectAltName = ${alt}`];
}

export function clientExtensions(): string[] {
  return [...LEAF_EXTENSIONS, 'extendedKeyUsage = clientAuth'];
}

/** Write an EC P-256 key pair: the private key (PKCS#8 PEM) at `keyPath`, the public key returned as PEM. */
function writeKeyPair(keyPath: string): string {
  const { privateKey, publicKey } = generateKeyPairSync('ec', {
    namedCurve: 'prime256v1',
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  writeFileSync(keyPath, privateKey, { mode: 0o600 });
  return publicKey;
}

/** A positive serial number, random so two runs never issue the same one. */
function serial(): string {
  const bytes = randomBytes(8);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return `0x${bytes.toString('hex')}`;
}

function openssl(args: string[]): void {
  // stdio piped: openssl's chatter stays out of test output; a failure carries it.
  execFileSync('openssl', args, { stdio: 'pipe' });
}

/**
 * A self-signed CA in `dir` (ca-cert.pem, ca-key.pem), named `name`, valid for `days`
 * from now. `extensions` replaces CA_EXTENSIONS, for a CA made wrong on purpose.
 */
export function makeTestCa(dir: string, name: string, options: { extensions?: readonly string[]; days?: number } = {}): TestCa {
  mkdirSync(dir, { recursive: true });
  const certPath = join(dir, 'ca-cert.pem');
  const keyPath = join(dir, 'ca-key.pem');
  writeKeyPair(keyPath);
  const extFile = join(dir, '.ca.ext');
  writeFileSync(extFile, `${(options.extensions ?? CA_EXTENSIONS).join('\n')}\n`);
  try {
    openssl(['x509', '-new', '-subj', `/CN=${name}`, '-key', keyPath, '-set_serial', serial(), '-days', String(options.days ?? 1), '-extfile', extFile, '-out', certPath]);
  } finally {
    rmSync(extFile, { force: true });
  }
  return { certPath, keyPath };
}

/**
 * A certificate for a fresh key, signed by `ca`: written to `certPath`, its key to `keyPath`.
 * `extensions` are openssl extension-config lines (serverExtensions(), clientExtensions(),
 * or a test's own). A negative `days` makes one that has already expired; `badSignature`
 * one whose signature does not check (openssl -badsig).
 */
export function makeTestCert(
  ca: TestCa,
  certPath: string,
  keyPath: string,
  options: { subject: string; extensions: readonly string[]; days?: number; badSignature?: boolean },
): void {
  const publicKey = writeKeyPair(keyPath);
  const pubFile = `${certPath}.pub.tmp`;
  const extFile = `${certPath}.ext.tmp`;
  writeFileSync(pubFile, publicKey);
  writeFileSync(extFile, `${options.extensions.join('\n')}\n`);
  try {
    openssl([
      'x509', '-new', '-subj', `/CN=${options.subject}`, '-force_pubkey', pubFile,
      '-CA', ca.certPath, '-CAkey', ca.keyPath, '-set_serial', serial(), '-days', String(options.days ?? 1),
      '-extfile', extFile, '-out', certPath, ...(options.badSignature === true ? ['-badsig'] : []),
    ]);
  } finally {
    rmSync(pubFile, { force: true });
    rmSync(extFile, { force: true });
  }
}

/** An empty CRL (nothing revoked) issued by `ca`, valid for a day, written to `crlPath`. */
export function makeTestCrl(ca: TestCa, crlPath: string): void {
  // `openssl ca` wants a database and a CRL number file; they live beside the CRL for the run.
  const config = `${crlPath}.cnf.tmp`;
  const index = `${crlPath}.index.tmp`;
  const number = `${crlPath}.number.tmp`;
  writeFileSync(config, `[ca]\ndefault_ca = test\n[test]\ndatabase = ${index}\ncrlnumber = ${number}\ndefault_md = sha256\ndefault_crl_days = 1\n`);
  writeFileSync(index, '');
  writeFileSync(number, '01\n');
  try {
    openssl(['ca', '-gencrl', '-config', config, '-keyfile', ca.keyPath, '-cert', ca.certPath, '-out', crlPath]);
  } finally {
    for (const f of [config, index, number, `${index}.attr`, `${index}.old`, `${number}.old`]) rmSync(f, { force: true });
  }
}

export interface TestCerts {
  /** ca-cert.pem, server-cert.pem, server-key.pem: an `endpoint=server` directory. */
  readonly serverDir: string;
  /** ca-cert.pem, client-cert.pem, client-key.pem: an `endpoint=client` directory. */
  readonly clientDir: string;
  /** The CA and both ends' files in one directory, as QEMU's users often keep them. */
  readonly bothDir: string;
  /** A client set signed by a different CA (its ca-cert.pem is that CA): for "unknown issuer". */
  readonly otherCaClientDir: string;
  /** The main CA's certificate (the ca-cert.pem of serverDir, clientDir and bothDir). */
  readonly caCert: string;
  /** The main CA, to sign more certificates with (makeTestCert). */
  readonly ca: TestCa;
  /** The other CA, that signed otherCaClientDir's client certificate. */
  readonly otherCa: TestCa;
}

/**
 * Make a CA, and certificates for a server (SANs: IP 127.0.0.1, IP ::1, DNS localhost,
 * plus `serverNames`) and a client, signed by it, under `root`, in QEMU's file names; and
 * a client set signed by a different CA. CA keys stay in their own directories, out of
 * the credentials directories.
 */
export function makeTestCerts(root: string, options: { serverNames?: string[] } = {}): TestCerts {
  const ca = makeTestCa(join(root, 'ca'), 'Ferry test CA');
  const otherCa = makeTestCa(join(root, 'other-ca'), 'Ferry other test CA');

  const serverDir = join(root, 'server');
  const clientDir = join(root, 'client');
  const bothDir = join(root, 'both');
  const otherCaClientDir = join(root, 'other-ca-client');
  for (const dir of [serverDir, clientDir, bothDir, otherCaClientDir]) mkdirSync(dir, { recursive: true });

  const names = [...DEFAULT_SERVER_NAMES, ...(options.serverNames ?? [])];
  makeTestCert(ca, join(serverDir, 'server-cert.pem'), join(serverDir, 'server-key.pem'), { subject: 'localhost', extensions: serverExtensions(names) });
  makeTestCert(ca, join(clientDir, 'client-cert.pem'), join(clientDir, 'client-key.pem'), { subject: 'Ferry test client', extensions: clientExtensions() });
  makeTestCert(otherCa, join(otherCaClientDir, 'client-cert.pem'), join(otherCaClientDir, 'client-key.pem'), {
    subject: 'Ferry test client of another CA',
    extensions: clientExtensions(),
  });

  for (const dir of [serverDir, clientDir, bothDir]) copyFileSync(ca.certPath, join(dir, 'ca-cert.pem'));
  copyFileSync(otherCa.certPath, join(otherCaClientDir, 'ca-cert.pem'));
  for (const file of ['server-cert.pem', 'server-key.pem']) copyFileSync(join(serverDir, file), join(bothDir, file));
  for (const file of ['client-cert.pem', 'client-key.pem']) copyFileSync(join(clientDir, file), join(bothDir, file));

  return { serverDir, clientDir, bothDir, otherCaClientDir, caCert: ca.certPath, ca, otherCa };
}
