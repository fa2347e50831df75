import { randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sharedSecret } from '../../gateway/auth/keys.js';
import { mintAgentToken } from '../../gateway/auth/mint.js';
import { loadConfig } from '../../gateway/config/load.js';
import { CLI, listeningPort, runCli, spawnCli, type CliResult } from '../helpers/cli.js';
import { expectNoStackTrace, sleep } from '../helpers/http.js';
import { pgSchemas } from '../helpers/postgres.js';
import { openSecretBackend } from '../../gateway/secrets/backend.js';
import { generateMasterKeyText, parseMasterKey } from '../../gateway/secrets/crypto.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const V = {
  shared: 'echo-shared-7a41c0e9',
  acme: 'echo-acme-2fd83b16',
  rotated: 'echo-rotated-c6e07d55',
  imported: 'sk-imported-913bd0aa',
  positional: 'sk-positional-5e1f77c2',
  injected: 'bad-value-4d0c',
  tty: 'tty-typed-0e9d5a21',
};

/** `valet secrets ...` as an operator runs it: values on stdin, the gateway running beside it. */
describe('valet secrets (CLI lifecycle)', () => {
  let root: string;
  let configDir: string;
  let dataDir: string;
  let upstream: FakeUpstream;
  let env: Record<string, string>;
  const outputs: CliResult[] = [];
  const gatewayOutput: string[] = [];

  const valet = async (args: string[], input?: string, extraEnv: Record<string, string> = {}): Promise<CliResult> => {
    const r = await runCli(args, { env: { ...env, ...extraEnv }, ...(input !== undefined && { input }) });
    outputs.push(r);
    expectNoStackTrace(r.stderr);
    return r;
  };

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    root = mkdtempSync(join(tmpdir(), 'valet-secrets-cli-'));
    configDir = join(root, 'policies');
    dataDir = join(root, 'data');
    cpSync('policies', configDir, { recursive: true });
    const upstreams = join(configDir, 'upstreams.yaml');
    writeFileSync(upstreams, readFileSync(upstreams, 'utf8').replace('http://127.0.0.1:9999', upstream.origin));
    env = { VALET_CONFIG: configDir, VALET_DATA: dataDir, VALET_PORT: '0', VALET_ADMIN_PORT: '0' };
  });
  afterAll(async () => {
    await upstream.close();
    rmSync(root, { recursive: true, force: true });
  });

  async function startGateway(extraEnv: Record<string, string> = {}): Promise<{ child: ChildProcess; port: number }> {
    const child = spawnCli(['start'], { env: { ...env, ...extraEnv } });
    child.stderr?.on('data', (c: Buffer) => gatewayOutput.push(c.toString()));
    const port = await listeningPort(child, (chunk) => gatewayOutput.push(chunk));
    return { child, port };
  }

  const tokens = new Map<string, string>();
  async function echoKey(port: number, tenant: string): Promise<string[]> {
    let token = tokens.get(tenant);
    if (token === undefined) {
      // Minted here as `valet token` would (same issuer, same key file in the data directory); the
      // CLI's own token command is covered by cli.test.ts.
      const issuer = loadConfig(configDir).issuers[0]!;
      token = await mintAgentToken(issuer, sharedSecret(issuer, dataDir, {}), { agent: 'cli-agent', tenant, ttlSeconds: 300 });
      tokens.set(tenant, token);
    }
    const res = await request(`http://127.0.0.1:${port}/echo/v1/hello`, { headers: { authorization: `Bearer ${token}` } });
    await res.body.text();
    expect(res.statusCode).toBe(200);
    return headerValues(upstream.requests.at(-1)!, 'x-echo-key');
  }

  it('set, list, a running gateway, rotate, rm, import, stop, list again', async () => {
    // First use in development: a master key is generated into the data directory.
    const set = await valet(['secrets', 'set', 'ECHO_API_KEY'], `${V.shared}\n`);
    expect(set.code).toBe(0);
    expect(set.stdout).toBe('set ECHO_API_KEY (shared), version 1\n');
    expect(set.stderr).toContain('generated a development master key');
    expect(statSync(join(dataDir, 'master-key')).mode & 0o777).toBe(0o600);
    const tenant = await valet(['secrets', 'set', 'ECHO_API_KEY', '--tenant', 'acme'], V.acme);
    expect(tenant.code).toBe(0);
    expect(tenant.stdout).toBe('set ECHO_API_KEY (tenant acme), version 1\n');
    expect(tenant.stderr).toBe('');

    const table = await valet(['secrets', 'list']);
    expect(table.code).toBe(0);
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+TENANT\s+VERSION\s+CREATED\s+ROTATED\s+LAST_USED$/);
    expect(lines[1]).toMatch(/^ECHO_API_KEY\s+\(shared\)\s+1\s+\d{4}-\d\d-\d\dT\S+Z\s+-\s+-$/);
    expect(lines[2]).toMatch(/^ECHO_API_KEY\s+acme\s+1\s/);

    // The gateway reads the store (no ECHO_API_KEY in its environment).
    const { child, port } = await startGateway();
    try {
      expect(await echoKey(port, 'acme')).toEqual([V.acme]);
      expect(await echoKey(port, 'globex')).toEqual([V.shared]);

      const rotated = await valet(['secrets', 'rotate', 'ECHO_API_KEY'], `${V.rotated}\n`);
      expect(rotated.code).toBe(0);
      expect(rotated.stdout).toContain('rotated ECHO_API_KEY (shared) to version 2');
      await sleep(1_200);
      expect(await echoKey(port, 'globex')).toEqual([V.rotated]);
      expect(await echoKey(port, 'acme')).toEqual([V.acme]);

      const rm = await valet(['secrets', 'rm', 'ECHO_API_KEY', '--tenant', 'acme']);
      expect(rm.code).toBe(0);
      expect(rm.stdout).toBe('removed ECHO_API_KEY (tenant acme) and all its versions\n');
      await sleep(1_200);
      expect(await echoKey(port, 'acme')).toEqual([V.rotated]);

      const file = join(root, 'import.env');
      writeFileSync(file, `# imported\nOPENAI_API_KEY=${V.imported}\n\nECHO_API_KEY=${V.rotated}\nVALET_DEV_SIGNING_KEY=ignored-${V.imported}\n`);
      const imported = await valet(['secrets', 'import', file]);
      expect(imported.code).toBe(0);
      expect(imported.stdout).toBe(`imported ${file} (shared): 1 created, 0 rotated, 1 unchanged\n  created: OPENAI_API_KEY\n  unchanged: ECHO_API_KEY\n`);
      expect(imported.stderr).toContain('skipped VALET_DEV_SIGNING_KEY');
    } finally {
      const exited = new Promise<number | null>((r) => child.once('exit', r));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    }

    // Last use is recorded (written at shutdown at the latest); JSON has no values.
    const json = await valet(['secrets', 'list', '--format', 'json']);
    const rows = JSON.parse(json.stdout) as { name: string; tenant: string | null; version: number; created: string; rotated: string | null; last_used: string | null }[];
    expect(rows.map((r) => [r.name, r.tenant, r.version])).toEqual([
      ['ECHO_API_KEY', null, 2],
      ['OPENAI_API_KEY', null, 1],
    ]);
    expect(rows[0]?.rotated).toMatch(/Z$/);
    expect(rows[0]?.last_used).toMatch(/Z$/);
    expect(rows[1]?.last_used).toBeNull();
    expect(Object.keys(rows[0] ?? {}).sort()).toEqual(['created', 'last_used', 'name', 'rotated', 'tenant', 'version']);
  }, 90_000);

  it('refuses a value on the command line, and values with CR, LF or NUL; nothing is written', async () => {
    const positional = await valet(['secrets', 'set', 'GITHUB_TOKEN', V.positional]);
    expect(positional.code).toBe(2);
    expect(positional.stderr).toContain('secret values are never taken from the command line');
    for (const [value, what] of [
      [`${V.injected}\r\nX-Injected: 1`, 'CRLF'],
      [`${V.injected}\0`, 'NUL'],
    ] as const) {
      const r = await valet(['secrets', 'set', 'GITHUB_TOKEN'], value);
      expect(r.code, what).toBe(1);
      expect(r.stderr, what).toMatch(/^valet: VALET_ERR_SECRET_INVALID: the value of GITHUB_TOKEN contains a control character/);
    }
    const empty = await valet(['secrets', 'set', 'GITHUB_TOKEN'], '\n');
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain('VALET_ERR_SECRET_INVALID: no value for GITHUB_TOKEN');
    const badImport = join(root, 'bad.env');
    writeFileSync(badImport, `GITHUB_TOKEN=${V.injected}\nSTRIPE_SECRET_KEY\n`);
    const imp = await valet(['secrets', 'import', badImport]);
    expect(imp.code).toBe(1);
    expect(imp.stderr).toContain('nothing was imported:\n  line 2: expected NAME=value');
    const list = await valet(['secrets', 'list', '--format', 'json']);
    expect((JSON.parse(list.stdout) as { name: string }[]).map((r) => r.name)).not.toContain('GITHUB_TOKEN');
    expect((await valet(['secrets', 'rotate', 'NOPE'], 'x')).stderr).toBe(
      'valet: VALET_ERR_SECRET_NOT_FOUND: secret NOPE (shared) does not exist; use set to create it\n',
    );
  }, 60_000);

  it('rekey: the old key then fails at start with a clear message; the new key works', async () => {
    const newKey = randomBytes(32).toString('base64');
    const rekey = await valet(['secrets', 'rekey'], undefined, { VALET_NEW_MASTER_KEY: newKey });
    expect(rekey.code).toBe(0);
    expect(rekey.stdout).toMatch(/^re-encrypted 3 version\(s\) of 2 secret\(s\) and 0 obtained token\(s\); master key id [0-9a-f]{16} -> [0-9a-f]{16}\n/);
    expect(rekey.stderr).toContain('master-key still holds the old key');

    // Wrong key (the generated file still holds the old one): `valet start` exits 1, no stack trace.
    const wrong = await valet(['start']);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/^valet: VALET_ERR_MASTER_KEY: the master key \(id [0-9a-f]{16}\) is not the key .*secrets\.db was written with/);
    expect(wrong.stdout).not.toContain('valet listening');
    const malformed = await valet(['start'], undefined, { VALET_MASTER_KEY: 'abc' });
    expect(malformed.code).toBe(1);
    expect(malformed.stderr).toContain('VALET_ERR_MASTER_KEY: VALET_MASTER_KEY is not a master key');

    rmSync(join(dataDir, 'master-key'));
    const keyFile = join(root, 'new-key');
    writeFileSync(keyFile, `${newKey}\n`, { mode: 0o600 });
    const { child, port } = await startGateway({ VALET_MASTER_KEY_FILE: keyFile });
    try {
      expect(await echoKey(port, 'acme')).toEqual([V.rotated]);
    } finally {
      const exited = new Promise<number | null>((r) => child.once('exit', r));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
    expect(existsSync(join(dataDir, 'master-key'))).toBe(false);
  }, 60_000);

  // Node has no pseudo-terminal of its own; Python's pty module plays the operator at a terminal.
  const python = spawnSync('python3', ['-c', 'import pty'], { stdio: 'ignore' }).status === 0;
  it.skipIf(!python)('on a terminal, asks for the value twice without echoing it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-secrets-tty-'));
    const script = join(dir, 'at_a_terminal.py'); // not tty.py: that would shadow the module pty imports
    writeFileSync(
      script,
      `import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
out = b''
def read_until(s):
    global out
    end = time.time() + 60
    while s not in out and time.time() < end:
        try:
            out += os.read(fd, 1024)
        except OSError:
            return
read_until(b'Value for ECHO_API_KEY: ')
os.write(fd, b'${V.tty}x\\x7f\\r')
read_until(b'Again: ')
os.write(fd, b'${V.tty}\\r')
read_until(b'version 1')
read_until(b'never')
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode())
sys.exit(os.waitstatus_to_exitcode(status))
`,
    );
    const data = join(dir, 'data');
    const out = execFileSync('python3', [script, process.execPath, '--import', 'tsx', CLI, 'secrets', 'set', 'ECHO_API_KEY'], {
      env: { PATH: process.env['PATH'] ?? '', VALET_CONFIG: configDir, VALET_DATA: data },
      encoding: 'utf8',
    });
    outputs.push({ code: 0, stdout: out, stderr: '' });
    expect(out).toContain('Value for ECHO_API_KEY: \r\nAgain: \r\nset ECHO_API_KEY (shared), version 1');
    const list = await valet(['secrets', 'list', '--format', 'json'], undefined, { VALET_DATA: data });
    expect(JSON.parse(list.stdout)).toEqual([expect.objectContaining({ name: 'ECHO_API_KEY', version: 1 })]);
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('no value appears in any CLI output or gateway log', () => {
    expect(outputs.length).toBeGreaterThan(12);
    const all = [...outputs.flatMap((o) => [o.stdout, o.stderr]), ...gatewayOutput].join('\n');
    expect(all).toContain('valet listening');
    for (const v of Object.values(V)) expect(all.includes(v), v).toBe(false);
  });
});

