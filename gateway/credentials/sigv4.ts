import { createHash, createHmac, type Hash, type Hmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';
import { request } from 'undici';
import { ValetError } from '../errors.js';
import type { HeaderList } from '../proxy/headers.js';

/** `credential.assume_role`: sign with a role's temporary credentials, obtained with the stored keys. */
export interface AssumeRoleConfig {
  readonly roleArn: string;
  readonly sessionName: string;
  readonly externalId: string | undefined;
  /** What STS is asked for; its own default (an hour) when absent. */
  readonly durationS: number | undefined;
  /** `scheme://host[:port]` of STS: the regional endpoint unless configured. */
  readonly stsEndpoint: string;
}

/** `credential.scheme: aws_sigv4`, as configured: key names are secret names, resolved per tenant. */
export interface AwsSigV4Config {
  readonly scheme: 'aws_sigv4';
  /** The signing name (`s3`, `bedrock`, `execute-api`...). */
  readonly service: string;
  readonly region: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken: string | undefined;
  readonly assumeRole: AssumeRoleConfig | undefined;
  /** A streamed body is sent as `UNSIGNED-PAYLOAD`; otherwise it is read whole and hashed (default: only for S3). */
  readonly unsignedPayload: boolean;
}

/** The role's temporary credentials for the request's tenant (kept by the credential cache: sealed, shared by a fleet). */
export type AssumedLookup = () => Promise<AwsCredentials>;

/** Looks a secret up by name for the request's tenant; undefined when no source has it. */
export type SecretLookup = (name: string) => string | undefined;

/** A request as Valet would forward it, its agent credentials already removed. */
export interface SignableRequest {
  readonly method: string;
  /** Path and query (`/bucket/key?x-id=GetObject`). */
  readonly path: string;
  /** Lower-case names; `content-length` included when there is one. */
  readonly headers: HeaderList;
  /** The body when Valet holds it whole; `stream` when it passes through unread; null when there is none. */
  readonly body: Buffer | 'stream' | null;
}

/** What is forwarded instead: the same request in AWS's canonical encoding, signed. */
export interface SignedRequest {
  readonly path: string;
  readonly headers: HeaderList;
  /** The key material the signature used, for response scrubbing (never logged). */
  readonly secrets: readonly string[];
}

export interface SigV4Signer {
  /** Whether a streamed body must be read whole before {@link SigV4Signer.sign}: the service signs payload hashes. */
  readonly hashesPayload: boolean;
  /**
   * Signs with the keys `secret` finds (the request's tenant's), or with the temporary credentials
   * of the role they assume. Refuses (503 `VALET_ERR_CREDENTIAL_UNAVAILABLE`) when a key is
   * missing, and (503 `VALET_ERR_TOKEN_ENDPOINT`) when STS gives no credentials and none are held.
   */
  sign(req: SignableRequest, secret: SecretLookup, assumed?: AssumedLookup): Promise<SignedRequest>;
}

export interface SigV4Options {
  /** The upstream, for messages. */
  readonly upstream: string;
  /** `scheme://host[:port]` the request goes to: its `host` is signed. */
  readonly origin: string;
  readonly now?: () => number;
  readonly timeoutMs?: number;
  /** STS requests that failed, for the log: never a key or the response body. */
  readonly onError?: (problem: string) => void;
}

/**
 * Request headers that belong to a signature rather than to the request: the agent's SDK made them
 * with its dummy key (and put the agent token in the session-token header), and Valet makes its
 * own. `date` is an older signature input the signer drops too; `x-amz-region-set` is SigV4a's;
 * `x-amz-s3session-token` is an S3 Express session the agent's SDK may have opened. Left alone:
 * `x-amz-user-agent`, `amz-sdk-*`, checksums (`x-amz-checksum-*`, `content-md5`) and the
 * aws-chunked framing headers, which describe the request.
 */
export const SIGNATURE_HEADERS: ReadonlySet<string> = new Set([
  'authorization',
  'x-amz-date',
  'date',
  'x-amz-security-token',
  'x-amz-content-sha256',
  'x-amz-region-set',
  'x-amz-s3session-token',
]);

/** Query parameters of a presigned URL, lower case: its signature, never forwarded. */
export const PRESIGN_PARAMS: ReadonlySet<string> = new Set([
  'x-amz-algorithm',
  'x-amz-credential',
  'x-amz-date',
  'x-amz-expires',
  'x-amz-signedheaders',
  'x-amz-signature',
  'x-amz-security-token',
  'x-amz-region-set',
]);

const UNSIGNED_PAYLOAD = 'UNSIGNED-PAYLOAD';
/** S3's aws-chunked upload whose chunks are not signed (the SDK's default for streams): re-signable as is. */
const UNSIGNED_TRAILER = 'STREAMING-UNSIGNED-PAYLOAD-TRAILER';

/** Assumed credentials count as expired this long before STS says (at most a quarter of their lifetime), so none expires in flight. */
const EXPIRY_MARGIN_MS = 30_000;

export interface AwsCredentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
}

