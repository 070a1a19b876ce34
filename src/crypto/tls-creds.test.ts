import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { ConfigError } from '../errors.js';
import { loadTlsCredsX509, type TlsCredsX509 } from './tls-creds.js';
import { clientExtensions, makeTestCa, makeTestCert, makeTestCerts, makeTestCrl, serverExtensions, type TestCerts } from './test-certs.js';

let root: string;
let certs: TestCerts;

before(() => {
  root = mkdtempSync(join(tmpdir(), 'ferry-tls-creds-'));
  certs = makeTestCerts(join(root, 'certs'));
});

after(() => rmSync(root, { recursive: true, force: true }));

let dirCount = 0;
/** A fresh credentials directory holding copies of `files` (name in the directory → source path). */
function credsDir(files: Record<string, string>): string {
  const dir = join(root, `case-${++dirCount}`);
  mkdirSync(dir);
  for (const [name, source] of Object.entries(files)) copyFileSync(source, join(dir, name));
  return dir;
}

const serverFile = (name: string): string => join(certs.serverDir, name);
const clientFile = (name: string): string => join(certs.clientDir, name);

/** Loading throws a ConfigError whose whole message matches `message`. */
function refuses(props: Record<string, unknown>, message: RegExp): void {
  assert.throws(
    () => loadTlsCredsX509('tls0', props),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
      assert.match(err.message, message);
      return true;
    },
  );
}

/** A path as a regex that matches it literally. */
function re(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

describe('loading', () => {
  test('a server directory loads with its files as read, and QEMU defaults for what is not given', () => {
    const creds = loadTlsCredsX509('tls0', { dir: certs.serverDir, endpoint: 'server' });
    assert.equal(creds.type, 'tls-creds-x509');
    assert.equal(creds.id, 'tls0');
    assert.equal(creds.endpoint, 'server');
    assert.equal(creds.verifyPeer, true);
    assert.equal(creds.dir, certs.serverDir);
    assert.deepEqual(creds.ca, readFileSync(serverFile('ca-cert.pem')));
    assert.deepEqual(creds.cert, readFileSync(serverFile('server-cert.pem')));
    assert.deepEqual(creds.key, readFileSync(serverFile('server-key.pem')));
    assert.equal(creds.crl, undefined);
    assert.ok(Object.isFrozen(creds));
  });

  test('endpoint defaults to client, and a client directory loads its client-cert.pem and client-key.pem', () => {
    const creds = loadTlsCredsX509('tls0', { dir: certs.clientDir });
    assert.equal(creds.endpoint, 'client');
    assert.equal(creds.verifyPeer, true);
    assert.deepEqual(creds.cert, readFileSync(clientFile('client-cert.pem')));
    assert.deepEqual(creds.key, readFileSync(clientFile('client-key.pem')));
  });

  test('one directory with both ends\' files serves as either end', () => {
    const server = loadTlsCredsX509('s', { dir: certs.bothDir, endpoint: 'server' });
    const client = loadTlsCredsX509('c', { dir: certs.bothDir, endpoint: 'client' });
    assert.deepEqual(server.cert, readFileSync(serverFile('server-cert.pem')));
    assert.deepEqual(client.cert, readFileSync(clientFile('client-cert.pem')));
  });

  test('a client without client-cert.pem loads, with no certificate or key', () => {
    const creds = loadTlsCredsX509('tls0', { dir: credsDir({ 'ca-cert.pem': certs.caCert }) });
    assert.equal(creds.cert, undefined);
    assert.equal(creds.key, undefined);
  });

  test('a client certificate without its key is not used (QEMU presents both or neither)', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert, 'client-cert.pem': clientFile('client-cert.pem') });
    const creds = loadTlsCredsX509('tls0', { dir });
    assert.equal(creds.cert, undefined);
    assert.equal(creds.key, undefined);
  });

  test('booleans from the command line: on/off, yes/no, true/false, y/n; loaded is taken and ignored', () => {
    const off = loadTlsCredsX509('tls0', { dir: certs.clientDir, 'verify-peer': 'off', 'sanity-check': 'no', loaded: 'on' });
    assert.equal(off.verifyPeer, false);
    assert.equal(loadTlsCredsX509('tls0', { dir: certs.clientDir, 'verify-peer': 'y' }).verifyPeer, true);
    assert.equal(loadTlsCredsX509('tls0', { dir: certs.clientDir, 'verify-peer': false }).verifyPeer, false);
    refuses({ dir: certs.clientDir, 'verify-peer': 'maybe' }, /^Parameter 'verify-peer' expects 'on' or 'off'$/);
    refuses({ dir: certs.clientDir, 'sanity-check': 1 }, /^Invalid parameter type for 'sanity-check', expected: boolean$/);
    refuses({ dir: 7 }, /^Invalid parameter type for 'dir', expected: string$/);
  });

  test('a CRL next to a server\'s certificates is loaded; a client does not look for one', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert, 'server-cert.pem': serverFile('server-cert.pem'), 'server-key.pem': serverFile('server-key.pem') });
    makeTestCrl(certs.ca, join(dir, 'ca-crl.pem'));
    assert.deepEqual(loadTlsCredsX509('tls0', { dir, endpoint: 'server' }).crl, readFileSync(join(dir, 'ca-crl.pem')));
    const clientDir = credsDir({ 'ca-cert.pem': certs.caCert, 'ca-crl.pem': join(dir, 'ca-crl.pem') });
    assert.equal(loadTlsCredsX509('tls0', { dir: clientDir }).crl, undefined);
  });
});

