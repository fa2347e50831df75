import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../gateway/config/load.js';
import { presets } from '../../gateway/config/presets.js';
import { devIssuer } from '../helpers/gateway.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A configuration directory with these upstreams (and one rule using every tool). */
function configWith(upstreams: unknown[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'valet-presets-'));
  dirs.push(dir);
  writeFileSync(join(dir, 'gateway.yaml'), stringify({ issuers: [devIssuer] }));
  writeFileSync(join(dir, 'upstreams.yaml'), stringify({ upstreams }));
  writeFileSync(join(dir, 'rules.yaml'), stringify({ rules: [{ id: 'ok', effect: 'allow' }] }));
  return dir;
}

/** What a preset's `required` fields need, filled in. */
function requiredFor(id: string): Record<string, unknown> {
  const required = presets().presets.get(id)?.required ?? {};
  const out: Record<string, unknown> = {};
  if ('origin' in required) out['origin'] = 'https://example.atlassian.net';
  return out;
}

describe('presets', () => {
  const all = [...presets().presets.values()];

  it('ships at least twenty, each with a title, API reference, origin or a requirement for one, and a snippet', () => {
    expect(all.length).toBeGreaterThanOrEqual(20);
    for (const p of all) {
      expect(p.title, p.id).not.toBe('');
      expect(p.docs, p.id).toMatch(/^https:\/\//);
      expect(p.snippet.length, p.id).toBeGreaterThan(40);
      expect(p.upstream['origin'] !== undefined || p.required?.['origin'] !== undefined, p.id).toBe(true);
      expect(p.upstream['credential'], p.id).toBeDefined();
    }
    for (const id of ['openai', 'azure-openai', 'anthropic', 'gemini', 'mistral', 'groq', 'openrouter', 'cohere', 'github', 'gitlab', 'slack', 'stripe', 'twilio', 'sendgrid', 'postmark', 'notion', 'linear', 'jira', 'confluence', 'hubspot', 'datadog', 'pagerduty']) {
      expect(presets().presets.has(id), id).toBe(true);
    }
  });

  it.each(all.map((p) => [p.id]))('%s loads as one line (plus what it requires), with its tools named after the upstream', (id) => {
    const needsUser = presets().presets.get(id)?.required?.['credential.username'] !== undefined;
    const upstream = { name: `my-${id}`.slice(0, 60), preset: id, ...requiredFor(id), ...(needsUser && { credential: { ...(presets().presets.get(id)?.upstream['credential'] as object), username: 'someone' } }) };
    const config = loadConfig(configWith([upstream]));
    const u = config.upstreams.get(upstream.name);
    expect(u, id).toBeDefined();
    for (const t of presets().presets.get(id)?.tools ?? []) expect(config.tools.find((x) => x.name === `${upstream.name}.${String(t['name'])}`)?.upstream, `${id} ${String(t['name'])}`).toBe(upstream.name);
  });

  it('what the user writes wins, key by key; the credential is replaced whole', () => {
    const config = loadConfig(
      configWith([{ name: 'ai', preset: 'anthropic', origin: 'http://127.0.0.1:9', default_headers: { 'anthropic-version': '2099-01-01' }, credential: { scheme: 'bearer', secret: 'MY_KEY' } }]),
    );
    const u = config.upstreams.get('ai');
    expect(u).toMatchObject({ origin: 'http://127.0.0.1:9', dialect: 'anthropic', agentTokenHeader: 'x-api-key', defaultHeaders: [['anthropic-version', '2099-01-01']], credential: { scheme: 'bearer', secret: 'MY_KEY' } });
  });

  it('an unknown preset and a missing required field are configuration errors at the upstream', () => {
    expect(() => loadConfig(configWith([{ name: 'x', preset: 'no-such-api' }]))).toThrow(/upstreams\[0\]\.preset: unknown preset "no-such-api"; presets: .*openai/);
    expect(() => loadConfig(configWith([{ name: 'az', preset: 'azure-openai' }]))).toThrow(/preset "azure-openai" needs origin: your resource/);
    expect(() => loadConfig(configWith([{ name: 'tw', preset: 'twilio' }]))).toThrow(/preset "twilio" needs credential.username: your Account SID/);
  });

  it('a preset’s content counts in the policy version', () => {
    const a = loadConfig(configWith([{ name: 'gh', preset: 'github' }]));
    const b = loadConfig(configWith([{ name: 'gh', origin: 'https://api.github.com', dialect: 'github', credential: { scheme: 'bearer', secret: 'GITHUB_TOKEN' } }]));
    expect(a.version).not.toBe(b.version);
  });

  it('docs/presets.md is generated from the presets and up to date (node scripts/presets-doc.mjs)', async () => {
    const { presetsDoc } = (await import(String(new URL('../../scripts/presets-doc.mjs', import.meta.url)))) as { presetsDoc: () => string };
    expect(readFileSync('docs/presets.md', 'utf8')).toBe(presetsDoc());
  });
});