/** Temporary credentials from STS, and when to stop using them (ms since the epoch). */
export interface Assumed {
  readonly credentials: AwsCredentials;
  readonly expiresAt: number;
}

/**
 * SHA-256 and HMAC-SHA-256 from node:crypto, in the shape the signer takes (`new (key?) =>
 * Checksum`, as `@smithy/hash-node` gives it to the AWS SDK in Node).
 */
class NodeSha256 {
  private hash: Hash | Hmac;

  constructor(private readonly key?: string | ArrayBuffer | ArrayBufferView) {
    this.hash = this.fresh();
  }

  update(chunk: Uint8Array): void {
    this.hash.update(chunk);
  }

  digest(): Promise<Uint8Array> {
    return Promise.resolve(this.hash.digest());
  }

  reset(): void {
    this.hash = this.fresh();
  }

  private fresh(): Hash | Hmac {
    if (this.key === undefined) return createHash('sha256');
    const k = this.key;
    return createHmac('sha256', typeof k === 'string' ? k : k instanceof ArrayBuffer ? Buffer.from(k) : Buffer.from(k.buffer, k.byteOffset, k.byteLength));
  }
}

/** RFC 3986 percent-encoding, only unreserved characters literal: AWS's `UriEncode`. */
function awsEscape(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function decode(text: string, form: boolean): string {
  try {
    return decodeURIComponent(form ? text.replaceAll('+', ' ') : text);
  } catch {
    throw new ValetError('VALET_ERR_BAD_REQUEST', 'The request target is not valid percent-encoded UTF-8.');
  }
}

/**
 * A path and query in AWS's canonical encoding, which an AWS endpoint reads the same way whether it
 * takes the path as sent or decodes it first (`:` in a Bedrock model id, `$` in an S3 key); the
 * query form-decoded as policy read it, presign parameters removed. `forward` is what is sent.
 */
export function awsTarget(target: string): { path: string; query: Record<string, string | string[]>; forward: string } {
  const q = target.indexOf('?');
  const rawPath = q === -1 ? target : target.slice(0, q);
  const path = rawPath
    .split('/')
    .map((s) => awsEscape(decode(s, false)))
    .join('/');
  const query: Record<string, string | string[]> = Object.create(null) as Record<string, string | string[]>;
  const pairs: string[] = [];
  for (const pair of q === -1 ? [] : target.slice(q + 1).split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const name = decode(eq === -1 ? pair : pair.slice(0, eq), true);
    if (PRESIGN_PARAMS.has(name.toLowerCase())) continue;
    const value = eq === -1 ? '' : decode(pair.slice(eq + 1), true);
    const seen = query[name];
    query[name] = seen === undefined ? value : [seen].flat().concat(value);
    pairs.push(`${awsEscape(name)}=${awsEscape(value)}`);
  }
  return { path, query, forward: pairs.length === 0 ? path : `${path}?${pairs.join('&')}` };
}

const ACCESS_KEY_ID = /^[A-Za-z0-9]{1,128}$/;
const TOKEN_SAFE = /^[\x21-\x7e]+$/;

/** The stored keys for the tenant; 503 unless each is there and fits where it is sent. */
export function storedKeys(c: AwsSigV4Config, secret: SecretLookup): AwsCredentials {
  const value = (name: string, fits: RegExp | undefined): string => {
    const v = secret(name);
    if (v === undefined || v === '' || (fits !== undefined && !fits.test(v))) throw new ValetError('VALET_ERR_CREDENTIAL_UNAVAILABLE');
    return v;
  };
  const keys = { accessKeyId: value(c.accessKeyId, ACCESS_KEY_ID), secretAccessKey: value(c.secretAccessKey, undefined) };
  return c.sessionToken === undefined ? keys : { ...keys, sessionToken: value(c.sessionToken, TOKEN_SAFE) };
}

/**
 * A signer for one upstream, built once: AWS's own SigV4 implementation (`@smithy/signature-v4`)
 * over the request exactly as forwarded. The agent's signature artefacts ({@link SIGNATURE_HEADERS},
 * {@link PRESIGN_PARAMS}) are dropped; the body is hashed when Valet holds it, sent as
 * `UNSIGNED-PAYLOAD` when it streams through (only where `unsignedPayload`), and an S3 aws-chunked
 * upload keeps `STREAMING-UNSIGNED-PAYLOAD-TRAILER`. Chunk-signed uploads cannot be re-signed and
 * are refused. With `assumeRole`, the role's temporary credentials come from `assumed` (the
 * credential cache: renewed ahead of expiry, one AssumeRole call at a time, sealed and shared).
 */
export function sigV4Signer(c: AwsSigV4Config, o: SigV4Options): SigV4Signer {
  const now = o.now ?? Date.now;
  const origin = new URL(o.origin);
  const s3 = c.service === 's3';
  // S3 signs its path as sent and needs x-amz-content-sha256 on every request; other services
  // sign the path encoded once more, and read the payload hash from the signature alone.
  const init = { service: c.service, region: c.region, sha256: NodeSha256, uriEscapePath: !s3, applyChecksum: s3 };
  // One signer per stored key (tenants with keys of their own have their own), replaced when what it signs with changes.
  const signers = new Map<string, { credentials: AwsCredentials; signer: SignatureV4 }>();
  const signerFor = (stored: string, credentials: AwsCredentials): SignatureV4 => {
    const held = signers.get(stored);
    const same = held !== undefined && held.credentials.accessKeyId === credentials.accessKeyId && held.credentials.secretAccessKey === credentials.secretAccessKey && held.credentials.sessionToken === credentials.sessionToken;
    if (same) return held.signer;
    const signer = new SignatureV4({ ...init, credentials });
    signers.set(stored, { credentials, signer });
    return signer;
  };
  return {
    hashesPayload: !c.unsignedPayload,
    async sign(req, secret, assumed) {
      const headers: Record<string, string> = Object.create(null) as Record<string, string>;
      headers['host'] = origin.host;
      let declared: string | undefined;
      for (const [raw, value] of req.headers) {
        const name = raw.toLowerCase();
        if (name === 'x-amz-content-sha256') declared = value.trim();
        if (SIGNATURE_HEADERS.has(name) || name === 'host') continue;
        // Sent as one line, so the upstream reads exactly the value signed.
        headers[name] = name in headers ? `${headers[name] as string},${value}` : value;
      }
      if (declared?.startsWith('STREAMING-') === true) {
        if (declared !== UNSIGNED_TRAILER) {
          throw new ValetError('VALET_ERR_BAD_REQUEST', `The body is signed chunk by chunk with the agent's key (x-amz-content-sha256: ${declared.slice(0, 64)}), which Valet cannot sign again; configure the SDK for unsigned payloads.`);
        }
        if (!c.unsignedPayload) throw new ValetError('VALET_ERR_BAD_REQUEST', `Upstream ${o.upstream} signs payload hashes; an aws-chunked upload cannot be signed for it.`);
        headers['x-amz-content-sha256'] = UNSIGNED_TRAILER;
      } else if (req.body === 'stream') {
        // The pipeline reads the body whole first when the service hashes payloads.
        if (!c.unsignedPayload) throw new ValetError('VALET_ERR_INTERNAL');
        headers['x-amz-content-sha256'] = UNSIGNED_PAYLOAD;
      }
      const target = awsTarget(req.path);
      const keys = storedKeys(c, secret);
      const credentials = c.assumeRole === undefined || assumed === undefined ? keys : await assumed();
      const signed = await signerFor(keys.accessKeyId, credentials).sign(
        {
          method: req.method,
          protocol: origin.protocol,
          hostname: origin.hostname,
          ...(origin.port !== '' && { port: Number(origin.port) }),
          path: target.path,
          query: target.query,
          headers,
          body: req.body instanceof Buffer ? req.body : undefined,
        },
        { signingDate: new Date(now()) },
      );
      const secrets = [credentials.secretAccessKey, credentials.accessKeyId, ...(credentials.sessionToken === undefined ? [] : [credentials.sessionToken])];
      return { path: target.forward, headers: Object.entries(signed.headers), secrets };
    },
  };
}

/** The text of an XML element's content, entities resolved; undefined when absent. */
function xmlField(xml: string, name: string): string | undefined {
  const m = new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml);
  if (m === null) return undefined;
  return (m[1] as string).replace(/&(#x[0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);/g, (_, e: string) => {
    if (e.startsWith('#x')) return String.fromCodePoint(parseInt(e.slice(2), 16));
    if (e.startsWith('#')) return String.fromCodePoint(Number(e.slice(1)));
    return { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }[e] as string;
  });
}

