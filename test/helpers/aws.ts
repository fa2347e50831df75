import { createHash, createHmac, type Hash, type Hmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';
import { headerValues, type RecordedRequest } from './upstream.js';

/** SHA-256 for the verifying side, written apart from the gateway's own. */
class Sha256 {
  private h: Hash | Hmac;
  private readonly key: string | Buffer | undefined;
  constructor(key?: string | ArrayBuffer | ArrayBufferView) {
    this.key = key === undefined || typeof key === 'string' ? key : key instanceof ArrayBuffer ? Buffer.from(key) : Buffer.from(key.buffer, key.byteOffset, key.byteLength);
    this.h = this.key === undefined ? createHash('sha256') : createHmac('sha256', this.key);
  }
  update(chunk: Uint8Array): void {
    this.h.update(chunk);
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(this.h.digest());
  }
  reset(): void {
    this.h = this.key === undefined ? createHash('sha256') : createHmac('sha256', this.key);
  }
}

export const sha256Hex = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

/** What a verified signature says: who signed, with which session token, over which headers. */
export interface Verified {
  readonly accessKeyId: string;
  readonly sessionToken: string | undefined;
  readonly signedHeaders: readonly string[];
}

const AUTH = /^AWS4-HMAC-SHA256 Credential=([A-Za-z0-9]+)\/(\d{8})\/([a-z0-9-]+)\/([a-z0-9.-]+)\/aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$/;
const HEX64 = /^[0-9a-f]{64}$/;

/**
 * Checks a request's SigV4 signature as an AWS endpoint would, from what was received: the raw
 * path and query, the signed headers' values, the body against a declared hash. Returns the
 * signer, or why the signature does not hold (the fake answers 403 SignatureDoesNotMatch then).
 */
export async function verifySigV4(req: RecordedRequest, secretFor: (accessKeyId: string) => string | undefined, scope: { service: string; region: string }): Promise<Verified | string> {
  const auth = headerValues(req, 'authorization');
  if (auth.length !== 1) return `expected one Authorization header, got ${auth.length}`;
  const m = AUTH.exec(auth[0] as string);
  if (m === null) return 'malformed Authorization header';
  const [, accessKeyId, day, region, service, signedList, signature] = m as unknown as [string, string, string, string, string, string, string];
  if (region !== scope.region || service !== scope.service) return `signed for ${region}/${service}`;
  const amzDate = headerValues(req, 'x-amz-date');
  if (amzDate.length !== 1 || !(amzDate[0] as string).startsWith(day)) return 'x-amz-date missing or not the credential scope\'s day';
  const secret = secretFor(accessKeyId);
  if (secret === undefined) return `unknown access key ${accessKeyId}`;
  const names = signedList.split(';');
  if (!names.includes('host') || !names.includes('x-amz-date')) return 'host and x-amz-date must be signed';
  const headers: Record<string, string> = {};
  for (const name of names) {
    const values = headerValues(req, name);
    if (values.length === 0) return `signed header ${name} was not received`;
    headers[name] = values.join(',');
  }
  const declared = headers['x-amz-content-sha256'];
  if (declared !== undefined && HEX64.test(declared) && declared !== sha256Hex(req.body)) return 'x-amz-content-sha256 does not match the body';
  const q = req.url.indexOf('?');
  const path = q === -1 ? req.url : req.url.slice(0, q);
  const query: Record<string, string | string[]> = {};
  for (const pair of q === -1 ? [] : req.url.slice(q + 1).split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const k = decodeURIComponent(eq === -1 ? pair : pair.slice(0, eq));
    const v = eq === -1 ? '' : decodeURIComponent(pair.slice(eq + 1));
    const seen = query[k];
    query[k] = seen === undefined ? v : [seen].flat().concat(v);
  }
  const d = amzDate[0] as string;
  const signingDate = new Date(`${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}T${d.slice(9, 11)}:${d.slice(11, 13)}:${d.slice(13, 15)}Z`);
  const signer = new SignatureV4({ service, region, credentials: { accessKeyId, secretAccessKey: secret }, sha256: Sha256, uriEscapePath: service !== 's3', applyChecksum: false });
  const expected = await signer.sign({ method: req.method, protocol: 'http:', hostname: 'fake', path, query, headers, body: declared === undefined ? req.body : undefined }, { signingDate });
  const want = /Signature=([0-9a-f]{64})$/.exec(String(expected.headers['authorization']))?.[1];
  if (want !== signature) return 'SignatureDoesNotMatch';
  return { accessKeyId, sessionToken: headers['x-amz-security-token'], signedHeaders: names };
}

/** An S3-style error body, as the fake AWS endpoints answer. */
export function awsXmlError(code: string, message: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message><RequestId>fake-req</RequestId></Error>`;
}

/** An STS AssumeRole answer with these temporary credentials. */
export function assumeRoleResponse(c: { accessKeyId: string; secretAccessKey: string; sessionToken: string; expiration: Date }): string {
  return `<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/agent/valet</Arn><AssumedRoleId>AROAEXAMPLE:valet</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>${c.accessKeyId}</AccessKeyId>
      <SecretAccessKey>${c.secretAccessKey}</SecretAccessKey>
      <SessionToken>${c.sessionToken}</SessionToken>
      <Expiration>${c.expiration.toISOString()}</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>sts-req</RequestId></ResponseMetadata>
</AssumeRoleResponse>`;
}
