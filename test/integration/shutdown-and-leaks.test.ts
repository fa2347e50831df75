import { existsSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Agent, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { deploymentDump, deploymentQuery, SHARED_BACKENDS } from '../helpers/backends.js';
import { DEV_AUDIENCE, DEV_ISSUER, DEV_SIGNING_KEY, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { closedPort, requestIdOf, sleep, UUID } from '../helpers/http.js';
import { claims, craftJwt, hs256 } from '../helpers/keys.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const SECRET = 'sk-shutdown-leak-secret+/9Qz=';

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Reads everything a raw socket receives until the peer closes it. */
function readAll(socket: Socket): Promise<string> {
  return new Promise((resolve) => {
    let data = '';
    socket.on('data', (c: Buffer) => (data += c.toString('latin1')));
    socket.on('error', () => resolve(data));
    socket.on('close', () => resolve(data));
  });
}

function errCode(err: unknown): string | undefined {
  const e = err as { code?: string; cause?: { code?: string } };
  return e.code ?? e.cause?.code;
}

describe('graceful shutdown', () => {
  let upstream: FakeUpstream | undefined;
  let gw: TestGateway | undefined;
  let client: Agent | undefined;
  const timers: NodeJS.Timeout[] = [];

  afterEach(async () => {
    // Reset first, so a failed test cannot leave the next one waiting on its leftovers.
    const [c, g, u] = [client, gw, upstream];
    client = gw = upstream = undefined;
    for (const t of timers) clearTimeout(t);
    timers.length = 0;
    await c?.destroy().catch(() => undefined);
    await u?.close(); // before the gateway, so nothing it forwarded can keep it draining
    await g?.close();
  });

  it('under load: every answered request has exactly one audit row, and nothing is answered after close', async () => {
    let answered = 0;
    // The upstream holds every answer until close() has been called, then answers each after
    // 50–200 ms: whatever the machine's speed, all requests are in flight when draining starts.
    let openGate!: () => void;
    const gate = new Promise<void>((r) => (openGate = r));
    upstream = await startFakeUpstream((req, res) => {
      void gate.then(() =>
        timers.push(
          setTimeout(() => {
            res.writeHead(200, { 'content-type': 'application/json' });
            res.end(JSON.stringify({ url: req.url }));
            answered++;
          }, 50 + Math.floor(Math.random() * 150)),
        ),
      );
    });
    gw = await startTestGateway({
      gateway: { shutdown_grace_ms: 15_000 },
      upstreams: [{ name: 'api', origin: upstream.origin, connections: 32, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'allow-all', effect: 'allow' }],
      env: { API_KEY: SECRET },
    });
    const g = gw;
    const token = await g.token();
    let arrived = 0;
    g.gateway.server.on('request', () => arrived++);
    const dispatcher = new Agent({ connections: 256 });
    client = dispatcher;

    const N = 200;
    const outcomes = Array.from({ length: N }, (_, i) =>
      request(`${g.url}/api/v1/items/${i}`, { headers: { authorization: `Bearer ${token}` }, dispatcher })
        .then(async (res) => ({ ok: true as const, status: res.statusCode, id: res.headers['valet-request-id'], text: await res.body.text() }))
        .catch((err: unknown) => ({ ok: false as const, err })),
    );
    await until('all requests to reach the gateway', () => arrived >= N, 15_000);
    await until('the upstream to hold a full pool of requests', () => upstream!.requests.length >= 32, 15_000);
    expect(answered).toBe(0);

    const started = Date.now();
    const closing = g.gateway.close();
    openGate();
    const results = await Promise.all(outcomes);
    await closing;
    // close() returns once the last request is done, not at the end of the grace period.
    expect(Date.now() - started).toBeLessThan(10_000);

    // Requests after close are refused.
    const after = await request(`${g.url}/api/v1/late`, { headers: { authorization: `Bearer ${token}` } }).then(
      () => 'answered',
      (err: unknown) => errCode(err),
    );
    expect(after).toBe('ECONNREFUSED');

    const responses = results.filter((r) => r.ok);
    // The grace period (15 s) is far longer than the work: every in-flight request completes.
    expect(responses).toHaveLength(N);
    expect(responses.every((r) => r.status === 200)).toBe(true);
    const ids = responses.map((r) => r.id as string);
    for (const id of ids) expect(id).toMatch(UUID);
    expect(new Set(ids).size).toBe(N);

    const rows = (await g.auditRows());
    expect(rows).toHaveLength(responses.length);
    const byId = new Map<string, number>();
    for (const row of rows) byId.set(row.request_id, (byId.get(row.request_id) ?? 0) + 1);
    for (const id of ids) expect(byId.get(id), `audit rows for ${id}`).toBe(1);
    for (const row of rows) expect(row).toMatchObject({ status: 200, upstream_status: 200, decision: 'allow', error_code: null });
    expect(upstream.requests).toHaveLength(N);
  });

  it('a request that arrives while draining is refused with 503 and still audited; new connections are refused', async () => {
    upstream = await startFakeUpstream((_req, res) => {
      timers.push(
        setTimeout(() => {
          res.writeHead(200, { 'content-type': 'text/plain' });
          res.end('slow done');
        }, 600),
      );
    });
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'allow-all', effect: 'allow' }],
      env: { API_KEY: SECRET },
    });
    const g = gw;
    const token = await g.token();

    // A: in flight when close() is called, so draining lasts ~600 ms.
    const a = request(`${g.url}/api/v1/slow`, { headers: { authorization: `Bearer ${token}` } }).then(async (res) => ({
      status: res.statusCode,
      id: res.headers['valet-request-id'] as string,
      text: await res.body.text(),
    }));
    await until('A to reach the upstream', () => upstream!.requests.length === 1);

    // B: a connection that has started (but not finished) its request when close() is called.
    const b = connect(g.gateway.port, '127.0.0.1');
    await new Promise<void>((r) => b.once('connect', () => r()));
    const bResponse = readAll(b);
    b.write(`GET /api/v1/late HTTP/1.1\r\nHost: valet\r\nAuthorization: Bearer ${token}\r\n`);
    await sleep(50);

    const closing = g.gateway.close();
    await sleep(50);
    b.write('\r\n');

    // C: a brand-new connection during draining is refused outright.
    const c = await request(`${g.url}/api/v1/new`, { headers: { authorization: `Bearer ${token}` } }).then(
      () => 'answered',
      (err: unknown) => errCode(err),
    );
    expect(c).toBe('ECONNREFUSED');

    const raw = await bResponse;
    const resultA = await a;
    await closing;

    expect(resultA.status).toBe(200);
    expect(resultA.text).toBe('slow done');

    const [head = '', body = ''] = raw.split('\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 503/);
    expect(head).toMatch(/^retry-after:/im);
    const bId = /^x-request-id:\s*(\S+)\s*$/im.exec(head)?.[1];
    expect(bId).toMatch(UUID);
    expect(JSON.parse(body)).toMatchObject({ error: { code: 'VALET_ERR_SHUTTING_DOWN', request_id: bId } });
    expect(upstream.requests).toHaveLength(1); // B was never forwarded

    const rows = (await g.auditRows());
    expect(rows.filter((r) => r.request_id === resultA.id)).toHaveLength(1);
    // Every response the gateway gave names an audit row, this one included.
    expect(rows.filter((r) => r.request_id === bId), 'audit row for the 503 sent while draining').toHaveLength(1);
    expect(rows.find((r) => r.request_id === bId)).toMatchObject({ status: 503, error_code: 'VALET_ERR_SHUTTING_DOWN' });
  });

  it('a request cut off at the end of the grace period still gets an audit row', async () => {
    upstream = await startFakeUpstream(() => {
      /* never answers */
    });
    gw = await startTestGateway({
      gateway: { shutdown_grace_ms: 200 },
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'allow-all', effect: 'allow' }],
      env: { API_KEY: SECRET },
    });
    const g = gw;
    const token = await g.token();
    const outcome = request(`${g.url}/api/v1/hang`, { headers: { authorization: `Bearer ${token}` } }).then(
      async (res) => ({ status: res.statusCode, text: await res.body.text().catch(() => '') }),
      (err: unknown) => ({ error: errCode(err) ?? String(err) }),
    );
    await until('the request to reach the upstream', () => upstream!.requests.length === 1);
    const started = Date.now();
    await g.gateway.close();
    expect(Date.now() - started).toBeLessThan(2500);
    await outcome; // the client is cut off one way or another; it must not hang
    const rows = (await g.auditRows()).filter((r) => r.path === '/v1/hang');
    expect(rows).toHaveLength(1);
    expect(rows[0]!.error_code).not.toBeNull();
    expect(rows[0]!.decision).toBe('allow');
  });
});