describe('properties refused', () => {
  test('an endpoint that is neither client nor server', () => {
    refuses({ dir: certs.serverDir, endpoint: 'both' }, /^Parameter 'endpoint' does not accept value 'both'$/);
  });

  test('a property tls-creds-x509 does not have', () => {
    refuses({ dir: certs.serverDir, colour: 'blue' }, /^Property 'tls-creds-x509\.colour' not found$/);
  });

  test('passwordid: Ferry has no secret objects', () => {
    refuses({ dir: certs.serverDir, passwordid: 'sec0' }, /^Cannot use 'passwordid' for tls-creds-x509 'tls0': Ferry has no secret objects/);
  });

  test('priority: a GnuTLS priority string Node cannot apply', () => {
    refuses({ dir: certs.serverDir, priority: 'NORMAL' }, /^Cannot use 'priority' for tls-creds-x509 'tls0': it is a GnuTLS priority string/);
  });

  test('properties are read in order: the first refused is the one named', () => {
    refuses({ colour: 'blue', endpoint: 'both' }, /^Property 'tls-creds-x509\.colour' not found$/);
  });
});

describe('files refused', () => {
  test('no dir: a client needs ca-cert.pem, so dir is missing', () => {
    refuses({}, /^Missing 'dir' property value$/);
    refuses({ endpoint: 'server' }, /^Missing 'dir' property value$/);
  });

  test('no ca-cert.pem', () => {
    const dir = credsDir({});
    refuses({ dir }, new RegExp(`^Unable to access credentials ${re(dir)}/ca-cert\\.pem: No such file or directory$`));
  });

  test('a dir that does not exist', () => {
    const dir = join(root, 'nowhere');
    refuses({ dir }, new RegExp(`^Unable to access credentials ${re(dir)}/ca-cert\\.pem: No such file or directory$`));
  });

  test('a dir that is a file: stat fails with ENOTDIR, in strerror\'s words', () => {
    refuses({ dir: certs.caCert }, new RegExp(`^Unable to access credentials ${re(certs.caCert)}/ca-cert\\.pem: Not a directory$`));
  });

  test('a server without server-key.pem (and without server-cert.pem)', () => {
    const noKey = credsDir({ 'ca-cert.pem': certs.caCert, 'server-cert.pem': serverFile('server-cert.pem') });
    refuses({ dir: noKey, endpoint: 'server' }, new RegExp(`^Unable to access credentials ${re(noKey)}/server-key\\.pem: No such file or directory$`));
    refuses({ dir: certs.clientDir, endpoint: 'server' }, new RegExp(`^Unable to access credentials ${re(certs.clientDir)}/server-cert\\.pem: No such file or directory$`));
  });

  test('a corrupt CA certificate: the sanity check cannot import it; without the check, loading cannot', () => {
    const dir = credsDir({ 'server-cert.pem': serverFile('server-cert.pem'), 'server-key.pem': serverFile('server-key.pem') });
    writeFileSync(join(dir, 'ca-cert.pem'), 'not a certificate\n');
    const path = re(join(dir, 'ca-cert.pem'));
    refuses({ dir, endpoint: 'server' }, new RegExp(`^Unable to import CA certificate list ${path}: no PEM certificate found$`));
    refuses({ dir, endpoint: 'server', 'sanity-check': 'off' }, new RegExp(`^Cannot load CA certificate '${path}': no PEM certificate found$`));
    // A PEM block whose contents are not a certificate.
    writeFileSync(join(dir, 'ca-cert.pem'), '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
    refuses({ dir, endpoint: 'server', 'sanity-check': 'off' }, new RegExp(`^Cannot load CA certificate '${path}': certificate 1 in the file is not valid \\(.+\\)$`));
  });

  test('a corrupt server certificate', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert, 'server-key.pem': serverFile('server-key.pem') });
    writeFileSync(join(dir, 'server-cert.pem'), 'garbage');
    const cert = re(join(dir, 'server-cert.pem'));
    const key = re(join(dir, 'server-key.pem'));
    refuses({ dir, endpoint: 'server' }, new RegExp(`^Unable to import server certificate ${cert}: no PEM certificate found$`));
    refuses({ dir, endpoint: 'server', 'sanity-check': 'off' }, new RegExp(`^Cannot load certificate '${cert}' & key '${key}': no PEM certificate found$`));
  });

  test('a corrupt key', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert, 'server-cert.pem': serverFile('server-cert.pem') });
    writeFileSync(join(dir, 'server-key.pem'), '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n');
    const cert = re(join(dir, 'server-cert.pem'));
    const key = re(join(dir, 'server-key.pem'));
    refuses({ dir, endpoint: 'server' }, new RegExp(`^Cannot load certificate '${cert}' & key '${key}': the key is not a usable PEM private key \\(.+\\)$`));
  });

  test('a key that is not the certificate\'s', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert, 'server-cert.pem': serverFile('server-cert.pem'), 'server-key.pem': clientFile('client-key.pem') });
    const cert = re(join(dir, 'server-cert.pem'));
    const key = re(join(dir, 'server-key.pem'));
    refuses({ dir, endpoint: 'server' }, new RegExp(`^Cannot load certificate '${cert}' & key '${key}': The certificate and the given key do not match\\.$`));
  });

  test('a corrupt CRL', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert, 'server-cert.pem': serverFile('server-cert.pem'), 'server-key.pem': serverFile('server-key.pem') });
    writeFileSync(join(dir, 'ca-crl.pem'), 'junk');
    refuses({ dir, endpoint: 'server' }, new RegExp(`^Cannot load CRL '${re(join(dir, 'ca-crl.pem'))}': Failed to parse CRL$`));
  });
});

