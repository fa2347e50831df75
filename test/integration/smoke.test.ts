import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';

describe('smoke', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'allow-all', upstream: 'api', effect: 'allow' }],
      env: { API_KEY: 'real-secret-value' },
    });
  });
  afterAll(async () => {
    await gw.close();
    await upstream.close();
  });

  it('forwards with the real credential', async () => {
    const token = await gw.token();
    const res = await request(`${gw.url}/api/v1/things?a=1`, { headers: { authorization: `Bearer ${token}` } });
    expect(res.statusCode).toBe(200);
    await res.body.json();
    const got = upstream.requests.at(-1)!;
    expect(got.url).toBe('/v1/things?a=1');
    expect(headerValues(got, 'authorization')).toEqual(['Bearer real-secret-value']);
    const rows = await gw.waitForAudit(1);
    expect(rows[0]).toMatchObject({ agent: 'agent-1', decision: 'allow', status: 200, upstream_status: 200 });
  });
});
