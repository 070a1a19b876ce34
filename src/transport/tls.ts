// TLS around a migration channel, as QEMU 7.2 puts it around every channel of a migration
// whose `tls-creds` names a credentials object (migration/tls.c): the source is the TLS
// client, the destination the server, and the main connection and each multifd channel
// has its own session. Two ways: on a tcp: or unix: socket Node's TLS sits on the socket
// itself (secureSocketChannel, which the transport uses); around any other Channel — fd:,
// exec:, tests' memory channels — it sits on top of one, the inner channel carrying the
// encrypted bytes (tlsClientChannel, tlsServerChannel), several times slower. Either way
// guest pages can no longer go from guest RAM to the kernel by reference (vectored writes)
// or be read straight into it (scattered reads): every byte is encrypted or decrypted in
// this process, as in QEMU's.

import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { isIP, type Socket } from 'node:net';
import { TransportError } from '../errors.js';
import type { TlsCreds } from '../crypto/tls-creds.js';
import type { Channel, Listener } from './channel.js';
import { StreamChannel } from './stream-channel.js';

/** What a connection's TLS session is to be: the source's client side, or the destination's server side. */
export type TlsSetup =
  | { readonly role: 'client'; readonly creds: TlsCreds; readonly hostname: string | undefined }
  | { readonly role: 'server'; readonly creds: TlsCreds; readonly authz?: string };

/** How long a TLS handshake may take before the connection is given up. */
export const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * A Channel as a Node Duplex, for Node's TLS to read its encrypted bytes from and write
 * them to. Reads one chunk at a time, as the TLS layer asks; a write completes when the
 * inner channel can take more; ending it ends the inner channel's sending side.
 */
class ChannelDuplex extends Duplex {
  readonly #inner: Channel;
  #reading = false;

  constructor(inner: Channel) {
    super({ allowHalfOpen: true });
    this.#inner = inner;
  }

  override _read(): void {
    if (this.#reading) return;
    this.#reading = true;
    this.#inner.read().then(
      (chunk) => {
        this.#reading = false;
        if (chunk === null) {
          this.push(null);
          return;
        }
        if (this.push(chunk)) this._read();
      },
      () => {
        this.#reading = false;
        // A peer that read this side's last record (close_notify) may tear the connection
        // down at once, before this side has finished ending its own: for the session that
        // is its end. Read as one here. A connection broken in the middle still fails where
        // it matters: a source's next write fails, and a destination's stream ends before
        // its EOF section (a truncated stream, never a started guest).
        this.push(null);
      },
    );
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#inner.write(chunk).then(() => callback(), callback);
  }

  /**
   * The session's last record (close_notify) is out: the inner channel is flushed, then its
   * sending side ended. The peer may have read that record and closed the connection before
   * the end reaches it — an end that fails once everything was flushed is no failure.
   */
  override _final(callback: (error?: Error | null) => void): void {
    const inner = this.#inner;
    (inner.drain ? inner.drain() : Promise.resolve()).then(
      () => inner.end().then(() => callback(), () => callback()),
      callback,
    );
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#inner.destroy(error ?? undefined);
    callback(error);
  }
}

/**
 * The stream in clear over a TLS session on `inner`: reads and writes through the TLS
 * socket; unsent(), drain() and end() also cover what the inner channel still holds.
 */
class TlsChannel implements Channel {
  readonly description: string;
  readonly duplex = true;
  readonly #clear: StreamChannel;
  readonly #inner: Channel;
  readonly #duplex: ChannelDuplex;
  readonly holdReceived?: (bytes: number) => void;

  constructor(socket: tls.TLSSocket, duplex: ChannelDuplex, inner: Channel) {
    this.description = `${inner.description} (TLS)`;
    this.#inner = inner;
    this.#duplex = duplex;
    this.#clear = new StreamChannel({ description: this.description, readable: socket, writable: socket });
    const hold = inner.holdReceived?.bind(inner);
    if (hold) this.holdReceived = hold;
  }

  read(): Promise<Uint8Array | null> {
    return this.#clear.read();
  }

