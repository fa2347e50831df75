import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { secretNames } from '../config/credential.js';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { ValetError } from '../errors.js';
import { parseMasterKey, type MasterKey } from '../secrets/crypto.js';
import { openKeyedSecretBackend, openSecretBackend, secretBackendExists, secretBackendSettings, type SecretBackendSettings } from '../secrets/backend.js';
import { GENERATED_KEY_FILE, readKeyFile, type ResolvedMasterKey } from '../secrets/master-key.js';
import type { SecretInfo, SecretStore } from '../secrets/port.js';
import { DEFAULT_SOURCES } from '../secrets/sources.js';
import { gatewayEnvironment } from './environment.js';
import { UsageError } from './usage.js';

/**
 * `valet secrets set|list|rotate|rm|import|rekey`: a thin front end over the {@link SecretStore} port.
 * Values are read from stdin (or a hidden prompt on a terminal), never from the command line, and
 * never printed.
 */

export const SECRETS_USAGE = `  valet secrets set NAME [--tenant T]         value from stdin (one trailing newline removed) or a hidden prompt
  valet secrets rotate NAME [--tenant T]      new version from stdin / prompt; a running gateway picks it up within 1 s
  valet secrets rm NAME [--tenant T]
  valet secrets list [--tenant T] [--format table|json]
  valet secrets import FILE|- [--tenant T]    NAME=value lines (secrets.example format), all or nothing
  valet secrets rekey [--new-key-file F]      re-encrypt everything under VALET_NEW_MASTER_KEY or the key in F`;

const options = {
  config: { type: 'string' },
  data: { type: 'string' },
  tenant: { type: 'string' },
  format: { type: 'string', default: 'table' },
  'new-key-file': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

type Values = ReturnType<typeof parse>['values'];

function parse(args: string[]) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    // Node's messages name the option, never its value.
    throw new UsageError((err as Error).message);
  }
}

const env = process.env;
const dataDirOf = (v: Values): string => resolve(v.data ?? env['VALET_DATA'] ?? 'data');
const configDirOf = (v: Values): string => v.config ?? env['VALET_CONFIG'] ?? 'policies';

/**
 * The store the gateway would use, for commands that need no master key (`rm`, `list`): the
 * configuration's `gateway.secrets` backend when there is a configuration, and `VALET_POSTGRES_URL`
 * in any case, so these never read a local file while the gateway uses PostgreSQL.
 */
function backendOf(values: Values): SecretBackendSettings {
  const dir = configDirOf(values);
  const config = existsSync(dir) ? loadConfig(dir, { environment: gatewayEnvironment(undefined, env) }) : undefined;
  return secretBackendSettings(dataDirOf(values), config?.gateway.secrets, env);
}
const scope = (tenant: string | null): string => (tenant === null ? 'shared' : `tenant ${tenant}`);
const say = (text: string): void => void process.stdout.write(`${text}\n`);
const warn = (text: string): void => void process.stderr.write(`valet: warning: ${text}\n`);

