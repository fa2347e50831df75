import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { refuseWeakKey } from '../../gateway/secrets/variable.js';
import { runCli } from '../helpers/cli.js';

/** The container flow is production-like by default: checked on the files, Docker is not needed. */
interface Service {
  command?: string[];
  volumes?: string[];
  depends_on?: Record<string, { condition?: string }>;
  ports?: string[];
  init?: boolean;
  environment?: Record<string, string>;
  secrets?: string[];
  healthcheck?: { test?: string[] };
  network_mode?: string;
  profiles?: string[];
  networks?: string[];
  image?: string;
}
// Compose reads YAML merge keys (`<<: *valet-instance`); so does this parse.
const compose = parse(readFileSync('docker-compose.yml', 'utf8'), { merge: true }) as {
  services: Record<string, Service>;
  secrets?: Record<string, { file?: string }>;
  networks?: Record<string, { internal?: boolean } | null>;
};
const dockerfile = readFileSync('Dockerfile', 'utf8');
/** The final stage: everything after the last FROM. */
const finalStage = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
const valet = compose.services['valet'] as Service;

describe('docker-compose.yml', () => {
  it('publishes every port on 127.0.0.1 only: the data plane and the admin plane', () => {
    for (const [name, service] of Object.entries(compose.services)) {
      for (const p of service.ports ?? []) expect({ name, port: p }).toEqual({ name, port: expect.stringMatching(/^127\.0\.0\.1:\d+:\d+$/) });
    }
    expect(valet.ports).toEqual(['127.0.0.1:8080:8080', '127.0.0.1:8081:8081']);
    expect(valet.environment?.['VALET_ADMIN_HOST']).toBe('0.0.0.0');
  });

  it('runs in production with an init process and a healthcheck on the admin /readyz', () => {
    expect(valet.environment).toMatchObject({ VALET_ENV: 'production', NODE_ENV: 'production' });
    expect(valet.init).toBe(true);
    const test = valet.healthcheck?.test ?? [];
    expect(test.slice(0, 3)).toEqual(['CMD', 'node', '-e']);
    expect(test[3]).toContain('http://127.0.0.1:8081/readyz');
  });

  it('creates per-install keys on first start, in a volume of their own, and never reads keys from .env', () => {
    const keys = compose.services['keys'] as Service;
    expect(keys.command).toEqual(['node', 'dist/gateway/cli/main.js', 'keys', 'init', '--dir', '/keys']);
    expect(keys.volumes).toEqual(['valet-keys:/keys']);
    expect(valet.depends_on?.['keys']?.condition).toBe('service_completed_successfully');
    expect(valet.volumes).toContain('valet-keys:/run/valet-keys:ro');
    expect(valet.environment).toMatchObject({
      VALET_MASTER_KEY_FILE: '/run/valet-keys/valet_master_key',
      VALET_DEV_SIGNING_KEY_FILE: '/run/valet-keys/valet_signing_key',
    });
    // The key volume is not the data volume, nor mounted inside it.
    const dataMount = (valet.volumes ?? []).find((v) => v.startsWith('valet-data:'))?.split(':')[1] ?? '/data';
    expect(valet.environment?.['VALET_DATA']).toBe(dataMount);
    expect(valet.environment?.['VALET_MASTER_KEY_FILE']?.startsWith(`${dataMount}/`)).toBe(false);
    expect(readFileSync('secrets.example', 'utf8')).not.toMatch(/^\s*VALET_[A-Z_]*(KEY|SECRET)\s*=/m);
  });
});

