import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../gateway/config/load.js';
import { ConfigError } from '../../gateway/errors.js';

const dirs: string[] = [];
function configDir(yaml: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'valet-cfg-env-'));
  dirs.push(dir);
  writeFileSync(join(dir, 'gateway.yaml'), yaml);
  return dir;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function problems(dir: string, environment?: 'production'): string[] {
  try {
    loadConfig(dir, { environment });
    return [];
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems.map((p) => `${p.line}:${p.path}: ${p.message}`);
  }
}

const devIssuer = `issuers:
  - name: dev
    issuer: dev
    audience: valet
    algorithms: [HS256]
    secret: { env: K, generate: true }
  - name: corp
    issuer: https://corp.test/
    audience: valet
    algorithms: [RS256]
    jwks_url: http://corp.test/jwks.json
`;

describe('environment-dependent validation', () => {
  it('development accepts generated keys and http JWKS URLs', () => {
    expect(problems(configDir(devIssuer))).toEqual([]);
  });

  // `secret.generate` is refused where the key is resolved, at start: production needs the
  // variable set and never generates (test/integration/production-keys.test.ts).
  it('production refuses http JWKS URLs, by line', () => {
    expect(problems(configDir(devIssuer), 'production')).toEqual(['11:issuers[1].jwks_url: must use https in production']);
  });

  it('gateway.environment: production in YAML has the same effect', () => {
    expect(problems(configDir(`gateway: { environment: production }\n${devIssuer}`))).toHaveLength(1);
  });

  it('two issuers may not share an iss', () => {
    const dir = configDir(`issuers:
  - { name: a, issuer: same, audience: valet, algorithms: [HS256], secret: { env: K } }
  - { name: b, issuer: same, audience: valet, algorithms: [HS256], secret: { env: K } }
`);
    expect(problems(dir)).toEqual(['3:issuers[1].issuer: iss "same" is already used by issuer "a"']);
  });
});
