import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

/**
 * Presets: upstreams a user enables with one line (`- { name: openai, preset: openai }`), kept as
 * data in `presets/<id>.yaml` beside the package, readable and overridable. A preset gives the
 * upstream's fields (origin, dialect, where the SDK puts its key, the credential and its default
 * secret name, default headers) and tools for its most dangerous operations; what the user writes
 * in the upstream wins, key by key. `required` names the fields a preset cannot know (an Azure
 * resource's origin, a Twilio account SID).
 */
export interface Preset {
  readonly id: string;
  readonly title: string;
  /** The API reference. */
  readonly docs: string;
  readonly upstream: Readonly<Record<string, unknown>>;
  /** Tools, named without the upstream: `delete_repo` becomes `<upstream>.delete_repo`. */
  readonly tools?: readonly Readonly<Record<string, unknown>>[];
  /** Dotted field paths the user must give (`origin`, `credential.username`), with why. */
  readonly required?: Readonly<Record<string, string>>;
  /** "Point your SDK at Valet", in Markdown. */
  readonly snippet: string;
}

/** `presets/` next to the sources (`gateway/config/`) or the build (`dist/gateway/config/`). */
function presetsDir(): string | undefined {
  for (const up of ['../../presets', '../../../presets']) {
    const dir = fileURLToPath(new URL(up, import.meta.url));
    if (existsSync(dir)) return dir;
  }
  return undefined;
}

let cache: { presets: ReadonlyMap<string, Preset>; text: string } | undefined;

/** Every shipped preset by id, read once; `text` is their content, for the policy version's hash. */
export function presets(): { presets: ReadonlyMap<string, Preset>; text: string } {
  if (cache !== undefined) return cache;
  const dir = presetsDir();
  const out = new Map<string, Preset>();
  let text = '';
  for (const f of dir === undefined ? [] : readdirSync(dir).filter((n) => n.endsWith('.yaml')).sort()) {
    const raw = readFileSync(join(dir as string, f), 'utf8');
    text += `${f}\0${raw}\0`;
    const p = parse(raw) as Preset;
    out.set(p.id, p);
  }
  cache = { presets: out, text };
  return cache;
}

type Raw = Record<string, unknown>;

const isObject = (v: unknown): v is Raw => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The preset's value under the user's, key by key for objects (a user's `credential` replaces the preset's whole, being one scheme). */
function merge(preset: Raw, user: Raw): Raw {
  const out: Raw = { ...preset };
  for (const [k, v] of Object.entries(user)) {
    out[k] = k !== 'credential' && isObject(v) && isObject(preset[k]) ? merge(preset[k] as Raw, v) : v;
  }
  return out;
}

const lookup = (o: Raw, path: string): unknown => path.split('.').reduce<unknown>((v, k) => (isObject(v) ? v[k] : undefined), o);

/** A problem with one upstream's preset, at that upstream's `preset` key. */
export interface PresetProblem {
  readonly index: number;
  readonly message: string;
}

/**
 * Expands every `preset:` in a parsed file's `upstreams` in place (the upstream's own keys win)
 * and appends the presets' tools the file does not define itself.
 */
export function expandPresets(data: Raw): PresetProblem[] {
  const ups = data['upstreams'];
  if (!Array.isArray(ups)) return [];
  const problems: PresetProblem[] = [];
  const known = presets().presets;
  const tools: Raw[] = [];
  ups.forEach((u: unknown, index) => {
    if (!isObject(u) || u['preset'] === undefined) return;
    const id = u['preset'];
    const preset = typeof id === 'string' ? known.get(id) : undefined;
    if (preset === undefined) {
      problems.push({ index, message: `unknown preset ${JSON.stringify(id)}; presets: ${[...known.keys()].join(', ')}` });
      return;
    }
    const { preset: _id, ...own } = u;
    const merged = merge(preset.upstream as Raw, own);
    for (const [path, why] of Object.entries(preset.required ?? {})) {
      if (lookup(merged, path) === undefined) problems.push({ index, message: `preset "${preset.id}" needs ${path}: ${why}` });
    }
    ups[index] = merged;
    const name = String(merged['name']);
    for (const t of preset.tools ?? []) tools.push({ ...t, name: `${name}.${String(t['name'])}`, upstream: name });
  });
  if (tools.length > 0) {
    const mine = Array.isArray(data['tools']) ? (data['tools'] as Raw[]) : [];
    const names = new Set(mine.map((t) => t['name']));
    data['tools'] = [...mine, ...tools.filter((t) => !names.has(t['name']))];
  }
  return problems;
}
