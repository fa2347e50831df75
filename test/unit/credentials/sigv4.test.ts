/**
 * The SigV4 signer (gateway/credentials/sigv4.ts): AWS's published test vectors (the
 * aws-sig-v4-test-suite, and the S3 API reference's examples), what is stripped from the agent's
 * request, how bodies are hashed, and AssumeRole against a fake STS on 127.0.0.1 (cache, single
 * flight, renewal, failing closed without repeating a secret).
 */
import type { ServerResponse } from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { UpstreamConfig } from '../../../gateway/config/types.js';
import { CredentialService } from '../../../gateway/credentials/service.js';
import { awsTarget, sigV4Signer, type AwsSigV4Config, type SignableRequest, type SignedRequest } from '../../../gateway/credentials/sigv4.js';
import { memoryGrants } from '../../../gateway/secrets/grants.js';
import type { HeaderList } from '../../../gateway/proxy/headers.js';
import { assumeRoleResponse, awsXmlError, sha256Hex, verifySigV4 } from '../../helpers/aws.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../../helpers/upstream.js';

const SUITE_KEYS = { AK: 'AKIDEXAMPLE', SK: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY' };
const SUITE_DATE = Date.parse('2015-08-30T12:36:00Z');
const SUITE_TOKEN =
  'AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==';

const credential = (over: Partial<AwsSigV4Config> = {}): AwsSigV4Config => ({
  scheme: 'aws_sigv4',
  service: 'service',
  region: 'us-east-1',
  accessKeyId: 'AK',
  secretAccessKey: 'SK',
  sessionToken: undefined,
  assumeRole: undefined,
  unsignedPayload: false,
  ...over,
});

/** The header a signed request carries under `name` (every name is lower case). */
const header = (h: HeaderList, name: string): string | undefined => h.find(([n]) => n === name)?.[1];

interface Vector {
  readonly name: string;
  readonly method: string;
  /** As Valet forwards it: percent-encoded path and query. */
  readonly path: string;
  readonly headers?: HeaderList;
  readonly body?: string;
  readonly token?: string;
  readonly authorization: string;
}

/**
 * aws-sig-v4-test-suite (2015-08-30), service `service`, us-east-1, example.amazonaws.com. Left
 * out: the vectors whose request line is not ASCII (get-utf8 sends `/ሴ` raw; Valet sends paths
 * percent-encoded, which AWS encodes once more) and those about `Date` or header folding, which
 * never reach the signer.
 */
const SUITE: readonly Vector[] = [
  {
    name: 'get-vanilla',
    method: 'GET',
    path: '/',
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31',
  },
  {
    name: 'get-vanilla-query-order-key-case',
    method: 'GET',
    path: '/?Param2=value2&Param1=value1',
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500',
  },
  {
    name: 'get-vanilla-query-unreserved',
    method: 'GET',
    path: '/?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz',
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197',
  },
  {
    name: 'get-vanilla-utf8-query',
    method: 'GET',
    path: '/?%E1%88%B4=bar',
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04',
  },
  {
    name: 'get-header-key-duplicate',
    method: 'GET',
    path: '/',
    headers: [
      ['my-header1', 'value2'],
      ['my-header1', 'value2'],
      ['my-header1', 'value1'],
    ],
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea',
  },
  {
    name: 'get-header-value-trim',
    method: 'GET',
    path: '/',
    headers: [
      ['my-header1', 'value1'],
      ['my-header2', '"a   b   c"'],
    ],
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736',
  },
  {
    name: 'post-header-key-sort',
    method: 'POST',
    path: '/',
    headers: [['my-header1', 'value1']],
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c',
  },
  {
    name: 'post-vanilla-query-nonunreserved',
    method: 'POST',
    path: '/?%40%23%24%25%5E=&%2B=%2F%2C%3F%3E%3C%60%22%3B%3A%5C%7C%5D%5B%7B%7D',
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=66c82657c86e26fb25238d0e69f011edc4c6df5ae71119d7cb98ed9b87393c1e',
  },
  {
    name: 'post-x-www-form-urlencoded',
    method: 'POST',
    path: '/',
    headers: [['content-type', 'application/x-www-form-urlencoded']],
    body: 'Param1=value1',
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a',
  },
  {
    name: 'post-sts-header-before',
    method: 'POST',
    path: '/',
    token: SUITE_TOKEN,
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead',
  },
];

/** The S3 API reference's "Signature Calculations for the Authorization Header" examples. */
const S3_EXAMPLES: readonly Vector[] = [
  {
    name: 'GET Object (range)',
    method: 'GET',
    path: '/test.txt',
    headers: [['range', 'bytes=0-9']],
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41',
  },
  {
    name: 'GET Bucket (list objects)',
    method: 'GET',
    path: '/?max-keys=2&prefix=J',
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7',
  },
];

const headerOf = (r: RecordedRequest | undefined, name: string): string => (r === undefined ? '' : headerValues(r, name).join(','));

const lookup =
  (values: Record<string, string>) =>
  (name: string): string | undefined =>
    values[name];

describe('sigV4Signer: AWS published test vectors', () => {
  it.each(SUITE.map((v) => [v.name, v]))('aws-sig-v4-test-suite %s', async (_, v) => {
    const signer = sigV4Signer(credential(v.token === undefined ? {} : { sessionToken: 'TOKEN' }), { upstream: 'suite', origin: 'https://example.amazonaws.com', now: () => SUITE_DATE });
    const signed = await signer.sign(
      { method: v.method, path: v.path, headers: v.headers ?? [], body: v.body === undefined ? null : Buffer.from(v.body) },
      lookup({ AK: SUITE_KEYS.AK, SK: SUITE_KEYS.SK, TOKEN: v.token ?? '' }),
    );
    expect(header(signed.headers, 'authorization')).toBe(v.authorization);
    expect(header(signed.headers, 'x-amz-date')).toBe('20150830T123600Z');
    expect(header(signed.headers, 'host')).toBe('example.amazonaws.com');
    // Not S3: the payload hash is signed, not sent.
    expect(header(signed.headers, 'x-amz-content-sha256')).toBeUndefined();
  });

  it.each(S3_EXAMPLES.map((v) => [v.name, v]))('S3 API reference: %s', async (_, v) => {
    const signer = sigV4Signer(credential({ service: 's3', unsignedPayload: true }), { upstream: 's3', origin: 'https://examplebucket.s3.amazonaws.com', now: () => Date.parse('2013-05-24T00:00:00Z') });
    const signed = await signer.sign({ method: v.method, path: v.path, headers: v.headers ?? [], body: null }, lookup({ AK: 'AKIAIOSFODNN7EXAMPLE', SK: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' }));
    expect(header(signed.headers, 'authorization')).toBe(v.authorization);
    expect(header(signed.headers, 'x-amz-content-sha256')).toBe(sha256Hex(''));
  });

  it('a wrong key gives another signature (the vectors cannot pass by accident)', async () => {
    const signer = sigV4Signer(credential(), { upstream: 'suite', origin: 'https://example.amazonaws.com', now: () => SUITE_DATE });
    const signed = await signer.sign({ method: 'GET', path: '/', headers: [], body: null }, lookup({ AK: SUITE_KEYS.AK, SK: `${SUITE_KEYS.SK}x` }));
    expect(header(signed.headers, 'authorization')).not.toBe(SUITE[0]?.authorization);
  });
});

describe('sigV4Signer: what is stripped, kept and hashed', () => {
  const s3 = sigV4Signer(credential({ service: 's3', unsignedPayload: true }), { upstream: 's3', origin: 'http://127.0.0.1:9000' });
  const bedrock = sigV4Signer(credential({ service: 'bedrock' }), { upstream: 'bedrock', origin: 'https://bedrock-runtime.us-east-1.amazonaws.com' });
  const keys = lookup({ AK: 'AKIAREALKEY0000001', SK: 'real-secret-key', TOKEN: 'real-session-token' });
  const agentHeaders: HeaderList = [
    ['authorization', 'AWS4-HMAC-SHA256 Credential=dummy/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00'],
    ['x-amz-date', '20200101T000000Z'],
    ['date', 'Wed, 01 Jan 2020 00:00:00 GMT'],
    ['x-amz-security-token', 'eyJhbGciOiJIUzI1NiJ9.agent.jwt'],
    ['x-amz-content-sha256', 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'],
    ['x-amz-region-set', '*'],
    ['x-amz-s3session-token', 'express-session'],
    ['host', 'valet:8080'],
    ['x-amz-user-agent', 'aws-sdk-js/3'],
    ['amz-sdk-invocation-id', 'inv-1'],
    ['x-amz-checksum-crc32', 'AAAAAA=='],
    ['x-amz-meta-owner', 'team-a'],
    ['content-type', 'text/plain'],
  ];

  it('drops every signature artefact of the agent\'s SDK, keeps what describes the request, and signs it', async () => {
    const signed = await sigV4Signer(credential({ service: 's3', unsignedPayload: true, sessionToken: 'TOKEN' }), { upstream: 's3', origin: 'http://127.0.0.1:9000' }).sign(
      { method: 'PUT', path: '/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&x-amz-credential=dummy&X-Amz-Signature=00&X-Amz-Security-Token=jwt&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Date=1&x-id=PutObject', headers: agentHeaders, body: Buffer.from('hello') },
      keys,
    );
    const names = signed.headers.map(([n]) => n);
    expect(new Set(names).size).toBe(names.length);
    expect(header(signed.headers, 'host')).toBe('127.0.0.1:9000');
    expect(header(signed.headers, 'x-amz-security-token')).toBe('real-session-token');
    expect(header(signed.headers, 'x-amz-content-sha256')).toBe(sha256Hex('hello'));
    expect(header(signed.headers, 'authorization')).toMatch(/^AWS4-HMAC-SHA256 Credential=AKIAREALKEY0000001\/\d{8}\/us-east-1\/s3\/aws4_request, SignedHeaders=amz-sdk-invocation-id;content-type;host;x-amz-checksum-crc32;x-amz-content-sha256;x-amz-date;x-amz-meta-owner;x-amz-security-token;x-amz-user-agent, Signature=[0-9a-f]{64}$/);
    for (const gone of ['date', 'x-amz-region-set', 'x-amz-s3session-token']) expect(header(signed.headers, gone), gone).toBeUndefined();
    expect(JSON.stringify(signed)).not.toContain('agent.jwt');
    expect(JSON.stringify(signed)).not.toContain('dummy');
    expect(signed.path).toBe('/bucket/key?x-id=PutObject');
    expect([...signed.secrets].sort()).toEqual(['AKIAREALKEY0000001', 'real-secret-key', 'real-session-token']);
    // What an AWS endpoint would check, from what it received.
    const received = { method: 'PUT', url: signed.path, rawHeaders: signed.headers.flat(), headers: Object.fromEntries(signed.headers), body: Buffer.from('hello') };
    expect(await verifySigV4(received, (id) => (id === 'AKIAREALKEY0000001' ? 'real-secret-key' : undefined), { service: 's3', region: 'us-east-1' })).toMatchObject({ sessionToken: 'real-session-token' });
    expect(await verifySigV4({ ...received, body: Buffer.from('hellO') }, () => 'real-secret-key', { service: 's3', region: 'us-east-1' })).toBe('x-amz-content-sha256 does not match the body');
    expect(await verifySigV4(received, () => 'another-secret', { service: 's3', region: 'us-east-1' })).toBe('SignatureDoesNotMatch');
  });

  it('S3: a streamed body is UNSIGNED-PAYLOAD; an aws-chunked upload keeps its unsigned trailer; chunk-signed uploads are refused', async () => {
    const streamed = await s3.sign({ method: 'PUT', path: '/b/k', headers: agentHeaders, body: 'stream' }, keys);
    expect(header(streamed.headers, 'x-amz-content-sha256')).toBe('UNSIGNED-PAYLOAD');
    expect(s3.hashesPayload).toBe(false);
    const chunked: HeaderList = [['x-amz-content-sha256', 'STREAMING-UNSIGNED-PAYLOAD-TRAILER'], ['content-encoding', 'aws-chunked'], ['x-amz-trailer', 'x-amz-checksum-crc32'], ['x-amz-decoded-content-length', '5']];
    const trailer = await s3.sign({ method: 'PUT', path: '/b/k', headers: chunked, body: 'stream' }, keys);
    expect(header(trailer.headers, 'x-amz-content-sha256')).toBe('STREAMING-UNSIGNED-PAYLOAD-TRAILER');
    expect(header(trailer.headers, 'x-amz-trailer')).toBe('x-amz-checksum-crc32');
    await expect(s3.sign({ method: 'PUT', path: '/b/k', headers: [['x-amz-content-sha256', 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD']], body: 'stream' }, keys)).rejects.toMatchObject({
      code: 'VALET_ERR_BAD_REQUEST',
      message: expect.stringContaining('signed chunk by chunk'),
    });
    await expect(bedrock.sign({ method: 'POST', path: '/x', headers: chunked, body: Buffer.from('x') }, keys)).rejects.toMatchObject({ code: 'VALET_ERR_BAD_REQUEST' });
  });

  it('other services: the body is hashed into the signature (the pipeline reads a streamed one whole first)', async () => {
    expect(bedrock.hashesPayload).toBe(true);
    const body = Buffer.from('{"messages":[]}');
    const signed = await bedrock.sign({ method: 'POST', path: '/model/anthropic.claude-3-haiku-20240307-v1:0/invoke', headers: [['content-type', 'application/json']], body }, keys);
    expect(header(signed.headers, 'x-amz-content-sha256')).toBeUndefined();
    // The path in AWS's own encoding, as the SDK sends it: ':' is %3A.
    expect(signed.path).toBe('/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke');
    const received = { method: 'POST', url: signed.path, rawHeaders: signed.headers.flat(), headers: Object.fromEntries(signed.headers), body };
    const verify = (r: typeof received): Promise<unknown> => verifySigV4(r, () => 'real-secret-key', { service: 'bedrock', region: 'us-east-1' });
    expect(await verify(received)).toMatchObject({ accessKeyId: 'AKIAREALKEY0000001' });
    expect(await verify({ ...received, body: Buffer.from('{"messages":[1]}') })).toBe('SignatureDoesNotMatch');
    await expect(bedrock.sign({ method: 'POST', path: '/x', headers: [], body: 'stream' }, keys)).rejects.toMatchObject({ code: 'VALET_ERR_INTERNAL' });
  });

  it('paths and queries go out in AWS\'s encoding, read the way policy read them', () => {
    expect(awsTarget('/b/test$file.text')).toMatchObject({ path: '/b/test%24file.text', forward: '/b/test%24file.text' });
    expect(awsTarget('/b/a+b(1)!*\'~')).toMatchObject({ forward: '/b/a%2Bb%281%29%21%2A%27~' });
    expect(awsTarget('/b/?prefix=a+b&list-type=2&uploads')).toMatchObject({ forward: '/b/?prefix=a%20b&list-type=2&uploads=', query: { prefix: 'a b', 'list-type': '2', uploads: '' } });
    expect(awsTarget('/?a=1&a=2').query).toEqual({ a: ['1', '2'] });
  });

  it('refuses with 503 when a key is missing or cannot be sent', async () => {
    for (const values of [{ SK: 's' }, { AK: 'AK', SK: '' }, { AK: 'AKIA/with,comma', SK: 's' }]) {
      await expect(bedrock.sign({ method: 'GET', path: '/', headers: [], body: null }, lookup(values))).rejects.toMatchObject({ code: 'VALET_ERR_CREDENTIAL_UNAVAILABLE' });
    }
    const withToken = sigV4Signer(credential({ sessionToken: 'TOKEN' }), { upstream: 'x', origin: 'https://example.amazonaws.com' });
    await expect(withToken.sign({ method: 'GET', path: '/', headers: [], body: null }, lookup({ AK: 'AK', SK: 's', TOKEN: 'has space' }))).rejects.toMatchObject({ code: 'VALET_ERR_CREDENTIAL_UNAVAILABLE' });
  });

  it('signs with the keys the lookup finds (the tenant\'s own, else the shared ones)', async () => {
    const byTenant = (tenant: string | undefined) => (name: string) => ({ AK: tenant === 'acme' ? 'AKIAACME' : 'AKIASHARED', SK: `sk-${tenant ?? 'shared'}` })[name];
    const a = await bedrock.sign({ method: 'GET', path: '/', headers: [], body: null }, byTenant('acme'));
    const b = await bedrock.sign({ method: 'GET', path: '/', headers: [], body: null }, byTenant(undefined));
    const again = await bedrock.sign({ method: 'GET', path: '/', headers: [], body: null }, byTenant('acme'));
    expect(header(a.headers, 'authorization')).toContain('Credential=AKIAACME/');
    expect(header(b.headers, 'authorization')).toContain('Credential=AKIASHARED/');
    expect(header(again.headers, 'authorization')).toContain('Credential=AKIAACME/');
  });
});

describe('aws_sigv4 assume_role against a fake STS', () => {
  const BASE = { accessKeyId: 'AKIABASEKEY0000001', secretAccessKey: 'baseSecretKey0001' };
  const ACME = { accessKeyId: 'AKIAACMEKEY0000001', secretAccessKey: 'acmeSecretKey0001' };
  let sts: FakeUpstream;
  /** What STS does next. */
  let mode: { status: number; delayMs: number; lifetimeS: number; code?: string } = { status: 200, delayMs: 0, lifetimeS: 3600 };
  let issued = 0;
  let clock = Date.now();
  const problems: string[] = [];

  beforeAll(async () => {
    sts = await startFakeUpstream((req, res: ServerResponse) => {
      void (async () => {
        const verified = await verifySigV4(req, (id) => [BASE, ACME].find((k) => k.accessKeyId === id)?.secretAccessKey, { service: 'sts', region: 'eu-west-1' });
        const form = new URLSearchParams(req.body.toString());
        const answer = (status: number, body: string): void => {
          setTimeout(() => {
            res.writeHead(status, { 'content-type': 'text/xml' });
            res.end(body);
          }, mode.delayMs);
        };
        if (typeof verified === 'string') return answer(403, awsXmlError('SignatureDoesNotMatch', verified));
        if (form.get('Action') !== 'AssumeRole' || form.get('RoleArn') !== 'arn:aws:iam::123456789012:role/agent') return answer(400, awsXmlError('InvalidAction', 'no'));
        if (mode.status !== 200) return answer(mode.status, awsXmlError(mode.code ?? 'ServiceUnavailable', `details mentioning ${BASE.secretAccessKey}`).replace('<Error>', '<ErrorResponse><Error>').replace('</Error>', '</Error></ErrorResponse>'));
        issued++;
        answer(200, assumeRoleResponse({ accessKeyId: `ASIATEMP${issued}`, secretAccessKey: `temp-secret-${issued}`, sessionToken: `temp-token-${issued}&more`.replace('&', '&amp;'), expiration: new Date(clock + mode.lifetimeS * 1000) }));
      })();
    });
  });
  afterAll(async () => {
    await sts?.close();
  });
  beforeEach(() => {
    mode = { status: 200, delayMs: 0, lifetimeS: 3600 };
    clock = Date.now();
    problems.length = 0;
  });

  /** An upstream that assumes the role: through the credential service, as the gateway does (cache, single flight, grants). */
  const roleService = (stsEndpoint = sts.origin): CredentialService =>
    new CredentialService({
      upstreams: [
        {
          name: 'bedrock',
          origin: 'https://bedrock-runtime.eu-west-1.amazonaws.com',
          credential: credential({ service: 'bedrock', region: 'eu-west-1', assumeRole: { roleArn: 'arn:aws:iam::123456789012:role/agent', sessionName: 'valet', externalId: 'ext-1', durationS: 900, stsEndpoint } }),
        } as unknown as UpstreamConfig,
      ],
      grants: memoryGrants(),
      // BASE is shared; tenant acme holds keys of its own.
      secrets: { get: (name, tenant) => (tenant === 'acme' ? { AK: ACME.accessKeyId, SK: ACME.secretAccessKey } : { AK: BASE.accessKeyId, SK: BASE.secretAccessKey })[name] },
      publicUrl: () => undefined,
      now: () => clock,
      refreshAheadMs: 300_000,
      onError: (p) => problems.push(p),
    });
  const call = (service: CredentialService, tenant?: string) => service.sign('bedrock', { method: 'GET', path: '/', headers: [], body: null } satisfies SignableRequest, { tenant, user: undefined }) as Promise<SignedRequest>;

  it('signs with the role\'s temporary credentials; a burst makes one AssumeRole call; a tenant with keys of its own assumes it for itself', async () => {
    const service = roleService();
    const before = sts.requests.length;
    mode.delayMs = 50;
    const burst = await Promise.all(Array.from({ length: 50 }, (_, i) => call(service, i % 2 === 0 ? undefined : 'globex')));
    expect(sts.requests.length - before).toBe(1);
    const form = new URLSearchParams(sts.requests.at(-1)?.body.toString());
    expect(Object.fromEntries(form)).toMatchObject({ Action: 'AssumeRole', RoleSessionName: 'valet', ExternalId: 'ext-1', DurationSeconds: '900' });
    const token = `temp-token-${issued}&more`;
    for (const s of burst) {
      expect(header(s.headers, 'authorization')).toContain(`Credential=ASIATEMP${issued}/`);
      expect(header(s.headers, 'x-amz-security-token')).toBe(token);
      expect(s.secrets).toContain(`temp-secret-${issued}`);
      expect(s.secrets).toContain(token);
    }
    await call(service);
    expect(sts.requests.length - before).toBe(1);
    await call(service, 'acme');
    expect(sts.requests.length - before).toBe(2);
    expect(headerOf(sts.requests.at(-1), 'authorization')).toContain(`Credential=${ACME.accessKeyId}/`);
  });

  it('renews ahead of expiry in the background; if STS fails then, what is held serves until it expires; then it fails closed without repeating a secret', async () => {
    const service = roleService();
    mode.lifetimeS = 900;
    const first = await call(service);
    const before = sts.requests.length;
    clock += 500_000; // before the renewal window (5 minutes ahead of expiry, minus a margin)
    expect(header((await call(service)).headers, 'x-amz-security-token')).toBe(header(first.headers, 'x-amz-security-token'));
    expect(sts.requests.length).toBe(before);
    clock += 200_000; // inside the renewal window: renewed in the background, the held ones still serve this call
    expect(header((await call(service)).headers, 'x-amz-security-token')).toBe(header(first.headers, 'x-amz-security-token'));
    await expect.poll(() => sts.requests.length).toBe(before + 1);
    const renewed = await call(service);
    expect(header(renewed.headers, 'x-amz-security-token')).not.toBe(header(first.headers, 'x-amz-security-token'));
    mode.status = 503;
    clock += 700_000; // the renewed credentials are in their renewal window; STS is down
    const held = await call(service);
    expect(header(held.headers, 'x-amz-security-token')).toBe(header(renewed.headers, 'x-amz-security-token'));
    await expect.poll(() => problems.at(-1)).toBe('upstream bedrock: STS answered 503: ServiceUnavailable');
    clock += 300_000; // expired: nothing to serve
    mode.code = BASE.secretAccessKey; // an STS that echoes what it was sent as its error code
    await expect(call(service)).rejects.toMatchObject({ code: 'VALET_ERR_TOKEN_ENDPOINT', message: 'The credential for upstream bedrock could not be obtained: STS answered 503; nothing was forwarded.' });
    mode.code = 'Throttling';
    await expect(call(service, 'acme')).rejects.toMatchObject({ message: expect.stringContaining('STS answered 503: Throttling') });
    for (const p of problems) expect(p).not.toContain(BASE.secretAccessKey);
  });

  it('STS that cannot be reached, or a missing base key: refused', async () => {
    await expect(call(roleService('http://127.0.0.1:9'))).rejects.toMatchObject({ code: 'VALET_ERR_TOKEN_ENDPOINT', message: expect.stringContaining('STS could not be reached') });
    const missing = new CredentialService({
      upstreams: [{ name: 'bedrock', origin: 'https://bedrock-runtime.eu-west-1.amazonaws.com', credential: credential({ service: 'bedrock', region: 'eu-west-1', assumeRole: { roleArn: 'arn:aws:iam::123456789012:role/agent', sessionName: 'valet', externalId: undefined, durationS: undefined, stsEndpoint: sts.origin } }) } as unknown as UpstreamConfig],
      grants: memoryGrants(),
      secrets: { get: (name) => (name === 'SK' ? 'x' : undefined) },
      publicUrl: () => undefined,
    });
    await expect(call(missing)).rejects.toMatchObject({ code: 'VALET_ERR_CREDENTIAL_UNAVAILABLE' });
  });
});