/** The same commands against a fleet's store: `VALET_POSTGRES_URL` (or `gateway.secrets.backend`) reaches the CLI too. */
describe('valet secrets on PostgreSQL', () => {
  const pgs = pgSchemas();
  let root: string;
  let env: Record<string, string>;
  let url: string;
  const key = generateMasterKeyText();
  const outputs: CliResult[] = [];
  const valet = async (args: string[], input?: string, extraEnv: Record<string, string> = {}): Promise<CliResult> => {
    const r = await runCli(args, { env: { ...env, ...extraEnv }, ...(input !== undefined && { input }) });
    outputs.push(r);
    expectNoStackTrace(r.stderr);
    return r;
  };

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'valet-secrets-cli-pg-'));
    cpSync('policies', join(root, 'policies'), { recursive: true });
    url = (await pgs.fresh()).url;
    env = { VALET_CONFIG: join(root, 'policies'), VALET_DATA: join(root, 'data'), VALET_POSTGRES_URL: url, VALET_MASTER_KEY: key };
  });
  afterAll(async () => {
    rmSync(root, { recursive: true, force: true });
    await pgs.dropAll();
  });

  it('set, rotate, list and rm go to the shared store; no local file and no generated key', async () => {
    const noKey = await valet(['secrets', 'set', 'ECHO_API_KEY'], `${V.shared}\n`, { VALET_MASTER_KEY: '' });
    expect(noKey.code).not.toBe(0);
    expect(noKey.stderr).toContain('VALET_ERR_MASTER_KEY');
    expect(noKey.stderr).toContain('shared by every instance');
    expect(existsSync(join(root, 'data', 'master-key'))).toBe(false);

    expect((await valet(['secrets', 'set', 'ECHO_API_KEY'], `${V.shared}\n`)).stdout).toBe('set ECHO_API_KEY (shared), version 1\n');
    expect((await valet(['secrets', 'rotate', 'ECHO_API_KEY'], V.rotated)).stdout).toContain('to version 2');
    const listed = await valet(['secrets', 'list', '--format', 'json']);
    expect(JSON.parse(listed.stdout)).toMatchObject([{ name: 'ECHO_API_KEY', tenant: null, version: 2 }]);
    expect(existsSync(join(root, 'data', 'secrets.db'))).toBe(false);

    // What an instance of the fleet reads.
    const store = await openSecretBackend({ dataDir: join(root, 'data'), postgresUrl: url }, { key: parseMasterKey(key, 'test') });
    try {
      expect(store.get('ECHO_API_KEY', undefined)).toBe(V.rotated);
    } finally {
      await store.close();
    }
    expect((await valet(['secrets', 'rm', 'ECHO_API_KEY'])).code).toBe(0);
    expect(JSON.parse((await valet(['secrets', 'list', '--format', 'json'])).stdout)).toEqual([]);
    const all = outputs.flatMap((o) => [o.stdout, o.stderr]).join('\n');
    for (const v of [V.shared, V.rotated, key]) expect(all.includes(v), v).toBe(false);
  });
});