/**
 * One AssumeRole call (STS query API, signed with the stored keys). Only STS's error code is
 * repeated in a refusal, and only when it is a plain word that is not part of a key.
 */
export async function assumeRole(c: AwsSigV4Config, role: AssumeRoleConfig, keys: AwsCredentials, o: SigV4Options, now: () => number): Promise<Assumed> {
  const failure = (why: string): ValetError => {
    o.onError?.(`upstream ${o.upstream}: ${why}`);
    return new ValetError('VALET_ERR_TOKEN_ENDPOINT', `The credential for upstream ${o.upstream} could not be obtained: ${why}; nothing was forwarded.`);
  };
  const url = new URL(role.stsEndpoint);
  const form = new URLSearchParams({ Action: 'AssumeRole', Version: '2011-06-15', RoleArn: role.roleArn, RoleSessionName: role.sessionName });
  if (role.durationS !== undefined) form.set('DurationSeconds', String(role.durationS));
  if (role.externalId !== undefined) form.set('ExternalId', role.externalId);
  const body = form.toString();
  // The global endpoint signs for us-east-1; a regional one for the upstream's region.
  const region = url.hostname === 'sts.amazonaws.com' ? 'us-east-1' : c.region;
  const started = now();
  const signer = new SignatureV4({ service: 'sts', region, credentials: keys, sha256: NodeSha256, applyChecksum: false });
  const signed = await signer.sign(
    {
      method: 'POST',
      protocol: url.protocol,
      hostname: url.hostname,
      ...(url.port !== '' && { port: Number(url.port) }),
      path: url.pathname,
      query: {},
      headers: { host: url.host, 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' },
      body,
    },
    { signingDate: new Date(started) },
  );
  let status: number;
  let text: string;
  try {
    const timeout = o.timeoutMs ?? 10_000;
    const res = await request(url, { method: 'POST', headers: signed.headers, body, headersTimeout: timeout, bodyTimeout: timeout });
    status = res.statusCode;
    text = await res.body.text();
  } catch (err) {
    throw failure(`STS could not be reached (${(err as { code?: string }).code ?? 'error'})`);
  }
  const block = /<Credentials>([\s\S]*?)<\/Credentials>/.exec(text)?.[1] ?? '';
  const accessKeyId = xmlField(block, 'AccessKeyId');
  const secretAccessKey = xmlField(block, 'SecretAccessKey');
  const sessionToken = xmlField(block, 'SessionToken');
  const expiration = Date.parse(xmlField(block, 'Expiration') ?? '');
  if (status !== 200 || accessKeyId === undefined || !ACCESS_KEY_ID.test(accessKeyId) || !secretAccessKey || sessionToken === undefined || !TOKEN_SAFE.test(sessionToken) || !(expiration > started)) {
    const code = xmlField(text, 'Code');
    const said = code !== undefined && /^[A-Za-z][A-Za-z0-9.]{0,63}$/.test(code) && ![keys.accessKeyId, keys.secretAccessKey, keys.sessionToken ?? ''].some((k) => k.includes(code)) ? `: ${code}` : '';
    throw failure(status === 200 ? 'STS answered without usable credentials' : `STS answered ${status}${said}`);
  }
  const expiresAt = expiration - Math.min(EXPIRY_MARGIN_MS, (expiration - started) / 4);
  return { credentials: { accessKeyId, secretAccessKey, sessionToken }, expiresAt };
}
