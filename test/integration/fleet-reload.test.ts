/**
 * Hot reload across a fleet: instances that share one configuration directory all serve a changed
 * policy within seconds, and each says which version it serves (`/readyz`, every audit row).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { openAuditDatabase } from '../../gateway/audit/sqlite/store.js';
import { mintAgentToken } from '../../gateway/auth/mint.js';
import { startGateway, type RunningGateway } from '../../gateway/main.js';
import { DEV_SIGNING_KEY, devIssuer } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const quiet = new Writable({ write: (_c, _e, cb) => cb() });
const rules = (paths: string[]): string => stringify({ rules: [{ id: 'reads', upstream: 'api', methods: ['GET'], paths, effect: 'allow' }] });

describe('hot reload across instances sharing a configuration directory', () => {
  let root: string;
  let upstream: FakeUpstream;
  const instances: RunningGateway[] = [];
  let token: string;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'valet-fleet-reload-'));
    upstream = await startFakeUpstream();
    const configDir = join(root, 'config');
    mkdirSync(configDir);
    writeFileSync(
      join(configDir, 'gateway.yaml'),
      stringify({ gateway: { listen: { host: '127.0.0.1', port: 0 }, admin: { listen: { host: '127.0.0.1', port: 0 } } }, issuers: [devIssuer] }),
    );
    writeFileSync(join(configDir, 'upstreams.yaml'), stringify({ upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }] }));
    writeFileSync(join(configDir, 'rules.yaml'), rules(['/v1/public/**']));
    for (const n of [1, 2, 3]) {
      instances.push(
        await startGateway({
          configDir,
          dataDir: join(root, `data-${n}`),
          env: { VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY, API_KEY: 'real-key' },
          logDestination: quiet,
          watch: true,
        }),
      );
    }
    token = await mintAgentToken(instances[0]!.config.issuers[0]!, new TextEncoder().encode(DEV_SIGNING_KEY), { agent: 'fleet-agent', ttlSeconds: 300 });
  });
  afterAll(async () => {
    for (const g of instances) await g.close();
    await upstream?.close();
    rmSync(root, { recursive: true, force: true });
  });

  const version = async (g: RunningGateway): Promise<string> => {
    const res = await request(`${g.admin.url}/readyz`);
    return ((await res.body.json()) as { checks: { policy: { version: string } } }).checks.policy.version;
  };
  const status = async (g: RunningGateway, path: string): Promise<number> => {
    const res = await request(`${g.url}/api${path}`, { headers: { authorization: `Bearer ${token}` } });
    await res.body.dump();
    return res.statusCode;
  };

  it('every instance serves the new version within seconds of the change, and records it', async () => {
    const before = await Promise.all(instances.map(version));
    expect(new Set(before).size).toBe(1);
    for (const g of instances) expect(await status(g, '/v1/private/x')).toBe(403);

    writeFileSync(join(root, 'config', 'rules.yaml'), rules(['/v1/public/**', '/v1/private/**']));
    const changed = async (): Promise<boolean> => {
      const now = await Promise.all(instances.map(version));
      return new Set(now).size === 1 && now[0] !== before[0];
    };
    await expect.poll(changed, { timeout: 5_000, interval: 100 }).toBe(true);
    const after = await version(instances[0]!);
    expect(after).not.toBe(before[0]);
    for (const g of instances) expect(await status(g, '/v1/private/x')).toBe(200);
    // Each instance's audit row names the version that decided it.
    for (const [i, g] of instances.entries()) {
      await g.audit.flush();
      const db = openAuditDatabase(join(root, `data-${i + 1}`), { readonly: true });
      try {
        const row = db.prepare("SELECT policy_version FROM audit_log WHERE path = '/v1/private/x' ORDER BY id DESC LIMIT 1").get() as { policy_version: string };
        expect(row.policy_version).toBe(after);
      } finally {
        db.close();
      }
    }
  });
});
