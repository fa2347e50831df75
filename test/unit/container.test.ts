import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { refuseWeakKey } from '../../gateway/secrets/variable.js';

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
}
const compose = parse(readFileSync('docker-compose.yml', 'utf8')) as {
  services: Record<string, Service>;
  secrets?: Record<string, { file?: string }>;
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
