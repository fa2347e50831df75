import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { generateMasterKeyText } from '../../gateway/secrets/crypto.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

interface Json {
  status: number;
  text: string;
  body: Record<string, unknown> & { error?: { code: string; message: string } };
}

const VALUES = { shared1: 'sk-shared-one-5d1f', shared2: 'sk-shared-two-88c2', acme: 'sk-acme-only-a7e3', bad: 'sk-bad\r\nx-injected: 1' };

describe('secrets through the admin API', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  const responses: string[] = [];

  const admin = async (method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, token: string, body?: unknown, type = 'application/json'): Promise<Json> => {
    const res = await request(`${gw.adminUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': type }) },
      body: body === undefined ? null : JSON.stringify(body),
    });
    const text = await res.body.text();
    responses.push(text);
    return { status: res.statusCode, text, body: JSON.parse(text) as Json['body'] };
  };

  /** The credential the upstream received for one call by an agent of `tenant`. */
  const injected = async (tenant: string): Promise<{ status: number; auth: string[] }> => {
    const t = await gw.token({ agent: `bot-${tenant}`, tenant });
    const res = await request(`${gw.url}/api/v1/x`, { headers: { authorization: `Bearer ${t}` } });
    const text = await res.body.text();
    responses.push(text);
    return { status: res.statusCode, auth: res.statusCode === 200 ? headerValues(upstream.requests.at(-1)!, 'authorization') : [] };
  };

  beforeAll(async () => {
    upstream = await startFakeUpstream((_req, res) => res.end('{}'));
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'all', effect: 'allow', upstream: 'api' }],
    });
  });

  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('set, use, rotate, tenant override, list, remove — values never come back', async () => {
    const admin1 = await gw.adminToken(['admin'], { subject: 'alice' });
    expect((await injected('globex')).status).toBe(503);

    const created = await admin('POST', '/api/secrets', admin1, { name: 'API_KEY', value: VALUES.shared1 });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name: 'API_KEY', tenant: null, version: 1, rotated_at: null });
    expect(await injected('globex')).toEqual({ status: 200, auth: [`Bearer ${VALUES.shared1}`] });

    const again = await admin('POST', '/api/secrets', admin1, { name: 'API_KEY', value: VALUES.shared2 });
    expect(again.status).toBe(409);
    expect(again.body.error?.code).toBe('VALET_ERR_SECRET_EXISTS');

    const rotated = await admin('PUT', '/api/secrets/API_KEY', admin1, { value: VALUES.shared2 });
    expect(rotated.status).toBe(200);
    expect(rotated.body).toMatchObject({ version: 2, rotated_at: expect.any(String) });
    expect(await injected('globex')).toEqual({ status: 200, auth: [`Bearer ${VALUES.shared2}`] });

    // A tenant admin's secret overrides the shared one for that tenant only.
    const acmeAdmin = await gw.adminToken(['secrets_manager'], { subject: 'bob', tenant: 'acme' });
    const own = await admin('POST', '/api/secrets', acmeAdmin, { name: 'API_KEY', value: VALUES.acme });
    expect(own.status).toBe(201);
    expect(own.body['tenant']).toBe('acme');
    expect(await injected('acme')).toEqual({ status: 200, auth: [`Bearer ${VALUES.acme}`] });
    expect(await injected('globex')).toEqual({ status: 200, auth: [`Bearer ${VALUES.shared2}`] });

    const all = await admin('GET', '/api/secrets', admin1);
    expect((all.body['secrets'] as { tenant: string | null; version: number }[]).map((s) => [s.tenant, s.version])).toEqual([
      [null, 2],
      ['acme', 1],
    ]);
    const acmeView = await admin('GET', '/api/secrets', acmeAdmin);
    expect((acmeView.body['secrets'] as { tenant: string }[]).map((s) => s.tenant)).toEqual(['acme']);

    expect((await admin('DELETE', '/api/secrets/API_KEY?tenant=acme', acmeAdmin)).status).toBe(200);
    expect(await injected('acme')).toEqual({ status: 200, auth: [`Bearer ${VALUES.shared2}`] });
    expect((await admin('DELETE', '/api/secrets/API_KEY', admin1)).status).toBe(200);
    expect((await injected('acme')).status).toBe(503);
    expect((await admin('DELETE', '/api/secrets/API_KEY', admin1)).body.error?.code).toBe('VALET_ERR_SECRET_NOT_FOUND');
  });

  it('a tenant admin cannot touch shared secrets or another tenant', async () => {
    const acmeAdmin = await gw.adminToken(['admin'], { tenant: 'acme' });
    expect((await admin('GET', '/api/secrets?shared=true', acmeAdmin)).status).toBe(403);
    expect((await admin('GET', '/api/secrets?tenant=globex', acmeAdmin)).status).toBe(403);
    expect((await admin('POST', '/api/secrets', acmeAdmin, { name: 'X_KEY', value: 'v-1', tenant: 'globex' })).status).toBe(403);
    expect((await admin('POST', '/api/secrets', acmeAdmin, { name: 'X_KEY', value: 'v-1', tenant: null })).body['tenant']).toBe('acme');
  });

  it('read-only roles cannot write; bad values, bodies and media types are refused without echoing the value', async () => {
    const auditor = await gw.adminToken(['auditor']);
    expect((await admin('GET', '/api/secrets', auditor)).status).toBe(200);
    const denied = await admin('POST', '/api/secrets', auditor, { name: 'Y_KEY', value: 'v' });
    expect(denied.status).toBe(403);

    const a = await gw.adminToken(['admin']);
    const bad = await admin('POST', '/api/secrets', a, { name: 'Y_KEY', value: VALUES.bad });
    expect(bad.status).toBe(400);
    expect(bad.body.error?.code).toBe('VALET_ERR_SECRET_INVALID');
    expect((await admin('POST', '/api/secrets', a, { name: 'Y_KEY' })).body.error?.code).toBe('VALET_ERR_ADMIN_BAD_REQUEST');
    const plain = await admin('POST', '/api/secrets', a, { name: 'Y_KEY', value: 'v' }, 'text/plain');
    expect(plain.status).toBe(415);
    const dup = await request(`${gw.adminUrl}/api/secrets`, {
      method: 'POST',
      headers: { authorization: `Bearer ${a}`, 'content-type': 'application/json' },
      body: '{"name":"Y_KEY","value":"a","value":"b"}',
    });
    expect(dup.statusCode).toBe(400);
    responses.push(await dup.body.text());
    expect(JSON.parse(responses.at(-1)!).error.message).toMatch(/repeats the key "value"/);
  });

  it('rekey through the API names a key file; the gateway keeps serving with the new key; tenant admins may not', async () => {
    const a = await gw.adminToken(['admin']);
    expect((await admin('POST', '/api/secrets', a, { name: 'API_KEY', value: VALUES.shared1 })).status).toBe(201);
    const keyFile = join(gw.dataDir, 'new-master-key');
    writeFileSync(keyFile, `${generateMasterKeyText()}\n`, { mode: 0o600 });

    const tenantAdmin = await gw.adminToken(['admin'], { tenant: 'acme' });
    expect((await admin('POST', '/api/secrets/rekey', tenantAdmin, { new_key_file: keyFile })).status).toBe(403);
    const missing = await admin('POST', '/api/secrets/rekey', a, { new_key_file: join(gw.dataDir, 'nope') });
    expect(missing.body.error?.code).toBe('VALET_ERR_MASTER_KEY');

    const r = await admin('POST', '/api/secrets/rekey', a, { new_key_file: keyFile });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ secrets: 2, old_key_id: expect.any(String), new_key_id: expect.any(String) });
    expect(r.body['old_key_id']).not.toBe(r.body['new_key_id']);
    // Still decrypts (now under the new key), and takes new writes.
    expect(await injected('globex')).toEqual({ status: 200, auth: [`Bearer ${VALUES.shared1}`] });
    expect((await admin('PUT', '/api/secrets/API_KEY', a, { value: VALUES.shared2 })).status).toBe(200);
    expect(await injected('globex')).toEqual({ status: 200, auth: [`Bearer ${VALUES.shared2}`] });
    expect(responses.join('\n')).not.toContain(readFileSync(keyFile, 'utf8').trim());
  });

  it('no value appears in any response or log line', () => {
    const everything = [...responses, ...gw.logs].join('\n');
    for (const v of [VALUES.shared1, VALUES.shared2, VALUES.acme, 'sk-bad']) expect(everything).not.toContain(v);
  });
});
