import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';
import { loadConfig } from '../../gateway/config/load.js';
import type { UpstreamConfig } from '../../gateway/config/types.js';
import { ConfigError, type ConfigProblem } from '../../gateway/errors.js';

const GATEWAY_YAML = `issuers:
  - name: dev
    issuer: valet-dev
    audience: valet
    algorithms: [HS256]
    secret: { env: VALET_DEV_SIGNING_KEY }
`;

/**
 * Loading an `upstreams.yaml` beside a minimal gateway file, for config tests: `load` gives the
 * upstream called `name`; `problems` expects a ConfigError and checks every problem names
 * upstreams.yaml with a line and column. Call once at the top of a test file (it removes its
 * directories after each test).
 */
export function upstreamConfigs(): { load(upstreamsYaml: string, name: string): UpstreamConfig; problems(upstreamsYaml: string): ConfigProblem[] } {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const dirWith = (upstreamsYaml: string): string => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-upstream-config-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'gateway.yaml'), GATEWAY_YAML);
    writeFileSync(join(dir, 'upstreams.yaml'), upstreamsYaml);
    return dir;
  };
  return {
    load: (yaml, name) => loadConfig(dirWith(yaml)).upstreams.get(name) as UpstreamConfig,
    problems(yaml) {
      try {
        loadConfig(dirWith(yaml));
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        const list = [...(err as ConfigError).problems];
        for (const p of list) {
          expect(p.file.endsWith('upstreams.yaml'), JSON.stringify(p)).toBe(true);
          expect(p.line).toBeGreaterThan(0);
          expect(p.column).toBeGreaterThan(0);
          expect((err as ConfigError).message).toContain(`${p.file}:${p.line}:${p.column}: `);
        }
        return list;
      }
      throw new Error('expected a ConfigError');
    },
  };
}
