import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listeningPort, runCli, spawnCli } from '../helpers/cli.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

/** The `valet` command as an operator runs it: start, token, audit, policy check, SIGTERM. */
describe('valet CLI', () => {
  let root: string;
  let configDir: string;
  let dataDir: string;
  let upstream: FakeUpstream;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    root = mkdtempSync(join(tmpdir(), 'valet-cli-'));
    configDir = join(root, 'policies');
    dataDir = join(root, 'data');
    cpSync('policies', configDir, { recursive: true });
    // Point the example's echo upstream at the fake one.
    const upstreams = join(configDir, 'upstreams.yaml');
    writeFileSync(upstreams, readFileSync(upstreams, 'utf8').replace('http://127.0.0.1:9999', upstream.origin));
  });
  afterAll(async () => {
    await upstream.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('policy check accepts the shipped example policies', async () => {
    const r = await runCli(['policy', 'check', 'policies']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ok: 1 issuer\(s\), 6 upstream\(s\), \d+ tool\(s\), \d+ rule\(s\), \d+ limit\(s\), environment development, version sha256:[0-9a-f]{16}\n$/);
  });

  it('policy check names file, line and key of a mistake and exits 1', async () => {
    const bad = mkdtempSync(join(tmpdir(), 'valet-bad-'));
    writeFileSync(
      join(bad, 'upstreams.yaml'),
      'upstreams:\n  - name: api\n    origin: http://127.0.0.1:1\n    credentail: { scheme: bearer, secret: X }\n',
    );
    const r = await runCli(['policy', 'check', bad]);
    rmSync(bad, { recursive: true, force: true });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/upstreams\.yaml:4:5: upstreams\[0\]\.credentail: unknown key/);
    expect(r.stderr).toMatch(/upstreams\.yaml:2:\d+: upstreams\[0\]: missing required key "credential"/);
  });

  it('usage errors exit 2', async () => {
    const r = await runCli(['token']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--agent is required');
  });

  it('token refuses a --ttl above the issuer\'s max_ttl (1h by default), for agent and admin tokens', async () => {
    const env = { VALET_CONFIG: configDir, VALET_DATA: dataDir };
    for (const args of [['--agent', 'a'], ['--admin', '--subject', 'alice', '--role', 'admin']]) {
      const r = await runCli(['token', ...args, '--ttl', '2h'], { env });
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/--ttl must be from 1s to issuer \S+'s max_ttl \(3600s\)/);
    }
  });

  it('start, token, a call, SIGTERM, then audit shows the rows', async () => {
    const env = { VALET_CONFIG: configDir, VALET_DATA: dataDir, ECHO_API_KEY: 'echo-cli-secret', VALET_PORT: '0', VALET_ADMIN_PORT: '0' };
    const child = spawnCli(['start'], { env });
    const port = await listeningPort(child);
    const minted = await runCli(['token', '--agent', 'cli-agent', '--tenant', 'acme', '--role', 'support', '--ttl', '5m'], { env });
    expect(minted.code).toBe(0);
    const token = minted.stdout.trim();
    expect(token.split('.')).toHaveLength(3);

    const ok = await request(`http://127.0.0.1:${port}/echo/v1/hello`, { headers: { authorization: `Bearer ${token}` } });
    expect(ok.statusCode).toBe(200);
    await ok.body.text();
    expect(headerValues(upstream.requests.at(-1)!, 'x-echo-key')).toEqual(['echo-cli-secret']);
    const denied = await request(`http://127.0.0.1:${port}/echo/admin/users`, { headers: { authorization: `Bearer ${token}` } });
    expect(denied.statusCode).toBe(403);
    expect(((await denied.body.json()) as { error: { rule: string } }).error.rule).toBe('echo-no-admin');

    const exited = new Promise<number | null>((r) => child.once('exit', r));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);

    const table = await runCli(['audit'], { env });
    expect(table.code).toBe(0);
    expect(table.stdout.split('\n')[0]).toMatch(/^TIME\s+REQUEST\s+AGENT/);
    expect(table.stdout).toMatch(/cli-agent\s+acme\s+echo\s+GET\s+\/admin\/users\s+deny\s+echo-no-admin\s+403/);

    const json = await runCli(['audit', '--format', 'json', '--decision', 'allow'], { env });
    const rows = JSON.parse(json.stdout) as { agent: string; path: string; status: number }[];
    expect(rows).toEqual([expect.objectContaining({ agent: 'cli-agent', path: '/v1/hello', status: 200 })]);
    expect(json.stdout).not.toContain(token);
    expect(json.stdout).not.toContain('echo-cli-secret');
  });
});
