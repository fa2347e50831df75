/**
 * What the documentation promises must exist: every `valet` flag shown in README.md, docs/ or the
 * container files is declared by the command that owns it, every `VALET_*` environment variable
 * they name is read by the gateway, and every `VALET_ERR_*` code they mention is in the error table.
 * A rename or removal in code without the docs (or the reverse) fails here.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ERRORS } from '../../gateway/errors.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function filesUnder(dir: string, ext: RegExp): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(path, ext));
    else if (ext.test(entry.name)) out.push(path);
  }
  return out;
}

/** The texts a user reads: README, docs/, the container files and the example secrets. */
const DOCS = [
  join(ROOT, 'README.md'),
  ...filesUnder(join(ROOT, 'docs'), /\.md$/),
  join(ROOT, 'Dockerfile'),
  join(ROOT, 'docker-compose.yml'),
  join(ROOT, 'secrets.example'),
].map((path) => ({ name: relative(ROOT, path), text: readFileSync(path, 'utf8') }));

/** The gateway's code without its comments, and the shipped configuration: where a variable can be read. */
const SOURCES = [
  ...filesUnder(join(ROOT, 'gateway'), /\.ts$/).map((path) => withoutComments(readFileSync(path, 'utf8'))),
  ...filesUnder(join(ROOT, 'policies'), /\.ya?ml$/).map((path) => readFileSync(path, 'utf8').replace(/#.*$/gm, '')),
];

function withoutComments(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
}
/** The source of one CLI file, or of several together (a command parsing with another file's shared flags). */
const CLI = (files: string | readonly string[]): string => [files].flat().map((file) => readFileSync(join(ROOT, 'gateway', 'cli', file), 'utf8')).join('\n');

/** Which source file declares the flags of each top-level command (`usage` also takes audit.ts's `--config` and `--data`; `policy replay` is in replay.ts). */
const COMMAND_FILES: Record<string, string | readonly string[]> = {
  start: 'main.ts',
  token: 'main.ts',
  policy: ['main.ts', 'replay.ts'],
  audit: 'audit.ts',
  usage: ['spend.ts', 'audit.ts'],
  secrets: 'secrets.ts',
  approvals: 'approvals.ts',
  keys: 'keys.ts',
  migrate: 'migrate.ts',
};

/** Option keys declared for node:util parseArgs in a source text: `name: { type: ... }` or `'two-words': { type: ... }`. */
function declaredFlags(source: string): Set<string> {
  const flags = new Set<string>();
  for (const m of source.matchAll(/['"]?([a-z][a-z0-9-]*)['"]?\s*:\s*\{\s*type:\s*'(?:string|boolean)'/g)) flags.add(m[1] as string);
  return flags;
}

interface FlagUse {
  readonly where: string;
  readonly command: string;
  readonly flag: string;
}

/** Every `--flag` written after `valet <command>` on the same line (prose, inline code or a code block). */
function documentedFlags(): FlagUse[] {
  const uses: FlagUse[] = [];
  const commands = Object.keys(COMMAND_FILES).join('|');
  const invocation = new RegExp(`\\bvalet\\s+(${commands})\\b([^\\n\`]*)`, 'g');
  for (const { name, text } of DOCS) {
    text.split('\n').forEach((line, i) => {
      for (const m of line.matchAll(invocation)) {
        for (const f of (m[2] as string).matchAll(/(?:^|[\s[(|])--([a-z][a-z0-9-]*)/g)) {
          uses.push({ where: `${name}:${i + 1}`, command: m[1] as string, flag: f[1] as string });
        }
      }
    });
  }
  return uses;
}

function mentioned(pattern: RegExp): Map<string, string> {
  const found = new Map<string, string>();
  for (const { name, text } of DOCS) {
    text.split('\n').forEach((line, i) => {
      for (const m of line.matchAll(pattern)) if (!found.has(m[0])) found.set(m[0], `${name}:${i + 1}`);
    });
  }
  return found;
}

describe('the documentation names only what exists', () => {
  it('finds documented flags to check (the extraction works)', () => {
    const uses = documentedFlags();
    expect(uses.length).toBeGreaterThan(30);
    expect(uses).toContainEqual(expect.objectContaining({ command: 'token', flag: 'agent' }));
    expect(uses).toContainEqual(expect.objectContaining({ command: 'audit', flag: 'format' }));
  });

  it('every documented `valet` flag is declared by its command', () => {
    const declared = new Map(Object.entries(COMMAND_FILES).map(([command, file]) => [command, declaredFlags(CLI(file))]));
    const missing = documentedFlags()
      .filter((u) => u.flag !== 'help' && !declared.get(u.command)?.has(u.flag))
      .map((u) => `${u.where}: valet ${u.command} --${u.flag}`);
    expect(missing).toEqual([]);
  });

  it('every flag in the CLI usage text is declared', () => {
    for (const [command, file] of Object.entries(COMMAND_FILES)) {
      const source = CLI(file);
      const declared = declaredFlags(source);
      // The usage text is a template literal of lines that start with `valet <command>`.
      const usage = [...source.matchAll(new RegExp(`^\\s*valet ${command}\\b(.*)$`, 'gm'))].map((m) => m[1] as string);
      const flags = usage.flatMap((line) => [...line.matchAll(/--([a-z][a-z0-9-]*)/g)].map((f) => f[1] as string));
      expect(flags.filter((f) => !declared.has(f)).map((f) => `valet ${command} --${f}`)).toEqual([]);
    }
  });

  it('every documented VALET_* environment variable is read by the gateway', () => {
    const variables = mentioned(/\bVALET_(?!ERR_)[A-Z0-9_]*[A-Z0-9]\b/g);
    expect(variables.size).toBeGreaterThan(10);
    const source = SOURCES.join('\n');
    const read = (name: string): boolean => new RegExp(`(['"\`]|env: )${name}\\b`).test(source);
    // Key variables may also come from a file: NAME_FILE is read wherever NAME is (gateway/secrets/variable.ts).
    const fileVariant = (name: string): boolean => name.endsWith('_FILE') && read(name.slice(0, -5)) && source.includes('_FILE`');
    const unknown = [...variables].filter(([name]) => !read(name) && !fileVariant(name)).map(([name, at]) => `${at}: ${name}`);
    expect(unknown).toEqual([]);
  });

  it('every documented VALET_ERR_* code is in the error table', () => {
    const codes = mentioned(/\bVALET_ERR_[A-Z0-9_]*[A-Z0-9]\b/g);
    expect(codes.size).toBeGreaterThan(20);
    const unknown = [...codes].filter(([code]) => !(code in ERRORS)).map(([code, at]) => `${at}: ${code}`);
    expect(unknown).toEqual([]);
  });
});