export async function secretsCommand(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const { values, positionals } = parse(rest);
  const tenant = values.tenant ?? null;
  const onlyName = (): string => {
    if (positionals.length === 0) throw new UsageError(`valet secrets ${sub} needs a NAME`);
    if (positionals.length > 1) {
      throw new UsageError(
        'secret values are never taken from the command line (they would stay in shell history and the process list); ' +
          'pipe the value on stdin or type it at the prompt',
      );
    }
    return positionals[0] as string;
  };
  const noPositionals = (): void => {
    if (positionals.length > 0) throw new UsageError(`valet secrets ${sub} takes no arguments`);
  };

  switch (sub) {
    case 'set': {
      const name = onlyName();
      const { store, config } = await openForWrite(values);
      try {
        // The key was checked when the store opened; refuse an existing name before asking for a value.
        if ((await store.list({ tenant })).some((s) => s.name === name)) {
          throw new ValetError('VALET_ERR_SECRET_EXISTS', `secret ${name} (${scope(tenant)}) already exists; use rotate to give it a new value`);
        }
        const info = await store.set(name, tenant, await readValue(name, true));
        warnIfUnused(config, [name]);
        say(`set ${name} (${scope(tenant)}), version ${info.version}`);
      } finally {
        await store.close();
      }
      return;
    }
    case 'rotate': {
      const name = onlyName();
      const { store } = await openForWrite(values);
      try {
        if (!(await store.list({ tenant })).some((s) => s.name === name)) {
          throw new ValetError('VALET_ERR_SECRET_NOT_FOUND', `secret ${name} (${scope(tenant)}) does not exist; use set to create it`);
        }
        const info = await store.rotate(name, tenant, await readValue(name, true));
        say(`rotated ${name} (${scope(tenant)}) to version ${info.version}; a running gateway uses it within a second`);
      } finally {
        await store.close();
      }
      return;
    }
    case 'rm': {
      const name = onlyName();
      const store = await openSecretBackend(backendOf(values));
      try {
        await store.remove(name, tenant);
        say(`removed ${name} (${scope(tenant)}) and all its versions`);
      } finally {
        await store.close();
      }
      return;
    }
    case 'list': {
      noPositionals();
      if (values.format !== 'table' && values.format !== 'json') throw new UsageError('--format must be table or json');
      const backend = backendOf(values);
      let rows: SecretInfo[] = [];
      if (await secretBackendExists(backend)) {
        const store = await openSecretBackend(backend);
        try {
          rows = await store.list({ tenant: values.tenant });
        } finally {
          await store.close();
        }
      }
      process.stdout.write(values.format === 'json' ? `${JSON.stringify(rows.map(toJson), null, 2)}\n` : table(rows));
      return;
    }
    case 'import': {
      if (positionals.length !== 1) throw new UsageError('valet secrets import needs one FILE (or - for stdin)');
      const file = positionals[0] as string;
      let text: string;
      try {
        text = file === '-' ? (await readStdin()).toString('utf8') : readFileSync(file, 'utf8');
      } catch (err) {
        throw new UsageError(`cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      }
      const { store, config } = await openForWrite(values);
      try {
        const r = await store.importText(text, tenant);
        for (const name of r.skipped) warn(`skipped ${name}: VALET_* names are gateway settings, not upstream credentials`);
        warnIfUnused(config, [...r.created, ...r.rotated, ...r.unchanged]);
        say(`imported ${file} (${scope(tenant)}): ${r.created.length} created, ${r.rotated.length} rotated, ${r.unchanged.length} unchanged`);
        for (const [what, names] of [['created', r.created], ['rotated', r.rotated], ['unchanged', r.unchanged]] as const) {
          if (names.length > 0) say(`  ${what}: ${names.join(', ')}`);
        }
      } finally {
        await store.close();
      }
      return;
    }
    case 'rekey': {
      noPositionals();
      const newKey = newMasterKey(values);
      const { store, resolved } = await openForWrite(values);
      try {
        const r = await store.rekey(newKey);
        say(`re-encrypted ${r.versions} version(s) of ${r.secrets} secret(s) and ${r.grants} obtained token(s); master key id ${r.oldKeyId} -> ${r.newKeyId}`);
        say('The old key no longer opens the store: start the gateway (and run valet secrets) with the new key.');
        say('A gateway that is running now keeps serving the values it has loaded, and picks up changes after a restart.');
        if (resolved.generated) warn(`${resolved.source} still holds the old key: delete it and set VALET_MASTER_KEY or VALET_MASTER_KEY_FILE`);
      } finally {
        await store.close();
      }
      return;
    }
    default:
      throw new UsageError('valet secrets set|rotate|rm|list|import|rekey');
  }
}

/**
 * Opens the store with the master key the gateway would use. Generating a development key is
 * allowed only outside production and only while the store is empty; the environment comes from
 * the configuration (and VALET_ENV), which is why these commands read it.
 */
async function openForWrite(values: Values): Promise<{ store: SecretStore; config: Config; resolved: ResolvedMasterKey }> {
  const config = loadConfig(configDirOf(values), { environment: gatewayEnvironment(undefined, env) });
  const dataDir = dataDirOf(values);
  const { store, resolved } = await openKeyedSecretBackend(secretBackendSettings(dataDir, config.gateway.secrets, env), { env, environment: config.gateway.environment });
  if (resolved.created) warn(`generated a development master key in ${join(dataDir, GENERATED_KEY_FILE)} (mode 0600); set VALET_MASTER_KEY in production`);
  if (!(config.gateway.secrets?.sources ?? DEFAULT_SOURCES).some((s) => s.kind === 'store')) {
    warn('gateway.secrets.sources does not list store: the gateway will not read secrets set here');
  }
  return { store, config, resolved };
}

function newMasterKey(values: Values): MasterKey {
  const fromEnv = env['VALET_NEW_MASTER_KEY'] ?? '';
  const file = values['new-key-file'];
  if (fromEnv !== '' && file !== undefined) throw new UsageError('give the new key in VALET_NEW_MASTER_KEY or --new-key-file, not both');
  if (file !== undefined) return readKeyFile(resolve(file), `--new-key-file ${file}`);
  if (fromEnv !== '') return parseMasterKey(fromEnv, 'VALET_NEW_MASTER_KEY');
  throw new UsageError('valet secrets rekey needs the new key in VALET_NEW_MASTER_KEY or --new-key-file F');
}

function warnIfUnused(config: Config, names: string[]): void {
  const used = new Set([...config.upstreams.values()].flatMap((u) => secretNames(u.credential)));
  for (const name of names) if (!used.has(name)) warn(`no upstream in ${config.dir} uses ${name} (credential.secret)`);
}

/** The value: a hidden prompt on a terminal, else all of stdin minus one trailing newline. */
async function readValue(name: string, confirm: boolean): Promise<string> {
  let value: string;
  if (process.stdin.isTTY) {
    value = await promptHidden(`Value for ${name}: `);
    if (confirm && (await promptHidden('Again: ')) !== value) throw new UsageError('the two values differ; nothing was written');
  } else {
    const bytes = await readStdin();
    try {
      value = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new ValetError('VALET_ERR_SECRET_INVALID', `the value of ${name} on stdin is not UTF-8`);
    } finally {
      bytes.fill(0);
    }
    if (value.endsWith('\r\n')) value = value.slice(0, -2);
    else if (value.endsWith('\n')) value = value.slice(0, -1);
  }
  if (value === '') {
    throw new ValetError('VALET_ERR_SECRET_INVALID', `no value for ${name}: pipe it on stdin (printf %s "$VALUE" | valet secrets ...) or type it at the prompt`);
  }
  return value;
}

const MAX_STDIN = 1_048_576;

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_STDIN) throw new ValetError('VALET_ERR_SECRET_INVALID', 'stdin is larger than 1 MiB');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** Reads one line from the terminal without echoing it. Ctrl-C cancels. */
function promptHidden(prompt: string): Promise<string> {
  const stdin = process.stdin;
  // Raw mode (no echo) before the prompt appears, so nothing typed after it is ever echoed.
  stdin.setRawMode(true);
  process.stderr.write(prompt);
  return new Promise((resolvePrompt, reject) => {
    let value = '';
    const finish = (err?: Error): void => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
      if (err) reject(err);
      else resolvePrompt(value);
    };
    const onData = (chunk: string): void => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n' || ch === '\u0004') return finish();
        if (ch === '\u0003') return finish(new UsageError('cancelled; nothing was written'));
        if (ch === '\u007f' || ch === '\b') value = [...value].slice(0, -1).join('');
        else value += ch;
      }
    };
    stdin.setEncoding('utf8');
    stdin.on('data', onData);
    stdin.resume();
  });
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

function toJson(s: SecretInfo): Record<string, unknown> {
  return { name: s.name, tenant: s.tenant, version: s.version, created: iso(s.createdAt), rotated: iso(s.rotatedAt), last_used: iso(s.lastUsedAt) };
}

function table(rows: SecretInfo[]): string {
  const head = ['NAME', 'TENANT', 'VERSION', 'CREATED', 'ROTATED', 'LAST_USED'];
  const cells = rows.map((s) => [s.name, s.tenant ?? '(shared)', String(s.version), iso(s.createdAt) ?? '-', iso(s.rotatedAt) ?? '-', iso(s.lastUsedAt) ?? '-']);
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  const line = (c: string[]): string => c.map((v, i) => v.padEnd(widths[i] as number)).join('  ').trimEnd();
  return `${[line(head), ...cells.map(line)].join('\n')}\n`;
}