describe('sanity check', () => {
  test('a server certificate with a CA that did not sign it; sanity-check=off lets it load', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.otherCa.certPath, 'server-cert.pem': serverFile('server-cert.pem'), 'server-key.pem': serverFile('server-key.pem') });
    refuses(
      { dir, endpoint: 'server' },
      new RegExp(`^Our own certificate ${re(join(dir, 'server-cert.pem'))} failed validation against ${re(join(dir, 'ca-cert.pem'))}: The certificate hasn't got a known issuer$`),
    );
    assert.equal(loadTlsCredsX509('tls0', { dir, endpoint: 'server', 'sanity-check': 'off' }).endpoint, 'server');
  });

  test('a client certificate of another CA, with that CA, loads (the server will refuse it, not the loader)', () => {
    assert.ok(loadTlsCredsX509('tls0', { dir: certs.otherCaClientDir }).cert);
  });

  test('a certificate whose signature does not check against its issuer', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert });
    makeTestCert(certs.ca, join(dir, 'client-cert.pem'), join(dir, 'client-key.pem'), { subject: 'forged', extensions: clientExtensions(), badSignature: true });
    refuses(
      { dir },
      new RegExp(`^Our own certificate ${re(join(dir, 'client-cert.pem'))} failed validation against ${re(join(dir, 'ca-cert.pem'))}: The certificate is not trusted$`),
    );
  });

  test('a CA bundle: one of several CA certificates issued ours', () => {
    const dir = credsDir({ 'client-cert.pem': clientFile('client-cert.pem'), 'client-key.pem': clientFile('client-key.pem') });
    writeFileSync(join(dir, 'ca-cert.pem'), Buffer.concat([readFileSync(certs.otherCa.certPath), readFileSync(certs.caCert)]));
    assert.ok(loadTlsCredsX509('tls0', { dir }).cert);
  });

  test('a "CA" that is not one: CA:FALSE, or no basic constraints at all', () => {
    const leaf = credsDir({ 'ca-cert.pem': clientFile('client-cert.pem') });
    refuses({ dir: leaf }, new RegExp(`^The certificate ${re(join(leaf, 'ca-cert.pem'))} basic constraints do not show a CA$`));
    const bare = makeTestCa(join(root, 'bare-ca'), 'Ferry CA without basic constraints', { extensions: ['keyUsage = keyCertSign'] });
    const dir = credsDir({ 'ca-cert.pem': bare.certPath });
    refuses({ dir }, new RegExp(`^The certificate ${re(join(dir, 'ca-cert.pem'))} is missing basic constraints for a CA$`));
  });

  test('a CA whose critical key usage does not permit certificate signing', () => {
    const ca = makeTestCa(join(root, 'no-sign-ca'), 'Ferry CA that may not sign', { extensions: ['basicConstraints = critical, CA:TRUE', 'keyUsage = critical, cRLSign'] });
    const dir = credsDir({ 'ca-cert.pem': ca.certPath });
    refuses({ dir }, new RegExp(`^Certificate ${re(join(dir, 'ca-cert.pem'))} usage does not permit certificate signing$`));
  });

  test('our own certificate may not be a CA', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert });
    makeTestCert(certs.ca, join(dir, 'server-cert.pem'), join(dir, 'server-key.pem'), {
      subject: 'localhost',
      extensions: ['basicConstraints = critical, CA:TRUE', 'extendedKeyUsage = serverAuth'],
    });
    refuses({ dir, endpoint: 'server' }, new RegExp(`^The certificate ${re(join(dir, 'server-cert.pem'))} basic constraints show a CA, but we need one for a server$`));
  });

  test('a critical key usage without digital signature, or without key encipherment', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert });
    const cert = join(dir, 'client-cert.pem');
    makeTestCert(certs.ca, cert, join(dir, 'client-key.pem'), { subject: 'c', extensions: ['keyUsage = critical, keyEncipherment'] });
    refuses({ dir }, new RegExp(`^Certificate ${re(cert)} usage does not permit digital signature$`));
    makeTestCert(certs.ca, cert, join(dir, 'client-key.pem'), { subject: 'c', extensions: ['keyUsage = critical, digitalSignature'] });
    refuses({ dir }, new RegExp(`^Certificate ${re(cert)} usage does not permit key encipherment$`));
    // Not critical: QEMU lets it pass.
    makeTestCert(certs.ca, cert, join(dir, 'client-key.pem'), { subject: 'c', extensions: ['keyUsage = digitalSignature'] });
    assert.ok(loadTlsCredsX509('tls0', { dir }).cert);
  });

  test('a client certificate whose critical purpose is serverAuth only; not critical, QEMU lets it pass', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert });
    const cert = join(dir, 'client-cert.pem');
    makeTestCert(certs.ca, cert, join(dir, 'client-key.pem'), { subject: 'c', extensions: ['extendedKeyUsage = critical, serverAuth'] });
    refuses({ dir }, new RegExp(`^Certificate ${re(cert)} purpose does not allow use with a TLS client$`));
    makeTestCert(certs.ca, cert, join(dir, 'client-key.pem'), { subject: 'c', extensions: ['extendedKeyUsage = serverAuth'] });
    assert.ok(loadTlsCredsX509('tls0', { dir }).cert);
    // anyExtendedKeyUsage allows either end, even critical.
    makeTestCert(certs.ca, cert, join(dir, 'client-key.pem'), { subject: 'c', extensions: ['extendedKeyUsage = critical, anyExtendedKeyUsage'] });
    assert.ok(loadTlsCredsX509('tls0', { dir }).cert);
  });

  test('a server certificate whose critical purpose is clientAuth only', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert });
    const cert = join(dir, 'server-cert.pem');
    makeTestCert(certs.ca, cert, join(dir, 'server-key.pem'), { subject: 's', extensions: ['extendedKeyUsage = critical, clientAuth'] });
    refuses({ dir, endpoint: 'server' }, new RegExp(`^Certificate ${re(cert)} purpose does not allow use with a TLS server$`));
  });

  test('an expired certificate, and an expired CA', () => {
    const dir = credsDir({ 'ca-cert.pem': certs.caCert });
    const cert = join(dir, 'server-cert.pem');
    makeTestCert(certs.ca, cert, join(dir, 'server-key.pem'), { subject: 'localhost', extensions: serverExtensions(), days: -1 });
    refuses({ dir, endpoint: 'server' }, new RegExp(`^The server certificate ${re(cert)} has expired$`));
    const old = makeTestCa(join(root, 'expired-ca'), 'Ferry expired CA', { days: -1 });
    const caDir = credsDir({ 'ca-cert.pem': old.certPath });
    refuses({ dir: caDir }, new RegExp(`^The CA certificate ${re(join(caDir, 'ca-cert.pem'))} has expired$`));
  });
});