  write(data: Uint8Array, done?: () => void): Promise<void> {
    return this.#clear.write(data, done);
  }

  unsent(): number {
    return this.#clear.unsent() + this.#duplex.writableLength + (this.#inner.unsent?.() ?? 0);
  }

  async drain(): Promise<void> {
    await this.#clear.drain();
    // The TLS socket has handed its records to the duplex: wait until the inner channel has
    // them all (the duplex says no more than how much it still holds).
    while (this.#duplex.writableLength > 0) {
      if (this.#duplex.destroyed) throw new TransportError(`${this.description} was closed before everything written was flushed`);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await this.#inner.drain?.();
  }

  /**
   * Everything written flushed through the session and the inner channel (failures here
   * are real), then the session closed (close_notify) and the inner channel ended. The
   * peer may close as soon as it has read the last of the stream — a destination is done
   * at its EOF section — so a close that fails then has lost nothing: it is not an error.
   */
  async end(): Promise<void> {
    await this.drain();
    try {
      await this.#clear.end();
      if (!this.#duplex.writableFinished) {
        await new Promise<void>((resolve, reject) => {
          this.#duplex.once('finish', resolve);
          this.#duplex.once('error', reject);
          this.#duplex.once('close', resolve);
        });
      }
    } catch {
      this.destroy();
    }
  }

  destroy(error?: Error): void {
    this.#clear.destroy(error);
    this.#duplex.destroy(error);
    this.#inner.destroy(error);
  }
}

/**
 * A TLS session on a socket: a StreamChannel over the TLS socket, whose end() is as
 * TlsChannel's — what was written flushed (failures real), then the close a courtesy the
 * peer may no longer take.
 */
class SocketTlsChannel extends StreamChannel {
  override async end(): Promise<void> {
    await this.drain();
    try {
      await super.end();
    } catch {
      this.destroy();
    }
  }
}

/** What a TLS handshake error says, in QEMU's words where it has them (crypto/tlssession.c). */
function handshakeMessage(err: Error & { code?: string }): string {
  switch (err.code) {
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return err.message.replace(/^Hostname\/IP does not match certificate's altnames: /, 'Certificate does not match the hostname: ');
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
      return "The certificate hasn't got a known issuer";
    case 'CERT_HAS_EXPIRED':
      return 'The certificate has expired';
    case 'CERT_NOT_YET_VALID':
      return 'The certificate is not yet activated';
    case 'CERT_REVOKED':
      return 'The certificate has been revoked';
    case 'ECONNRESET':
      return `the peer closed the connection during the handshake (did it refuse this side's certificate?)`;
    default:
      return err.message;
  }
}

/**
 * A TLS session on `under` — a socket, or a Channel as a Duplex — as `setup` says: resolves
 * with the TLS socket once the handshake is done and the peer checked.
 *
 * Client: with verify-peer, the destination's certificate must chain to the CA and name
 * `hostname` (tls-hostname, else the tcp: URI's host); without one, refused before
 * anything is sent, in QEMU's words.
 *
 * Server: the session comes from a tls.Server handed the connection (its documented way to
 * take any Duplex): a TLSSocket made by hand would not check the client's certificate. With
 * verify-peer the source must present one that chains to the CA; the check is made here,
 * so that a refusal says why.
 */
function secure(under: Duplex, setup: TlsSetup, description: string): Promise<tls.TLSSocket> {
  const { creds } = setup;
  const verify = creds.type === 'tls-creds-x509' && creds.verifyPeer;
  return new Promise<tls.TLSSocket>((resolve, reject) => {
    let done = false;
    const timer = setTimeout(() => fail(new TransportError(`TLS handshake failed on ${description}: no answer within ${TLS_HANDSHAKE_TIMEOUT_MS / 1000} s`)), TLS_HANDSHAKE_TIMEOUT_MS);
    const finish = (): boolean => {
      if (done) return false;
      done = true;
      clearTimeout(timer);
      under.off('close', onClose);
      under.off('end', onClose);
      return true;
    };
    const fail = (error: Error): void => {
      if (!finish()) return;
      under.destroy();
      reject(error);
    };
    const failed = (err: Error & { code?: string }): void => fail(new TransportError(`TLS handshake failed on ${description}: ${handshakeMessage(err)}`, { cause: err }));
    // Later than the error that may have closed it: a refused certificate closes the
    // connection first and says why after.
    const onClose = (): void => void setImmediate(() => fail(new TransportError(`TLS handshake failed on ${description}: the peer closed the connection (does it use TLS too?)`)));
    // The peer's end of stream in the middle of a handshake is its failure too (a client that
    // refused the server's certificate hangs up; through a Channel, nothing else says so).
    under.once('close', onClose);
    under.once('end', onClose);
    if (setup.role === 'client') {
      const { hostname } = setup;
      if (verify && hostname === undefined) {
        fail(new TransportError(`TLS handshake failed on ${description}: No hostname for certificate validation (set tls-hostname)`));
        return;
      }
      const socket = tls.connect({ socket: under, ...clientOptions(creds, hostname) });
      socket.once('error', failed);
      socket.once('secureConnect', () => {
        if (!finish()) return;
        socket.off('error', failed);
        resolve(socket);
      });
      return;
    }
    const server = tls.createServer(serverOptions(creds));
    server.once('tlsClientError', failed);
    server.once('secureConnection', (socket: tls.TLSSocket) => {
      if (verify && !socket.authorized) {
        const code = String(socket.authorizationError ?? 'no certificate');
        socket.destroy();
        fail(new TransportError(`TLS handshake failed on ${description}: the source's certificate was refused: ${handshakeMessage(Object.assign(new Error(code), { code }))} (${code})`));
        return;
      }
      const allowed = setup.authz;
      if (allowed !== undefined) {
        const name = distinguishedName(socket);
        if (name !== allowed) {
          socket.destroy();
          fail(new TransportError(`TLS handshake failed on ${description}: TLS x509 authz check for ${name} is denied`));
          return;
        }
      }
      if (finish()) resolve(socket);
    });
    server.emit('connection', under);
  });
}

/**
 * With pre-shared keys: TLS 1.3's suites (whose hash is SHA-256: OpenSSL's PSK callbacks
 * use a key with them only), then TLS 1.2's PSK suites — what QEMU's GnuTLS adds for PSK
 * ("+ECDHE-PSK:+DHE-PSK:+PSK").
 */
const PSK_CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES128-CBC-SHA256:DHE-PSK-AES128-GCM-SHA256:PSK-AES128-GCM-SHA256';

/**
 * Anonymous credentials: TLS 1.2's anonymous Diffie-Hellman suites — what QEMU's GnuTLS
 * adds for them ("+ANON-DH"; TLS 1.3 has none) — at OpenSSL's security level 0, the only
 * one that allows a suite without authentication.
 */
const ANON_OPTIONS = { ciphers: 'ADH-AES256-GCM-SHA384:ADH-AES128-GCM-SHA256:ADH-AES256-SHA256:ADH-AES128-SHA256:@SECLEVEL=0', maxVersion: 'TLSv1.2' } as const;

/** Node's options for a client with `creds`, checking the server against `hostname` (x509 with verify-peer). */
function clientOptions(creds: TlsCreds, hostname: string | undefined): tls.ConnectionOptions {
  if (creds.type === 'tls-creds-anon') return { ...ANON_OPTIONS, rejectUnauthorized: false, checkServerIdentity: () => undefined };
  if (creds.type === 'tls-creds-psk') {
    const identity = creds.username!;
    const psk = creds.keys.get(identity)!;
    return { ciphers: PSK_CIPHERS, pskCallback: () => ({ identity, psk }), checkServerIdentity: () => undefined };
  }
  return {
    ca: creds.ca,
    ...(creds.cert && creds.key ? { cert: creds.cert, key: creds.key } : {}),
    rejectUnauthorized: creds.verifyPeer,
    // SNI takes a DNS name only.
    ...(hostname !== undefined && isIP(hostname) === 0 ? { servername: hostname } : {}),
    checkServerIdentity: (_host, cert) => (creds.verifyPeer && hostname !== undefined ? tls.checkServerIdentity(hostname, cert) : undefined),
  };
}

/** Node's options for a server with `creds`: an x509 one asks for the client's certificate with verify-peer (and checks it itself). */
function serverOptions(creds: TlsCreds): tls.TlsOptions {
  // Node's 'auto': well-known parameters of the key's strength (RFC 7919's groups).
  if (creds.type === 'tls-creds-anon') return { ...ANON_OPTIONS, dhparam: creds.dhParams ?? 'auto' };
  if (creds.type === 'tls-creds-psk') {
    // A name with no key here ends the handshake (the client's key cannot be known).
    return { ciphers: PSK_CIPHERS, pskCallback: (_socket, identity) => creds.keys.get(identity) ?? null };
  }
  return {
    ca: creds.ca,
    ...(creds.cert && creds.key ? { cert: creds.cert, key: creds.key } : {}),
    ...(creds.crl ? { crl: creds.crl } : {}),
    requestCert: creds.verifyPeer,
    rejectUnauthorized: false,
  };
}

/** The source's side over any channel: a TLS client session on `inner` (the bytes go through a Duplex). */
export async function tlsClientChannel(inner: Channel, creds: TlsCreds, hostname: string | undefined): Promise<Channel> {
  const duplex = new ChannelDuplex(inner);
  return new TlsChannel(await secure(duplex, { role: 'client', creds, hostname }, inner.description), duplex, inner);
}

/** The destination's side over any channel: a TLS server session on `inner`, as `setup` says. */
export async function tlsServerChannel(inner: Channel, setup: Extract<TlsSetup, { role: 'server' }>): Promise<Channel> {
  const duplex = new ChannelDuplex(inner);
  return new TlsChannel(await secure(duplex, setup, inner.description), duplex, inner);
}

/**
 * A client certificate's name as QEMU 7.2's GnuTLS gives it (gnutls_x509_crt_get_dn), which
 * its authz objects match: the attributes in the certificate's order, joined by commas — a
 * certificate made with `-subj /CN=Ferry client/O=Ferry Org` is "CN=Ferry client,O=Ferry
 * Org" (QEMU's own denial said so, by hand; not RFC 4514's reversed order). Node lists the
 * subject in the certificate's order too, one attribute a line.
 */
export function distinguishedName(socket: tls.TLSSocket): string {
  const subject = socket.getPeerX509Certificate()?.subject ?? '';
  return subject.split('\n').filter((part) => part !== '').join(',');
}

/**
 * A TLS session straight on a connected socket (tcp:, unix:): Node's TLS then reads and
 * writes the descriptor itself, with no JavaScript between the encryption and the kernel —
 * several times faster than through a Channel. `fd` is the socket's descriptor: its send
 * queue still counts as not delivered, and `receiveBuffer` holds its receive queue.
 */
export async function secureSocketChannel(raw: Socket, setup: TlsSetup, description: string, fd: number | undefined, receiveBuffer?: (bytes: number) => void): Promise<Channel> {
  const socket = await secure(raw, setup, description);
  return new SocketTlsChannel({
    description: `${description} (TLS)`,
    readable: socket,
    writable: socket,
    tls: true,
    ...(fd !== undefined ? { sendQueueFd: () => (raw.destroyed ? undefined : fd) } : {}),
    ...(receiveBuffer ? { receiveBuffer } : {}),
  });
}

/**
 * A listener whose every accepted connection is a TLS server session (the main one and
 * each multifd channel): as the inner listener made it (Channel.tls), or wrapped here.
 */
export function tlsListener(inner: Listener, setup: Extract<TlsSetup, { role: 'server' }>): Listener {
  return {
    description: inner.description,
    address: inner.address,
    accept: async () => {
      const channel = await inner.accept();
      return channel.tls === true ? channel : tlsServerChannel(channel, setup);
    },
    close: () => inner.close(),
  };
}
