/**
 * AWS SigV4 as a credential scheme, driven by the real AWS SDK v3 (S3 and Bedrock Runtime clients,
 * unmodified: Bedrock's speaks HTTP/2 with prior knowledge) pointed at Valet with dummy keys and the
 * agent token as their session token. Fake AWS endpoints on 127.0.0.1 verify every signature from
 * what they received, with the stored keys, and answer 403 SignatureDoesNotMatch otherwise; they
 * also check that nothing of the agent's own signature, dummy key or token reached them. A fake
 * STS serves AssumeRole.
 */
import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { AccessDeniedException, BedrockRuntimeClient, ConverseStreamCommand, InvokeModelCommand, ValidationException, type InvokeModelCommandOutput } from '@aws-sdk/client-bedrock-runtime';
import { GetObjectCommand, PutObjectCommand, S3Client, S3ServiceException } from '@aws-sdk/client-s3';
import { EventStreamCodec } from '@smithy/core/event-streams';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseMasterKey } from '../../gateway/secrets/crypto.js';
import { openSecretBackend } from '../../gateway/secrets/backend.js';
import type { SecretStore } from '../../gateway/secrets/port.js';
import { assumeRoleResponse, awsXmlError, sha256Hex, verifySigV4 } from '../helpers/aws.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { sleep } from '../helpers/http.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';

const MASTER_KEY = randomBytes(32).toString('base64');
/** The stored keys: shared (environment), tenant acme's own (secret store), and the role's temporary ones. */
const KEYS = {
  shared: { id: 'AKIASHAREDREALKEY001', secret: 'shared-Real-Secret-Key-0b7e2c9d41' },
  acme: { id: 'AKIAACMEREALKEY00001', secret: 'acme-Real-Secret-Key-5f3a1e8c07' },
};
const TEMP = { id: 'ASIATEMPROLEKEY00001', secret: 'temp-Role-Secret-Key-9d2b7a6e13', token: 'FwoGZXIvYXdzEXAMPLE-temporary-session-token-4c8e1f' };
/** What the agent's SDK holds: dummy keys (its token is the session token). */
const DUMMY = { accessKeyId: 'AKIADUMMYAGENTKEY000', secretAccessKey: 'dummy-agent-secret-never-used' };
const MODEL = 'anthropic.claude-3-haiku-20240307-v1:0';

const secretFor = (id: string): string | undefined => ({ [KEYS.shared.id]: KEYS.shared.secret, [KEYS.acme.id]: KEYS.acme.secret, [TEMP.id]: TEMP.secret })[id];

/** An S3 aws-chunked body (`<hex size>\r\n<data>\r\n ... 0\r\n<trailers>\r\n\r\n`), decoded. */
function unchunk(body: Buffer): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = body.indexOf('\r\n', at);
    const size = parseInt(body.subarray(at, eol).toString().split(';')[0] as string, 16);
    if (size === 0) return Buffer.concat(out);
    out.push(body.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
}