describe('no token or secret leaks into logs or the audit log', () => {
  let api: FakeUpstream | undefined;
  let redirect: FakeUpstream | undefined;
  let gw: TestGateway | undefined;

  afterEach(async () => {
    await gw?.close();
    await api?.close();
    await redirect?.close();
  });

  it('after a mix of successes, denials, bad tokens, upstream failures and redirects', async () => {
    api = await startFakeUpstream();
    redirect = await startFakeUpstream((_req, res) => {
      res.writeHead(302, { location: `http://svc:${encodeURIComponent(SECRET)}@evil.example/steal?key=${encodeURIComponent(SECRET)}` });
      res.end();
    });
    const downPort = await closedPort();
    gw = await startTestGateway({
      upstreams: [
        { name: 'api', origin: api.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } },
        {
          name: 'anthropic',
          origin: api.origin,
          agent_token: { header: 'x-api-key' },
          credential: { scheme: 'header', header: 'x-api-key', secret: 'API_KEY' },
        },
        { name: 'qtok', origin: api.origin, agent_token: { query: 'access_token' }, credential: { scheme: 'query', param: 'key', secret: 'API_KEY' } },
        { name: 'basic', origin: api.origin, credential: { scheme: 'basic', username: 'svc', secret: 'API_KEY' } },
        { name: 'down', origin: `http://127.0.0.1:${downPort}`, credential: { scheme: 'bearer', secret: 'API_KEY' } },
        { name: 'redir', origin: redirect.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } },
      ],
      rules: [
        { id: 'read', methods: ['GET'], effect: 'allow' },
        { id: 'no-admin', paths: ['/admin/**'], effect: 'deny', reason: 'admin is off limits' },
      ],
      env: { API_KEY: SECRET },
    });
    const g = gw;
    const tokens: string[] = [];
    const mint = async (agent: string): Promise<string> => {
      const t = await g.token({ agent, user: `${agent}-user`, tenant: 't1' });
      tokens.push(t);
      return t;
    };
    const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
    const forged = craftJwt({ alg: 'HS256', typ: 'JWT' }, claims({ iss: DEV_ISSUER, aud: DEV_AUDIENCE }), hs256('wrong-key-wrong-key-wrong-key-wrong-key'));
    const expired = craftJwt({ alg: 'HS256', typ: 'JWT' }, claims({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, ttl: -600 }), hs256(DEV_SIGNING_KEY));
    const malformed = 'eyJhbGciOiJIUzI1NiJ9.not-json-at-all-but-long-enough.c2lnbmF0dXJl';
    tokens.push(forged, expired, malformed);

    const cases: { method?: 'GET' | 'POST'; path: string; headers: Record<string, string>; status: number }[] = [
      { path: '/api/v1/ok', headers: bearer(await mint('ok')), status: 200 },
      { path: '/anthropic/v1/models', headers: { 'x-api-key': await mint('anthropic') }, status: 200 },
      { path: `/qtok/v1/search?q=x&access_token=${await mint('query')}`, headers: {}, status: 200 },
      { path: '/basic/v1/ok', headers: bearer(await mint('basic')), status: 200 },
      { path: '/api/admin/users', headers: bearer(await mint('deny')), status: 403 },
      { method: 'POST', path: '/api/v1/ok', headers: bearer(await mint('default-deny')), status: 403 },
      { path: '/api/v1/ok', headers: bearer(forged), status: 401 },
      { path: '/api/v1/ok', headers: bearer(expired), status: 401 },
      { path: '/api/v1/ok', headers: bearer(malformed), status: 401 },
      { path: '/anthropic/v1/models', headers: { ...bearer(await mint('two-a')), 'x-api-key': await mint('two-b') }, status: 401 },
      { path: '/down/v1/ok', headers: bearer(await mint('down')), status: 502 },
      { path: '/redir/v1/ok', headers: bearer(await mint('redirect')), status: 302 },
      { path: '/nosuch/v1/ok', headers: bearer(await mint('unknown')), status: 404 },
    ];
    const ids: string[] = [];
    for (const c of cases) {
      const res = await request(`${g.url}${c.path}`, { method: c.method ?? 'GET', headers: c.headers, body: c.method === 'POST' ? '{}' : null });
      const text = await res.body.text();
      expect(res.statusCode, `${c.method ?? 'GET'} ${c.path.slice(0, 30)}`).toBe(c.status);
      for (const t of tokens) expect(text).not.toContain(t);
      expect(text).not.toContain(SECRET);
      ids.push(requestIdOf(res.headers));
    }

    // A request the HTTP parser rejects, carrying a token in a header.
    const parserToken = await mint('parser');
    const s = connect(g.gateway.port, '127.0.0.1');
    const raw = readAll(s);
    s.write(`GET /api/v1/ok HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${parserToken}\r\nbad header line\r\n\r\n`);
    expect(await raw).toMatch(/^HTTP\/1\.1 400/);

    await g.gateway.close(); // flushes the audit writer and writes the final log line

    const needles = [
      ...tokens.flatMap((t) => [t, t.split('.')[2] as string]),
      SECRET,
      encodeURIComponent(SECRET),
      Buffer.from(SECRET).toString('base64'),
      Buffer.from(`svc:${SECRET}`).toString('base64'),
    ].filter((n) => n.length >= 16);
    expect(needles.length).toBeGreaterThan(tokens.length);

    // Logs: one request line per pipeline request, and no needle anywhere.
    const requestLines = g.logs.filter((l) => (JSON.parse(l) as { msg?: string }).msg === 'request');
    expect(requestLines).toHaveLength(cases.length);
    for (const id of ids) expect(g.logs.some((l) => l.includes(id)), `log line for ${id}`).toBe(true);
    for (const line of g.logs) for (const n of needles) expect(line, 'log line').not.toContain(n);

    // Audit: every column of every row, read straight from the database.
    let rows: Record<string, unknown>[];
    if (SHARED_BACKENDS) rows = await deploymentQuery(g.dataDir, 'SELECT * FROM audit_log');
    else {
      const db = new Database(join(g.dataDir, 'valet.db'), { readonly: true });
      try {
        rows = db.prepare('SELECT * FROM audit_log').all() as Record<string, unknown>[];
      } finally {
        db.close();
      }
    }
    expect(rows.length).toBeGreaterThanOrEqual(cases.length);
    for (const id of ids) expect(rows.filter((r) => r['request_id'] === id)).toHaveLength(1);
    for (const row of rows) {
      for (const [column, value] of Object.entries(row)) {
        if (value === null) continue;
        for (const n of needles) expect(String(value), `audit column ${column}`).not.toContain(n);
      }
    }
    // And everything stored as bytes (SQLite: the files' pages, free space, WAL, in case a value was
    // written and replaced; PostgreSQL: every table of the deployment's schema).
    const stored: Record<string, string> = SHARED_BACKENDS ? await deploymentDump(g.dataDir) : {};
    for (const file of SHARED_BACKENDS ? [] : ['valet.db', 'valet.db-wal']) {
      const path = join(g.dataDir, file);
      if (existsSync(path)) stored[file] = readFileSync(path).toString('latin1');
    }
    expect(Object.keys(stored).length).toBeGreaterThan(0);
    for (const [where, bytes] of Object.entries(stored)) for (const n of needles) expect(bytes.includes(n), `${where} contains a secret or token`).toBe(false);
  });
});