describe('the loaded credentials with node:tls', () => {
  /**
   * Connect a client with `client` creds to a server with `server` creds over loopback, and
   * send one message: whether the server accepted the connection, and what went wrong for
   * the client, if anything. (Node's server drops a client it does not trust without an
   * alert, so the client may see only the connection closing.)
   */
  async function handshake(
    server: TlsCredsX509,
    client: TlsCredsX509,
    host: string,
    servername?: string,
  ): Promise<{ accepted: boolean; client: Error | undefined }> {
    const srv = tls.createServer({
      ca: server.ca,
      ...(server.cert && server.key ? { cert: server.cert, key: server.key } : {}),
      requestCert: server.verifyPeer,
      rejectUnauthorized: server.verifyPeer,
    });
    let accepted = false;
    srv.on('tlsClientError', () => {});
    srv.once('secureConnection', (socket) => {
      accepted = true;
      socket.end('ok');
    });
    srv.listen(0, host);
    await once(srv, 'listening');
    const { port } = srv.address() as AddressInfo;
    const socket = tls.connect({
      host,
      port,
      ...(servername !== undefined ? { servername } : {}),
      ca: client.ca,
      ...(client.cert && client.key ? { cert: client.cert, key: client.key } : {}),
      rejectUnauthorized: client.verifyPeer,
    });
    // The server's message, or why it never came: an error, or the connection closing.
    const clientSide = new Promise<Buffer>((resolve, reject) => {
      socket.once('data', resolve);
      socket.once('error', reject);
      socket.once('close', () => reject(new Error('closed before the server spoke')));
    }).then(
      (data) => (data.toString() === 'ok' ? undefined : new Error(`unexpected message ${data.toString()}`)),
      (err: unknown) => err as Error,
    );
    try {
      // The server accepts before it writes, so the client's outcome settles both.
      const client = await clientSide;
      return { accepted, client };
    } finally {
      socket.destroy();
      srv.close();
    }
  }

  test('a server and a client made by makeTestCerts complete a mutually verified handshake, by IP and by name', async () => {
    const server = loadTlsCredsX509('s', { dir: certs.serverDir, endpoint: 'server' });
    const client = loadTlsCredsX509('c', { dir: certs.clientDir, endpoint: 'client' });
    assert.deepEqual(await handshake(server, client, '127.0.0.1'), { accepted: true, client: undefined });
    assert.deepEqual(await handshake(server, client, '127.0.0.1', 'localhost'), { accepted: true, client: undefined });
    // The client checks the name it was given against the certificate's.
    assert.match(String((await handshake(server, client, '127.0.0.1', 'elsewhere.example')).client), /does not match certificate's altnames/);
    // ::1 is in the certificate too, checked without a socket: not every test host has IPv6 loopback.
    assert.equal(new X509Certificate(readFileSync(serverFile('server-cert.pem'))).checkIP('::1'), '::1');
  });

  test('serverNames add to the server certificate\'s names', () => {
    const more = makeTestCerts(join(root, 'more-names'), { serverNames: ['ferry.test', '10.0.0.7'] });
    const cert = new X509Certificate(readFileSync(join(more.serverDir, 'server-cert.pem')));
    assert.equal(cert.subjectAltName, 'IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, DNS:localhost, DNS:ferry.test, IP Address:10.0.0.7');
  });

  test('the server refuses a client certificate from another CA', async () => {
    const server = loadTlsCredsX509('s', { dir: certs.serverDir, endpoint: 'server' });
    // The client trusts the right CA (to get as far as sending its certificate) but presents one of another.
    const other = loadTlsCredsX509('c', { dir: certs.otherCaClientDir, endpoint: 'client' });
    const client = { ...other, ca: server.ca };
    const result = await handshake(server, client, '127.0.0.1');
    assert.equal(result.accepted, false);
    assert.ok(result.client instanceof Error, 'the client hears nothing but the connection closing');
  });
});