describe('docker-compose.yml, fleet profile', () => {
  const fleet = Object.entries(compose.services).filter(([, s]) => s.profiles?.includes('fleet'));
  const instances = fleet.filter(([, s]) => s.image === 'valet:local' && s.command === undefined);
  const haproxy = readFileSync('deploy/fleet/haproxy.cfg', 'utf8');

  it('has PostgreSQL, Redis, three Valet instances and a load balancer, and only the balancer publishes ports', () => {
    expect(fleet.map(([n]) => n).sort()).toEqual(['fleet-keys', 'lb', 'postgres', 'redis', 'valet-1', 'valet-2', 'valet-3']);
    expect(instances.map(([n]) => n)).toEqual(['valet-1', 'valet-2', 'valet-3']);
    for (const [name, s] of fleet) if (name !== 'lb') expect(s.ports, name).toBeUndefined();
    expect(compose.services['lb']?.ports).toEqual(['127.0.0.1:8090:8080', '127.0.0.1:8091:8081']);
    // The engines are on an internal network the balancer is not on.
    expect(compose.networks?.['backend']?.internal).toBe(true);
    for (const n of ['postgres', 'redis']) expect(compose.services[n]?.networks).toEqual(['backend']);
    expect(compose.services['lb']?.networks).toEqual(['frontend']);
  });

  it('every instance shares the engines and the keys, has its own id and data, and no password in its environment', () => {
    const ids = new Set<string>();
    const data = new Set<string>();
    for (const [name, s] of instances) {
      const env = s.environment ?? {};
      expect(env, name).toMatchObject({
        VALET_ENV: 'production',
        VALET_POSTGRES_URL: 'postgres://valet@postgres:5432/valet',
        PGPASSFILE: '/run/valet-keys/pgpass',
        VALET_REDIS_URL: 'redis://redis:6379',
        VALET_MASTER_KEY_FILE: '/run/valet-keys/valet_master_key',
        VALET_APPROVAL_LINK_KEY_FILE: '/run/valet-keys/valet_approval_link_key',
      });
      ids.add(env['VALET_INSTANCE_ID'] ?? '');
      data.add((s.volumes ?? []).find((v) => v.endsWith(':/data')) ?? '');
      expect(s.volumes).toContain('fleet-keys:/run/valet-keys:ro');
      expect(s.depends_on).toMatchObject({ postgres: { condition: 'service_healthy' }, redis: { condition: 'service_healthy' }, 'fleet-keys': { condition: 'service_completed_successfully' } });
      expect(s.healthcheck?.test?.[3]).toContain('/readyz');
      for (const v of Object.values(env)) expect(v).not.toMatch(/:[^@/]+@/); // no user:password@ in a URL
    }
    expect(ids).toEqual(new Set(['valet-1', 'valet-2', 'valet-3']));
    expect(data.size).toBe(3);
    expect(compose.services['fleet-keys']?.command).toEqual(['node', 'dist/gateway/cli/main.js', 'keys', 'init', '--dir', '/keys', '--fleet']);
    expect(compose.services['postgres']?.environment).toMatchObject({ POSTGRES_USER: 'valet', POSTGRES_DB: 'valet', POSTGRES_PASSWORD_FILE: '/run/valet-keys/postgres_password' });
  });

  it('the balancer routes to exactly those instances and takes one out when its /readyz is not 200', () => {
    const servers = (backend: string): string[] => {
      const section = haproxy.slice(haproxy.search(new RegExp(`^backend ${backend}$`, 'm'))).split(/\n(?=\S)/)[0] ?? '';
      return [...section.matchAll(/^\s+server (\S+) (\S+)$/gm)].map((m) => `${m[1]} ${m[2]}`);
    };
    expect(servers('valet')).toEqual(instances.map(([n]) => `${n} ${n}:8080`));
    expect(servers('valet_admin')).toEqual(instances.map(([n]) => `${n} ${n}:8081`));
    expect(haproxy).toMatch(/^backend valet\n(?:.*\n)*?\s+option httpchk GET \/readyz\n\s+http-check expect status 200\n\s+default-server check port 8081/m);
    expect(haproxy).not.toMatch(/forwardfor/);
  });
});

