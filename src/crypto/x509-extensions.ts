// X.509 extensions read from a certificate's DER: what QEMU's sanity check asks GnuTLS for
// (basic constraints, key usage, extended key usage, and whether each is critical), which
// Node's X509Certificate does not tell. A small bounds-checked reader of the few DER shapes
// involved; anything else in a certificate is skipped over.

/** The extensions QEMU's sanity check looks at; undefined when the certificate has none of that kind. */
export interface CertificateExtensions {
  readonly basicConstraints: { readonly ca: boolean } | undefined;
  /** The KeyUsage BIT STRING's content (first byte: the count of unused bits). */
  readonly keyUsage: { readonly bits: Uint8Array; readonly critical: boolean } | undefined;
  readonly extKeyUsage: { readonly purposes: readonly string[]; readonly critical: boolean } | undefined;
}

const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_KEY_USAGE = '2.5.29.15';
const OID_EXT_KEY_USAGE = '2.5.29.37';
export const OID_ANY_EXTENDED_KEY_USAGE = '2.5.29.37.0';
export const OID_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
export const OID_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

// KeyUsage bit numbers (RFC 5280 4.2.1.3); bit 0 is the first bit of the string.
export const KU_DIGITAL_SIGNATURE = 0;
export const KU_KEY_ENCIPHERMENT = 2;
export const KU_KEY_CERT_SIGN = 5;

export function hasKeyUsage(bits: Uint8Array, bit: number): boolean {
  const byte = bits[1 + (bit >> 3)];
  return byte !== undefined && (byte & (0x80 >> (bit & 7))) !== 0;
}

const TAG_BOOLEAN = 0x01;
const TAG_BIT_STRING = 0x03;
const TAG_OCTET_STRING = 0x04;
const TAG_OID = 0x06;
const TAG_SEQUENCE = 0x30;
/** [3] EXPLICIT, constructed: where TBSCertificate keeps its extensions. */
const TAG_EXTENSIONS = 0xa3;

/** One DER element: its tag, and where its content starts and ends in the buffer. */
interface Tlv {
  readonly tag: number;
  readonly start: number;
  readonly end: number;
}

/**
 * Certificate → TBSCertificate → [3] → Extensions, keeping the three QEMU asks about.
 * OpenSSL has already parsed this certificate, but the reader still checks every length
 * against its container: it trusts nothing it has not bounded itself.
 */
export function readExtensions(der: Uint8Array): CertificateExtensions {
  let basicConstraints: CertificateExtensions['basicConstraints'];
  let keyUsage: CertificateExtensions['keyUsage'];
  let extKeyUsage: CertificateExtensions['extKeyUsage'];

  const certificate = expectTag(readTlv(der, 0, der.length), TAG_SEQUENCE, 'Certificate');
  const tbs = expectTag(readTlv(der, certificate.start, certificate.end), TAG_SEQUENCE, 'TBSCertificate');
  const wrapper = children(der, tbs).find((t) => t.tag === TAG_EXTENSIONS);
  if (wrapper !== undefined) {
    const list = expectTag(readTlv(der, wrapper.start, wrapper.end), TAG_SEQUENCE, 'Extensions');
    for (const extension of children(der, list)) {
      expectTag(extension, TAG_SEQUENCE, 'Extension');
      const [idTlv, second, third] = children(der, extension);
      if (idTlv === undefined || second === undefined) throw new Error('an extension is missing its id or value');
      const oid = oidText(der, expectTag(idTlv, TAG_OID, 'extnID'));
      // critical BOOLEAN DEFAULT FALSE: present only when there is a third element.
      const critical = third !== undefined && booleanValue(der, expectTag(second, TAG_BOOLEAN, 'critical'));
      const value = expectTag(third ?? second, TAG_OCTET_STRING, 'extnValue');
      switch (oid) {
        case OID_BASIC_CONSTRAINTS: {
          // BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLenConstraint INTEGER OPTIONAL }
          const seq = expectTag(readTlv(der, value.start, value.end), TAG_SEQUENCE, 'BasicConstraints');
          const first = children(der, seq)[0];
          basicConstraints = { ca: first !== undefined && first.tag === TAG_BOOLEAN && booleanValue(der, first) };
          break;
        }
        case OID_KEY_USAGE: {
          const bits = expectTag(readTlv(der, value.start, value.end), TAG_BIT_STRING, 'KeyUsage');
          keyUsage = { bits: der.subarray(bits.start, bits.end), critical };
          break;
        }
        case OID_EXT_KEY_USAGE: {
          const seq = expectTag(readTlv(der, value.start, value.end), TAG_SEQUENCE, 'ExtKeyUsageSyntax');
          const purposes = children(der, seq).map((t) => oidText(der, expectTag(t, TAG_OID, 'KeyPurposeId')));
          extKeyUsage = { purposes, critical };
          break;
        }
      }
    }
  }
  return { basicConstraints, keyUsage, extKeyUsage };
}

function readTlv(der: Uint8Array, pos: number, limit: number): Tlv {
  const tag = der[pos];
  let length = der[pos + 1];
  if (tag === undefined || length === undefined || pos + 2 > limit) throw new Error(`element at byte ${pos} is truncated`);
  if ((tag & 0x1f) === 0x1f) throw new Error(`element at byte ${pos} has a multi-byte tag`);
  let start = pos + 2;
  if (length & 0x80) {
    const count = length & 0x7f;
    // Four length bytes cover any certificate; DER forbids the indefinite form (0x80).
    if (count === 0 || count > 4 || start + count > limit) throw new Error(`element at byte ${pos} has a bad length`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + (der[start + i] ?? 0);
    start += count;
  }
  const end = start + length;
  if (end > limit) throw new Error(`element at byte ${pos} runs past its container`);
  return { tag, start, end };
}

function children(der: Uint8Array, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let pos = parent.start; pos < parent.end; ) {
    const child = readTlv(der, pos, parent.end);
    out.push(child);
    pos = child.end;
  }
  return out;
}

function expectTag(tlv: Tlv, tag: number, what: string): Tlv {
  if (tlv.tag !== tag) throw new Error(`${what} has tag 0x${tlv.tag.toString(16)}, expected 0x${tag.toString(16)}`);
  return tlv;
}

function booleanValue(der: Uint8Array, tlv: Tlv): boolean {
  if (tlv.end - tlv.start !== 1) throw new Error(`BOOLEAN at byte ${tlv.start} is not one byte long`);
  return der[tlv.start] !== 0;
}

/** An OBJECT IDENTIFIER's content as dotted text ("2.5.29.19"). */
function oidText(der: Uint8Array, tlv: Tlv): string {
  const arcs: number[] = [];
  let value = 0;
  let open = false;
  for (let i = tlv.start; i < tlv.end; i++) {
    const byte = der[i] ?? 0;
    value = value * 128 + (byte & 0x7f);
    open = (byte & 0x80) !== 0;
    if (!open) {
      arcs.push(value);
      value = 0;
    }
  }
  const first = arcs[0];
  if (first === undefined || open) throw new Error(`OBJECT IDENTIFIER at byte ${tlv.start} is malformed`);
  // The first encoded number packs the first two arcs (40 * X + Y).
  const head = first < 80 ? [Math.floor(first / 40), first % 40] : [2, first - 80];
  return [...head, ...arcs.slice(1)].join('.');
}
