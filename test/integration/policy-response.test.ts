/**
 * Response rules: what comes back is redacted (JSON fields by path, values by pattern, in whole
 * and streamed JSON, SSE and NDJSON bodies split across writes, compressed or not), withheld
 * (block), or held until a person releases it (escalate). The agent never sees a byte a rule took.
 */
import { gzipSync } from 'node:zlib';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const CARD = '4242 4242 4242 4242';
const customer = { id: 'cus_1', email: 'ann@acme.com', owner: { email: 'bob@globex.com' }, card: { number: '4000056655665556', brand: 'visa' }, note: `card on file ${CARD}`, order: '1234567812345678' };
const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('response rules', () => {
  let api: FakeUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    api = await startFakeUpstream((req, res) => {
      const path = req.url.split('?')[0];
      if (path === '/stream') {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const events = [
          `data: ${JSON.stringify({ choices: [{ delta: { content: 'mail bob@globex.com or ann@acme.com' } }] })}\n\n`,
          `event: card\ndata: ${JSON.stringify({ card: { number: customer.card.number } })}\n\n`,
          'data: [DONE]\n\n',
        ];
        // Every event is split across writes: in the middle of the JSON, and between CR and LF.
        void (async () => {
          for (const e of events) {
            const wire = e.replace(/\n/g, '\r\n');
            const cut = Math.floor(wire.length / 2);
            res.write(wire.slice(0, cut));
            await pause(15);
            res.write(wire.slice(cut, -1));
            await pause(15);
            res.write(wire.slice(-1));
          }
          res.end();
        })();
        return;
      }
      if (path === '/lines') {
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        const text = `${JSON.stringify({ email: 'x@globex.com' })}\n${JSON.stringify({ card: { number: customer.card.number } })}\n`;
        res.write(text.slice(0, 9));
        setTimeout(() => res.end(text.slice(9)), 20);
        return;
      }
      if (path === '/gzip') {
        const body = gzipSync(JSON.stringify(customer));
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': body.length });
        res.end(body);
        return;
      }
      if (path === '/chunked') {
        res.writeHead(200, { 'content-type': 'application/json' });
        const text = JSON.stringify({ items: Array.from({ length: 200 }, (_, i) => ({ i, card: { number: customer.card.number } })) });
        res.write(text.slice(0, 1000));
        setTimeout(() => res.end(text.slice(1000)), 20);
        return;
      }
      if (path === '/image') {
        res.writeHead(200, { 'content-type': 'image/png' });
        res.end(Buffer.from([0x89, 0x50, 0x4e, 0x47]));
        return;
      }
      const status = path === '/error' ? 500 : 200;
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(path === '/report' ? { report: 'quarterly', total: 12 } : customer));
    });
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: api.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'api-allow', upstream: 'api', effect: 'allow' }],
      files: {
        'responses.yaml': `response_rules:
  - id: no-card-numbers
    upstream: api
    status: [2xx]
    effect: redact
    redact: { paths: ["**.card.number"], patterns: [card_number] }
  - id: other-tenants-emails
    upstream: api
    effect: redact
    redact:
      patterns: [email]
      keep: match.endsWith("@" + agent.tenant + ".com")
  - id: no-secrets
    upstream: api
    paths: ["/secret"]
    effect: block
    reason: secrets never reach agents
  - id: review-reports
    upstream: api
    paths: ["/report"]
    effect: escalate
    reason: reports are reviewed before release
    approval: { group: ops, timeout: 10s }
`,
      },
      env: { API_KEY: 'sk-response-rules-key' },
    });
  });
  afterAll(async () => {
    await gw.close();
    await api.close();
  });

  const get = async (path: string, tenant = 'acme'): Promise<{ status: number; type: string | undefined; text: string; id: string }> => {
    const res = await request(`${gw.url}/api${path}`, { headers: { authorization: `Bearer ${await gw.token({ agent: 'reader', tenant })}`, 'accept-encoding': 'identity' } });
    return { status: res.statusCode, type: [res.headers['content-type']].flat()[0], text: await res.body.text(), id: String(res.headers['valet-request-id']) };
  };
  const row = async (id: string): Promise<Record<string, unknown>> => {
    for (let i = 0; i < 100; i++) {
      const found = (await gw.auditRows()).find((r) => r.request_id === id);
      if (found !== undefined) return found as unknown as Record<string, unknown>;
      await pause(20);
    }
    throw new Error(`no audit row for ${id}`);
  };

  it('redacts fields by path and values by pattern in a whole JSON body; keeps what keep allows', async () => {
    const r = await get('/customers/1');
    expect(r.status).toBe(200);
    const body = JSON.parse(r.text) as typeof customer;
    expect(body.card).toEqual({ number: '[REDACTED]', brand: 'visa' });
    expect(body.note).toBe('card on file [REDACTED]');
    // Not a valid card number (Luhn): kept.
    expect(body.order).toBe('1234567812345678');
    // The caller's own tenant's address is kept; another tenant's is not.
    expect(body.email).toBe('ann@acme.com');
    expect(body.owner.email).toBe('[REDACTED]');
    expect(r.text).not.toContain('4000056655665556');
    const audited = await row(r.id);
    expect(JSON.parse(audited['response'] as string)).toEqual({ action: 'redact', rules: ['no-card-numbers', 'other-tenants-emails'], reason: 'response rule no-card-numbers', redacted: 3 });
    // Another tenant: acme's address is the foreign one now.
    const globex = JSON.parse((await get('/customers/1', 'globex')).text) as typeof customer;
    expect(globex.email).toBe('[REDACTED]');
    expect(globex.owner.email).toBe('bob@globex.com');
  });

  it('redacts a streamed SSE body event by event, split across writes, and it stays a stream', async () => {
    const res = await request(`${gw.url}/api/stream`, { headers: { authorization: `Bearer ${await gw.token({ agent: 'reader', tenant: 'acme' })}` } });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream');
    const arrivals: string[] = [];
    for await (const chunk of res.body) arrivals.push((chunk as Buffer).toString('utf8'));
    const text = arrivals.join('');
    // Events reach the agent as they complete, not all at the end.
    expect(arrivals.length).toBeGreaterThanOrEqual(3);
    const events = text.split('\r\n\r\n').filter(Boolean);
    expect(events).toHaveLength(3);
    expect(JSON.parse(events[0]?.replace(/^data: /, '') ?? '')).toEqual({ choices: [{ delta: { content: 'mail [REDACTED] or ann@acme.com' } }] });
    expect(events[1]).toBe(`event: card\r\ndata: ${JSON.stringify({ card: { number: '[REDACTED]' } })}`);
    expect(events[2]).toBe('data: [DONE]');
    expect(text).not.toContain('globex');
  });

  it('redacts NDJSON line by line, a gzip body decoded, and a chunked JSON body read whole', async () => {
    const lines = (await get('/lines')).text.trim().split('\n').map((l) => JSON.parse(l) as unknown);
    expect(lines).toEqual([{ email: '[REDACTED]' }, { card: { number: '[REDACTED]' } }]);
    const gz = await get('/gzip');
    expect(gz.status).toBe(200);
    expect((JSON.parse(gz.text) as typeof customer).card.number).toBe('[REDACTED]');
    const chunked = await get('/chunked');
    const items = (JSON.parse(chunked.text) as { items: { card: { number: string } }[] }).items;
    expect(items).toHaveLength(200);
    expect(items.every((i) => i.card.number === '[REDACTED]')).toBe(true);
  });

  it('applies a rule only to the statuses it names', async () => {
    const r = await get('/error');
    expect(r.status).toBe(500);
    // no-card-numbers is for 2xx only; other-tenants-emails for every status.
    const body = JSON.parse(r.text) as typeof customer;
    expect(body.card.number).toBe('4000056655665556');
    expect(body.owner.email).toBe('[REDACTED]');
  });

  it('blocks a response: a coded error, the reason audited, nothing of the body sent', async () => {
    const r = await get('/secret');
    expect(r.status).toBe(403);
    const e = (JSON.parse(r.text) as { error: { code: string; rule: string; reason: string } }).error;
    expect(e).toMatchObject({ code: 'VALET_ERR_RESPONSE_BLOCKED', rule: 'no-secrets', reason: 'secrets never reach agents' });
    expect(r.text).not.toContain('cus_1');
    const audited = await row(r.id);
    expect(audited).toMatchObject({ decision: 'allow', upstream_status: 200, status: 403, error_code: 'VALET_ERR_RESPONSE_BLOCKED' });
    expect(JSON.parse(audited['response'] as string)).toMatchObject({ action: 'block', rules: ['no-secrets'], reason: 'secrets never reach agents' });
  });

  it('refuses to pass on a body it cannot redact (binary)', async () => {
    const r = await get('/image');
    expect(r.status).toBe(403);
    expect(r.text).toContain('VALET_ERR_RESPONSE_BLOCKED');
  });

  it('holds an answer until a person releases it; a denial withholds it', async () => {
    const admin = await gw.adminToken(['admin']);
    const approver = await gw.adminToken(['approver'], { subject: 'olga', groups: ['ops'] });
    const decide = async (action: 'approve' | 'deny'): Promise<void> => {
      for (let i = 0; i < 250; i++) {
        const list = (await (await request(`${gw.adminUrl}/api/approvals?status=pending`, { headers: { authorization: `Bearer ${admin}` } })).body.json()) as { approvals: { id: string; rule: string; reason: string }[] };
        const found = list.approvals.find((a) => a.rule === 'review-reports');
        if (found !== undefined) {
          expect(found.reason).toContain('reports are reviewed before release (the answer, 200 application/json');
          const res = await request(`${gw.adminUrl}/api/approvals/${found.id}/${action}`, { method: 'POST', headers: { authorization: `Bearer ${approver}`, 'content-type': 'application/json' }, body: JSON.stringify({ reason: 'checked' }) });
          expect(res.statusCode, await res.body.text()).toBe(200);
          return;
        }
        await pause(20);
      }
      throw new Error('no pending approval');
    };
    const before = api.requests.filter((r) => r.url === '/report').length;
    const [released] = await Promise.all([get('/report'), decide('approve')]);
    expect(released.status).toBe(200);
    expect(JSON.parse(released.text)).toEqual({ report: 'quarterly', total: 12 });
    const [withheld] = await Promise.all([get('/report'), decide('deny')]);
    expect(withheld.status).toBe(403);
    expect(withheld.text).toContain('VALET_ERR_RESPONSE_BLOCKED');
    expect(withheld.text).not.toContain('quarterly');
    // Both calls were made upstream: what was held is the answer.
    expect(api.requests.filter((r) => r.url === '/report').length - before).toBe(2);
    expect(await row(withheld.id)).toMatchObject({ upstream_status: 200, error_code: 'VALET_ERR_RESPONSE_BLOCKED' });
  });
});