describe('valet keys init --fleet', () => {
  it('adds the link key, PostgreSQL\'s password and a pgpass line node-postgres reads, all 0600, once', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'valet-fleet-keys-')), 'keys');
    try {
      const first = await runCli(['keys', 'init', '--dir', dir, '--fleet']);
      expect(first.code, first.stderr).toBe(0);
      expect(first.stdout.split('\n').filter(Boolean).map((l) => l.split(/\s+/)[0])).toEqual(['created', 'created', 'created', 'created', 'created']);
      const names = readdirSync(dir).sort();
      expect(names).toEqual(['pgpass', 'postgres_password', 'valet_approval_link_key', 'valet_master_key', 'valet_signing_key']);
      for (const n of names) expect((statSync(join(dir, n)).mode & 0o777).toString(8), n).toBe('600');
      const password = readFileSync(join(dir, 'postgres_password'), 'utf8').trim();
      expect(Buffer.from(password, 'base64')).toHaveLength(32);
      // The library node-postgres uses for PGPASSFILE finds the password for the fleet's user.
      // @ts-expect-error pgpass ships no types
      const pgpass = (await import('pgpass')).default as (conn: Record<string, unknown>, cb: (pw: string | undefined) => void) => void;
      const found = await new Promise<string | undefined>((resolve) => {
        process.env['PGPASSFILE'] = join(dir, 'pgpass');
        pgpass({ host: 'postgres', port: 5432, database: 'valet', user: 'valet' }, resolve);
      });
      delete process.env['PGPASSFILE'];
      expect(found).toBe(password);
      const again = await runCli(['keys', 'init', '--dir', dir, '--fleet']);
      expect(again.stdout.split('\n').filter(Boolean).every((l) => l.startsWith('kept'))).toBe(true);
      expect(readFileSync(join(dir, 'postgres_password'), 'utf8').trim()).toBe(password);
    } finally {
      rmSync(dirname(dir), { recursive: true, force: true });
    }
  }, 30_000);
});

describe('Dockerfile', () => {
  it('defaults to production, the admin plane on 0.0.0.0 in the container, keys from /run/secrets', () => {
    for (const env of ['NODE_ENV=production', 'VALET_ENV=production', 'VALET_ADMIN_HOST=0.0.0.0', 'VALET_MASTER_KEY_FILE=/run/secrets/valet_master_key']) {
      expect(finalStage).toContain(env);
    }
    // The mount points a fresh named volume takes its owner and mode from.
    expect(finalStage).toMatch(/^RUN mkdir -p \/data \/keys && chown node:node \/data \/keys && chmod 0700 \/data \/keys$/m);
  });

  it('runs node under tini, with a node-only healthcheck on /readyz', () => {
    expect(finalStage).toMatch(/apt-get install -y --no-install-recommends tini/);
    expect(finalStage).toMatch(/^ENTRYPOINT \["\/usr\/bin\/tini", "-s", "--"\]$/m);
    expect(finalStage).toMatch(/^HEALTHCHECK [^\n]*\\\n\s+CMD \["node", "-e", "[^\n]*http:\/\/127\.0\.0\.1:8081\/readyz/m);
    const instructions = finalStage.split('\n').filter((l) => !l.trimStart().startsWith('#')).join('\n');
    expect(instructions).not.toMatch(/curl|wget/);
    expect(finalStage).toMatch(/^USER node$/m);
  });
});

describe('no usable key in the repository', () => {
  it('every literal gateway key (VALET_*KEY, VALET_*SECRET) in README, docs, secrets.example and compose is refused in production', () => {
    const files = ['README.md', 'secrets.example', 'docker-compose.yml', ...readdirSync('docs').filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
    const assignment = /\b(VALET_[A-Z_]*(?:KEY|SECRET))\s*[=:]\s*["']?([A-Za-z0-9+/_=.-]{16,})/g;
    for (const file of files) {
      for (const m of readFileSync(file, 'utf8').matchAll(assignment)) {
        const [, name, value] = m as unknown as [string, string, string];
        if (value.startsWith('/') || /^[A-Z_]+$/.test(value)) continue; // a path or another variable's name
        expect(() => refuseWeakKey(name, value, 'production'), `${file}: ${name}`).toThrow();
      }
    }
  });

  it('the value secrets.example used to hold, and CHANGE_ME anywhere, are refused', () => {
    expect(() => refuseWeakKey('K', 'dev-signing-key-fake-0000000000000000000000', 'production')).toThrow(/published in the Valet repository/);
    expect(() => refuseWeakKey('K', 'dev-signing-key-fake-0000000000000000000000', 'development')).not.toThrow();
    expect(() => refuseWeakKey('K', 'CHANGE_ME', 'development')).toThrow(/placeholder/);
    expect(() => refuseWeakKey('K', 'x'.repeat(20) + 'changeme' + 'y'.repeat(20), 'staging')).toThrow(/placeholder/);
  });
});