describe('credential scheme aws_sigv4 with the AWS SDK v3', () => {
  let s3: FakeUpstream;
  let bedrock: FakeUpstream;
  let sts: FakeUpstream;
  let gw: TestGateway;
  let store: SecretStore;
  const objects = new Map<string, Buffer>();
  /** Every signature the fakes checked: who signed it, or why it failed. */
  const checked: { url: string; result: Awaited<ReturnType<typeof verifySigV4>> }[] = [];
  let stsMode = { status: 200, delayMs: 0 };
  const codec = new EventStreamCodec(
    (b) => Buffer.from(b).toString('utf8'),
    (s) => Buffer.from(s, 'utf8'),
  );

  /** Verifies as AWS would; a failed signature is answered as AWS answers it. */
  const verified = async (req: RecordedRequest, res: ServerResponse, service: string): Promise<boolean> => {
    const result = await verifySigV4(req, secretFor, { service, region: 'us-east-1' });
    checked.push({ url: req.url, result });
    if (typeof result === 'string') {
      res.writeHead(403, { 'content-type': 'application/xml', 'x-amz-request-id': 'fake-403' });
      res.end(awsXmlError('SignatureDoesNotMatch', result));
      return false;
    }
    return true;
  };

  beforeAll(async () => {
    s3 = await startFakeUpstream((req, res) => {
      void (async () => {
        if (!(await verified(req, res, 's3'))) return;
        const key = req.url.split('?')[0] as string;
        if (req.method === 'PUT') {
          const chunked = (req.headers['content-encoding'] ?? '').includes('aws-chunked');
          const content = chunked ? unchunk(req.body) : req.body;
          if (chunked && String(content.length) !== req.headers['x-amz-decoded-content-length']) return void res.writeHead(400).end();
          objects.set(key, content);
          res.writeHead(200, { etag: `"${sha256Hex(content).slice(0, 32)}"`, 'x-amz-request-id': 'fake-put' });
          return void res.end();
        }
        if (key.endsWith('/echo')) {
          // An upstream that echoes what it signed with: scrubbed on the way back.
          res.writeHead(200, { 'content-type': 'text/plain', 'x-amz-request-id': 'fake-echo' });
          return void res.end(`secret=${KEYS.shared.secret} id=${KEYS.shared.id} auth=${req.headers['authorization'] ?? ''}`);
        }
        const object = objects.get(key);
        if (object === undefined) {
          res.writeHead(404, { 'content-type': 'application/xml', 'x-amz-request-id': 'fake-404' });
          return void res.end(awsXmlError('NoSuchKey', 'The specified key does not exist.'));
        }
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(object.length), 'x-amz-request-id': 'fake-get' });
        res.end(object);
      })();
    });
    bedrock = await startFakeUpstream((req, res) => {
      void (async () => {
        if (!(await verified(req, res, 'bedrock'))) return;
        const path = req.url.split('?')[0] as string;
        if (path === `/model/${encodeURIComponent(MODEL)}/invoke`) {
          const prompt = (JSON.parse(req.body.toString()) as { prompt: string }).prompt;
          // InvokeModel reports usage in headers.
          res.writeHead(200, { 'content-type': 'application/json', 'x-amzn-requestid': 'fake-invoke', 'x-amzn-bedrock-input-token-count': '11', 'x-amzn-bedrock-output-token-count': '3' });
          return void res.end(JSON.stringify({ completion: `echo: ${prompt}` }));
        }
        if (path === `/model/${encodeURIComponent(MODEL)}/converse-stream`) {
          res.writeHead(200, { 'content-type': 'application/vnd.amazon.eventstream', 'x-amzn-requestid': 'fake-stream' });
          const event = (type: string, body: unknown): Uint8Array =>
            codec.encode({
              headers: { ':event-type': { type: 'string', value: type }, ':content-type': { type: 'string', value: 'application/json' }, ':message-type': { type: 'string', value: 'event' } },
              body: Buffer.from(JSON.stringify(body)),
            });
          const events = [
            event('messageStart', { role: 'assistant' }),
            event('contentBlockDelta', { contentBlockIndex: 0, delta: { text: 'Hel' } }),
            event('contentBlockDelta', { contentBlockIndex: 0, delta: { text: 'lo' } }),
            event('contentBlockStop', { contentBlockIndex: 0 }),
            event('messageStop', { stopReason: 'end_turn' }),
            event('metadata', { usage: { inputTokens: 9, outputTokens: 2, totalTokens: 11 }, metrics: { latencyMs: 5 } }),
          ];
          for (const [i, e] of events.entries()) setTimeout(() => (i === events.length - 1 ? res.end(e) : res.write(e)), i * 20);
          return;
        }
        res.writeHead(404, { 'content-type': 'application/json', 'x-amzn-errortype': 'ResourceNotFoundException' });
        res.end(JSON.stringify({ message: 'no such route' }));
      })();
    });
    sts = await startFakeUpstream((req, res) => {
      void (async () => {
        const result = await verifySigV4(req, secretFor, { service: 'sts', region: 'us-east-1' });
        setTimeout(() => {
          if (typeof result === 'string') return void res.writeHead(403, { 'content-type': 'text/xml' }).end(awsXmlError('SignatureDoesNotMatch', result));
          if (stsMode.status !== 200) return void res.writeHead(stsMode.status, { 'content-type': 'text/xml' }).end(awsXmlError('ServiceUnavailable', 'try later'));
          res.writeHead(200, { 'content-type': 'text/xml' });
          res.end(assumeRoleResponse({ accessKeyId: TEMP.id, secretAccessKey: TEMP.secret, sessionToken: TEMP.token, expiration: new Date(Date.now() + 3_600_000) }));
        }, stsMode.delayMs);
      })();
    });
    const keys = { access_key_id: 'AWS_ACCESS_KEY_ID', secret_access_key: 'AWS_SECRET_ACCESS_KEY' };
    gw = await startTestGateway({
      upstreams: [
        { name: 's3', preset: 'aws-s3', origin: s3.origin },
        { name: 'bedrock', preset: 'aws-bedrock', origin: bedrock.origin },
        {
          name: 's3-role',
          preset: 'aws-s3',
          origin: s3.origin,
          credential: { scheme: 'aws_sigv4', service: 's3', region: 'us-east-1', ...keys, assume_role: { role_arn: 'arn:aws:iam::123456789012:role/agent', sts_endpoint: sts.origin } },
        },
      ],
      rules: [
        { id: 'allow-all', effect: 'allow' },
        { id: 'no-forbidden-bucket', effect: 'deny', upstream: 's3', paths: ['/forbidden/**'], reason: 'that bucket is off limits' },
        { id: 'no-opus', effect: 'deny', upstream: 'bedrock', paths: ['/model/anthropic.claude-3-opus-20240229-v1:0/**'], reason: 'too expensive' },
      ],
      gateway: { max_body_bytes: 65_536, llm: { max_body_bytes: 65_536 } },
      env: { VALET_MASTER_KEY: MASTER_KEY, AWS_ACCESS_KEY_ID: KEYS.shared.id, AWS_SECRET_ACCESS_KEY: KEYS.shared.secret },
    });
    store = await openSecretBackend({ dataDir: gw.dataDir, postgresUrl: gw.backendEnv['VALET_POSTGRES_URL'] }, { key: parseMasterKey(MASTER_KEY, 'test') });
  });
  afterAll(async () => {
    await store?.close();
    await gw?.close();
    for (const f of [s3, bedrock, sts]) await f?.close();
  });
  beforeEach(() => {
    stsMode = { status: 200, delayMs: 0 };
  });

  const agentToken = (tenant?: string): Promise<string> => gw.token({ agent: 'aws-agent', ...(tenant !== undefined && { tenant }) });
  const credentials = (token: string) => ({ ...DUMMY, sessionToken: token });
  const s3Client = (token: string, o: { upstream?: string; checksums?: boolean; maxAttempts?: number } = {}): S3Client =>
    new S3Client({
      endpoint: `${gw.url}/${o.upstream ?? 's3'}`,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: credentials(token),
      maxAttempts: o.maxAttempts ?? 3,
      ...(o.checksums === false && { requestChecksumCalculation: 'WHEN_REQUIRED' as const }),
    });
  /** The Bedrock Runtime client as an agent builds it: its default handler speaks HTTP/2 (h2c) to Valet. */
  const bedrockClient = (token: string, o: { http1?: boolean } = {}): BedrockRuntimeClient =>
    new BedrockRuntimeClient({
      endpoint: `${gw.url}/bedrock`,
      region: 'us-east-1',
      credentials: credentials(token),
      maxAttempts: 1,
      ...(o.http1 === true && { requestHandler: new NodeHttpHandler() }),
    });
  /** The protocol of each connection the next call opens to Valet, told by its first bytes. */
  const protocolsOf = async (call: () => Promise<unknown>): Promise<string[]> => {
    const seen: string[] = [];
    const onConnection = (socket: Socket): void => {
      socket.once('data', (chunk: Buffer) => seen.push(chunk.subarray(0, 3).toString('latin1') === 'PRI' ? 'h2c' : 'http/1.1'));
    };
    gw.gateway.server.on('connection', onConnection);
    try {
      await call();
    } finally {
      gw.gateway.server.off('connection', onConnection);
    }
    return seen;
  };

  /** Nothing the agent holds — its token, its dummy key, its own signature — reached a fake AWS endpoint. */
  const expectNothingOfTheAgent = (tokens: string[]): void => {
    for (const r of [...s3.requests, ...bedrock.requests, ...sts.requests]) {
      const seen = `${r.url}\n${r.rawHeaders.join('\n')}`;
      for (const t of tokens) expect(seen).not.toContain(t);
      expect(seen).not.toContain(DUMMY.accessKeyId);
      expect(headerValues(r, 'authorization')).toHaveLength(1);
      expect(headerValues(r, 'x-amz-date')).toHaveLength(1);
    }
  };

  it('S3 PutObject with a streamed body (UNSIGNED-PAYLOAD) and GetObject: signed with the stored key, verified by the fake', async () => {
    const token = await agentToken();
    const client = s3Client(token, { checksums: false });
    const chunks = ['streamed ', 'object ', 'body'];
    await client.send(new PutObjectCommand({ Bucket: 'notes', Key: 'a/b c$.txt', Body: Readable.from(chunks.map((c) => Buffer.from(c))), ContentLength: chunks.join('').length }));
    const put = s3.requests.at(-1) as RecordedRequest;
    expect(put.url).toBe('/notes/a/b%20c%24.txt?x-id=PutObject');
    expect(headerValues(put, 'x-amz-content-sha256')).toEqual(['UNSIGNED-PAYLOAD']);
    expect(checked.at(-1)?.result).toMatchObject({ accessKeyId: KEYS.shared.id, sessionToken: undefined });
    const got = await client.send(new GetObjectCommand({ Bucket: 'notes', Key: 'a/b c$.txt' }));
    expect(await got.Body?.transformToString()).toBe('streamed object body');
    expect(got.$metadata.httpStatusCode).toBe(200);
    expect(checked.at(-1)?.result).toMatchObject({ accessKeyId: KEYS.shared.id });
    expectNothingOfTheAgent([token]);
  });

  it('S3 PutObject with the SDK\'s default checksums: an aws-chunked upload keeps its unsigned trailer', async () => {
    const token = await agentToken();
    const client = s3Client(token);
    await client.send(new PutObjectCommand({ Bucket: 'notes', Key: 'chunked.txt', Body: Readable.from([Buffer.from('chunk one, '), Buffer.from('chunk two')]), ContentLength: 20 }));
    const put = s3.requests.at(-1) as RecordedRequest;
    expect(headerValues(put, 'x-amz-content-sha256')).toEqual(['STREAMING-UNSIGNED-PAYLOAD-TRAILER']);
    expect(objects.get('/notes/chunked.txt')?.toString()).toBe('chunk one, chunk two');
    await client.send(new PutObjectCommand({ Bucket: 'notes', Key: 'small.json', Body: '{"a":1}', ContentType: 'application/json' }));
    const small = s3.requests.at(-1) as RecordedRequest;
    // The SDK hashed it; Valet streams it through unread, so it says so.
    expect(headerValues(small, 'x-amz-content-sha256')).toEqual(['UNSIGNED-PAYLOAD']);
    expect(headerValues(small, 'x-amz-checksum-crc32')).toHaveLength(1);
    expect(objects.get('/notes/small.json')?.toString()).toBe('{"a":1}');
    expect(checked.slice(-2).map((c) => typeof c.result)).toEqual(['object', 'object']);
    expectNothingOfTheAgent([token]);
  });

  it('a tenant with keys of its own has its requests signed with them', async () => {
    await store.set('AWS_ACCESS_KEY_ID', 'acme', KEYS.acme.id);
    await store.set('AWS_SECRET_ACCESS_KEY', 'acme', KEYS.acme.secret);
    await sleep(1_200); // the store's change check runs at most once a second
    const acme = s3Client(await agentToken('acme'));
    await acme.send(new PutObjectCommand({ Bucket: 'acme', Key: 'k', Body: 'acme data' }));
    expect(checked.at(-1)?.result).toMatchObject({ accessKeyId: KEYS.acme.id });
    const other = s3Client(await agentToken('globex'));
    await other.send(new GetObjectCommand({ Bucket: 'acme', Key: 'k' }));
    expect(checked.at(-1)?.result).toMatchObject({ accessKeyId: KEYS.shared.id });
  });

  it('what the upstream echoes of the keys is scrubbed', async () => {
    const res = await s3Client(await agentToken()).send(new GetObjectCommand({ Bucket: 'notes', Key: 'echo' }));
    const text = (await res.Body?.transformToString()) ?? '';
    expect(text).toContain('secret=[REDACTED] id=[REDACTED]');
    expect(text).not.toContain(KEYS.shared.secret);
    expect(text).not.toContain(KEYS.shared.id);
  });

  it('a policy deny reaches the S3 SDK as its typed AccessDenied error, and nothing is forwarded', async () => {
    const before = s3.requests.length;
    const err = await s3Client(await agentToken()).send(new GetObjectCommand({ Bucket: 'forbidden', Key: 'x' })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(S3ServiceException);
    expect(err).toMatchObject({ name: 'AccessDenied', $metadata: { httpStatusCode: 403 } });
    expect((err as Error).message).toContain('Denied by rule no-forbidden-bucket: that bucket is off limits');
    expect((err as S3ServiceException).$metadata.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(s3.requests.length).toBe(before);
  });

  it('Bedrock InvokeModel with the unmodified client (HTTP/2): the JSON body hashed into the signature; a model id with ":" in the path', async () => {
    const token = await agentToken();
    let out: InvokeModelCommandOutput | undefined;
    const protocols = await protocolsOf(async () => {
      out = await bedrockClient(token).send(new InvokeModelCommand({ modelId: MODEL, contentType: 'application/json', accept: 'application/json', body: JSON.stringify({ prompt: 'hi' }) }));
    });
    expect(protocols).toEqual(['h2c']);
    expect(JSON.parse(Buffer.from(out?.body ?? []).toString())).toEqual({ completion: 'echo: hi' });
    const req = bedrock.requests.at(-1) as RecordedRequest;
    expect(req.url).toBe('/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke');
    expect(headerValues(req, 'x-amz-content-sha256')).toEqual([]);
    expect(req.rawHeaders.filter((_, i) => i % 2 === 0 && req.rawHeaders[i]?.startsWith(':'))).toEqual([]);
    expect(checked.at(-1)?.result).toMatchObject({ accessKeyId: KEYS.shared.id });
    expectNothingOfTheAgent([token]);
    const row = (await gw.auditRows()).at(-1);
    expect(row).toMatchObject({ upstream: 'bedrock', agent: 'aws-agent', status: 200, upstream_status: 200, error_code: null });
  });

  it('Bedrock InvokeModel with the SDK\'s HTTP/1.1 handler (NodeHttpHandler) still works', async () => {
    const token = await agentToken();
    let out: InvokeModelCommandOutput | undefined;
    const protocols = await protocolsOf(async () => {
      out = await bedrockClient(token, { http1: true }).send(new InvokeModelCommand({ modelId: MODEL, contentType: 'application/json', accept: 'application/json', body: JSON.stringify({ prompt: 'one' }) }));
    });
    expect(protocols).toEqual(['http/1.1']);
    expect(JSON.parse(Buffer.from(out?.body ?? []).toString())).toEqual({ completion: 'echo: one' });
    expect(checked.at(-1)?.result).toMatchObject({ accessKeyId: KEYS.shared.id });
    expectNothingOfTheAgent([token]);
  });

  it('Bedrock ConverseStream with the unmodified client (HTTP/2): the event stream flows back through Valet', async () => {
    let text = '';
    let stop: string | undefined;
    const protocols = await protocolsOf(async () => {
      const out = await bedrockClient(await agentToken()).send(new ConverseStreamCommand({ modelId: MODEL, messages: [{ role: 'user', content: [{ text: 'hi' }] }] }));
      for await (const event of out.stream ?? []) {
        text += event.contentBlockDelta?.delta?.text ?? '';
        stop = event.messageStop?.stopReason ?? stop;
      }
    });
    expect(protocols).toEqual(['h2c']);
    expect(text).toBe('Hello');
    expect(stop).toBe('end_turn');
    expect(checked.at(-1)?.result).toMatchObject({ accessKeyId: KEYS.shared.id });
    // Metered from the binary event stream's metadata event, and from InvokeModel's headers.
    const metered = async (suffix: string): Promise<unknown> => {
      for (let i = 0; i < 100; i++) {
        const row = (await gw.auditRows()).filter((r) => r.path.endsWith(suffix)).at(-1);
        if (row?.usage != null) return { tokens: row.tokens, ...(JSON.parse(row.usage) as object) };
        await new Promise((r) => setTimeout(r, 20));
      }
      return undefined;
    };
    expect(await metered('/converse-stream')).toMatchObject({ tokens: 11, input: 9, output: 2, source: 'reported', complete: true });
    expect(await metered('/invoke')).toMatchObject({ tokens: 14, input: 11, output: 3, source: 'reported' });
  });

  it('Bedrock: a policy deny is the SDK\'s AccessDeniedException; a body over llm.max_body_bytes is a 413 ValidationException; neither is forwarded', async () => {
    const before = bedrock.requests.length;
    const client = bedrockClient(await agentToken());
    const denied = await client.send(new InvokeModelCommand({ modelId: 'anthropic.claude-3-opus-20240229-v1:0', body: '{}' })).catch((e: unknown) => e);
    expect(denied).toBeInstanceOf(AccessDeniedException);
    expect((denied as Error).message).toContain('Denied by rule no-opus: too expensive');
    const large = await client.send(new InvokeModelCommand({ modelId: MODEL, body: JSON.stringify({ prompt: 'x'.repeat(70_000) }) })).catch((e: unknown) => e);
    expect(large).toBeInstanceOf(ValidationException);
    expect(large).toMatchObject({ $metadata: { httpStatusCode: 413 } });
    expect(bedrock.requests.length).toBe(before);
  });

  it('assume_role: a burst of 50 calls makes one AssumeRole call; every request is signed with the temporary credentials', async () => {
    await s3Client(await agentToken()).send(new PutObjectCommand({ Bucket: 'role', Key: 'k', Body: 'role data' }));
    stsMode.delayMs = 100; // the burst arrives while AssumeRole is in flight
    const client = s3Client(await agentToken('initech'), { upstream: 's3-role' });
    const before = sts.requests.length;
    const results = await Promise.all(Array.from({ length: 50 }, () => client.send(new GetObjectCommand({ Bucket: 'role', Key: 'k' })).then((r) => r.Body?.transformToString())));
    expect(results).toEqual(Array.from({ length: 50 }, () => 'role data'));
    expect(sts.requests.length - before).toBe(1);
    for (const c of checked.slice(-50)) expect(c.result).toMatchObject({ accessKeyId: TEMP.id, sessionToken: TEMP.token });
    const form = new URLSearchParams(sts.requests.at(-1)?.body.toString());
    expect(Object.fromEntries(form)).toMatchObject({ Action: 'AssumeRole', RoleArn: 'arn:aws:iam::123456789012:role/agent', RoleSessionName: 'valet' });
    expect(headerValues(sts.requests.at(-1) as RecordedRequest, 'authorization')[0]).toContain(`Credential=${KEYS.shared.id}/`);
    // Another tenant on the same stored keys is served the same credentials.
    await s3Client(await agentToken('globex'), { upstream: 's3-role' }).send(new GetObjectCommand({ Bucket: 'role', Key: 'k' }));
    expect(sts.requests.length - before).toBe(1);
  });

  it('assume_role: STS down → 503 VALET_ERR_TOKEN_ENDPOINT, nothing forwarded, no secret in the answer, the log or the audit log', async () => {
    stsMode.status = 503;
    // acme's own keys (stored above) have assumed no role yet.
    const token = await agentToken('acme');
    const before = s3.requests.length;
    const err = await s3Client(token, { upstream: 's3-role', maxAttempts: 1 })
      .send(new GetObjectCommand({ Bucket: 'role', Key: 'k' }))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(S3ServiceException);
    expect(err).toMatchObject({ name: 'ServiceUnavailable', $metadata: { httpStatusCode: 503 } });
    expect((err as Error).message).toBe('The credential for upstream s3-role could not be obtained: STS answered 503: ServiceUnavailable; nothing was forwarded.');
    expect(s3.requests.length).toBe(before);
    const rows = await gw.auditRows();
    expect(rows.find((r) => r.request_id === (err as S3ServiceException).$metadata.requestId)).toMatchObject({ upstream: 's3-role', tenant: 'acme', status: 503, error_code: 'VALET_ERR_TOKEN_ENDPOINT' });
    const stored = JSON.stringify(rows) + gw.logs.join('\n');
    for (const secret of [KEYS.shared.secret, KEYS.acme.secret, TEMP.secret, TEMP.token, DUMMY.secretAccessKey, token]) expect(stored).not.toContain(secret);
  });

  it('every request the fakes received carried a valid signature; none carried the agent\'s', () => {
    expect(checked.length).toBeGreaterThanOrEqual(60);
    expect(checked.filter((c) => typeof c.result === 'string')).toEqual([]);
  });
});
