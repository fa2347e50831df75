// Writes docs/presets.md from presets/*.yaml (the presets are the source; a test checks the page
// is up to date): `node scripts/presets-doc.mjs`.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

const root = fileURLToPath(new URL('..', import.meta.url));

/** The page's text for the presets in `presets/`. */
export function presetsDoc() {
  const presets = readdirSync(`${root}presets`)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((f) => parse(readFileSync(`${root}presets/${f}`, 'utf8')));
  const out = [
    '# Presets',
    '',
    'An upstream a preset knows is one line in `upstreams`: `- { name: openai, preset: openai }`.',
    'The preset (`presets/<id>.yaml`, plain data) gives the origin, the error dialect, where the',
    "SDK puts its key, the credential and the secret it reads, default headers, and tools for the API's",
    'most dangerous operations (named `<upstream>.<tool>`, for rules to speak of). Anything written',
    'in the upstream wins, key by key (a `credential` replaces the preset\'s whole); fields a preset',
    'cannot know (an Azure resource, a Twilio account SID) must be given, or the configuration is',
    "refused. A preset's content counts in the policy version. This page is generated from the",
    'presets by `node scripts/presets-doc.mjs`.',
    '',
    '| Preset | API | Secret(s) | Dialect | Tools |',
    '| --- | --- | --- | --- | --- |',
  ];
  for (const p of presets) {
    const c = p.upstream.credential;
    const secrets = c.secret
      ? [c.secret]
      : c.scheme === 'aws_sigv4'
        ? [c.access_key_id, c.secret_access_key, c.session_token].filter(Boolean)
        : [...JSON.stringify(c.headers ?? {}).matchAll(/\{secret:([A-Z0-9_]+)\}/g)].map((m) => m[1]);
    out.push(`| \`${p.id}\` | [${p.title}](${p.docs}) | ${secrets.map((s) => `\`${s}\``).join(', ')} | ${p.upstream.dialect ?? 'generic'} | ${(p.tools ?? []).map((t) => `\`${t.name}\``).join(', ')} |`);
  }
  for (const p of presets) {
    out.push('', `## ${p.title} (\`${p.id}\`)`, '');
    if (p.required) for (const [k, why] of Object.entries(p.required)) out.push(`- Needs \`${k}\`: ${why}.`);
    if (p.required) out.push('');
    out.push(p.snippet.trimEnd());
  }
  return `${out.join('\n')}\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) writeFileSync(`${root}docs/presets.md`, presetsDoc());
