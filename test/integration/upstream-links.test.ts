/**
 * URLs the upstream hands out (GitHub's `Link` pagination, redirects) name the upstream's origin.
 * An SDK follows them verbatim; unless Valet points them back at itself, page 2 goes straight to
 * the third party carrying the agent token, past policy and audit. Real sockets throughout: the
 * real `@octokit/rest` SDK, Valet, and a fake GitHub that records what it receives.
 */
import { Octokit } from '@octokit/rest';
import { request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';
import { rawRequest, sendRaw, type RawResponse } from '../security/raw-http.js';

const GITHUB_TOKEN = 'ghp_real-github-token';
const PAGES = 3;

describe('upstream URLs in response headers lead back through Valet', () => {
  let github: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  let valet: string;
  /** What the fake GitHub answers for a path, set per test. */
  let links: (origin: string, url: string) => { status?: number; headers: Record<string, string | string[]> } = () => ({ headers: {} });

  beforeAll(async () => {
    let origin = '';
    github = await startFakeUpstream((req, res) => {
      const page = Number(new URL(req.url, origin).searchParams.get('page') ?? '1');
      const { status, headers } = links(origin, req.url);
      const body = JSON.stringify([{ id: page * 2 - 1 }, { id: page * 2 }]);
      res.writeHead(status ?? 200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
      res.end(body);
    });
    origin = github.origin;
    gw = await startTestGateway({
      upstreams: [{ name: 'github', origin, credential: { scheme: 'bearer', secret: 'GITHUB_TOKEN' } }],
      rules: [{ id: 'reads', effect: 'allow', upstream: 'github', methods: ['GET'], paths: ['/repos/**', '/repositories/**'] }],
      env: { GITHUB_TOKEN },
    });
    token = await gw.token();
    valet = gw.url;
  });
  afterAll(async () => {
    await gw?.close();
    await github?.close();
  });

  let seen = 0;
  let rows = 0;
  beforeEach(async () => {
    seen = github.requests.length;
    rows = (await gw.auditRows()).length;
  });
  const received = (): RecordedRequest[] => github.requests.slice(seen);

  /** Every request reached the fake GitHub with the real credential and never the agent token. */
  function expectThroughValet(got: RecordedRequest[]): void {
    for (const r of got) {
      expect(headerValues(r, 'authorization'), r.url).toEqual([`Bearer ${GITHUB_TOKEN}`]);
      expect(JSON.stringify(r.rawHeaders) + r.url, r.url).not.toContain(token);
    }
  }

  it('octokit.paginate follows GitHub\'s absolute Link URLs through Valet for every page', async () => {
    links = (origin, url) => {
      const page = Number(new URL(url, origin).searchParams.get('page') ?? '1');
      const at = (p: number): string => `<${origin}/repositories/1/issues?per_page=2&page=${p}>`;
      const parts = [];
      if (page < PAGES) parts.push(`${at(page + 1)}; rel="next"`, `${at(PAGES)}; rel="last"`);
      if (page > 1) parts.push(`${at(1)}; rel="first"`, `${at(page - 1)}; rel="prev"`);
      return { headers: { link: parts.join(', ') } };
    };
    const octokit = new Octokit({ auth: token, baseUrl: `${valet}/github` });
    const issues = await octokit.paginate('GET /repos/{owner}/{repo}/issues', { owner: 'o', repo: 'r', per_page: 2 });

    expect(issues.map((i) => i.id)).toEqual([1, 2, 3, 4, 5, 6]);
    const got = received();
    expect(got.map((r) => r.url)).toEqual([
      '/repos/o/r/issues?per_page=2',
      '/repositories/1/issues?per_page=2&page=2',
      '/repositories/1/issues?per_page=2&page=3',
    ]);
    expectThroughValet(got);
    const audit = (await gw.waitForAudit(rows + PAGES)).slice(rows);
    expect(audit.map((r) => [r.upstream, r.path, r.decision, r.status])).toEqual([
      ['github', '/repos/o/r/issues', 'allow', 200],
      ['github', '/repositories/1/issues', 'allow', 200],
      ['github', '/repositories/1/issues', 'allow', 200],
    ]);
  });

  it('a redirect\'s Location on the upstream points at Valet, and a client following it stays on Valet', async () => {
    links = (origin, url) => (url.startsWith('/repos/o/old') ? { status: 301, headers: { location: `${origin}/repos/o/new?x=1` } } : { headers: {} });
    const res = await request(`${valet}/github/repos/o/old`, { headers: { authorization: `Bearer ${token}` } });
    await res.body.dump();
    expect(res.statusCode).toBe(301);
    expect(res.headers['location']).toBe(`${valet}/github/repos/o/new?x=1`);

    // fetch follows same-origin redirects with the Authorization header: both hops go through Valet.
    const followed = await fetch(`${valet}/github/repos/o/old`, { headers: { authorization: `Bearer ${token}` } });
    expect(followed.status).toBe(200);
    expect(followed.url).toBe(`${valet}/github/repos/o/new?x=1`);
    const got = received();
    expect(got.map((r) => r.url)).toEqual(['/repos/o/old', '/repos/o/old', '/repos/o/new?x=1']);
    expectThroughValet(got);
    expect((await gw.waitForAudit(rows + 3)).slice(rows).map((r) => r.path)).toEqual(['/repos/o/old', '/repos/o/old', '/repos/o/new']);
  });

  it('Link shapes: several lines, relative, upper-case scheme on the upstream, another host untouched and without a credential', async () => {
    links = (origin) => ({
      headers: {
        link: [
          `</repositories/1/issues?page=2>; rel="next", <${origin.replace('http:', 'HTTP:')}/repositories/1/issues?page=3>; rel="last"`,
          `<https://docs.github.example/rest/issues>; rel="help", <?page=1>; rel="first"`,
        ],
        'content-location': `${origin}/repos/o/r/issues/1`,
      },
    });
    const res = await request(`${valet}/github/repos/o/r/issues`, { headers: { authorization: `Bearer ${token}` } });
    await res.body.dump();
    expect(res.headers['link']).toEqual([
      `</github/repositories/1/issues?page=2>; rel="next", <${valet}/github/repositories/1/issues?page=3>; rel="last"`,
      '<https://docs.github.example/rest/issues>; rel="help", <?page=1>; rel="first"',
    ]);
    expect(res.headers['content-location']).toBe(`${valet}/github/repos/o/r/issues/1`);
    expect(JSON.stringify(res.headers)).not.toContain(GITHUB_TOKEN);
  });

  it('a Location carrying the credential or userinfo loses them, on any host', async () => {
    links = (origin) => ({ status: 302, headers: { location: `http://user:${GITHUB_TOKEN}@cdn.example.net/f?sig=${GITHUB_TOKEN}`, link: `<${origin}/x?t=${GITHUB_TOKEN}>; rel="next"` } });
    const res = await request(`${valet}/github/repos/o/r/archive`, { headers: { authorization: `Bearer ${token}` } });
    await res.body.dump();
    expect(res.headers['location']).toBe('http://cdn.example.net/f?sig=[REDACTED]');
    expect(res.headers['link']).toBe(`<${valet}/github/x?t=[REDACTED]>; rel="next"`);
  });

  it('the Valet origin comes from the agent\'s Host when it is a plain host[:port], else from the listener', async () => {
    links = (origin) => ({ status: 302, headers: { location: `${origin}/repos/o/next` } });
    const port = gw.gateway.port;
    const location = async (host: string): Promise<string[]> => {
      const headers: [string, string][] = [['Host', host], ['Authorization', `Bearer ${token}`]];
      const { responses } = await sendRaw(port, rawRequest('GET /github/repos/o/r HTTP/1.1', headers), { expect: 1, settleMs: 30 });
      return (responses[0] as RawResponse).headers.filter(([name]) => name === 'location').map(([, value]) => value);
    };
    expect(await location('valet.internal:8080')).toEqual(['http://valet.internal:8080/github/repos/o/next']);
    expect(await location('Valet.Internal')).toEqual(['http://valet.internal/github/repos/o/next']);
    for (const bad of ['evil.example/path', 'user@evil.example', 'valet:99999']) {
      expect(await location(bad), bad).toEqual([`http://127.0.0.1:${port}/github/repos/o/next`]);
    }
  });
});
