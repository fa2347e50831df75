import { Writable } from 'node:stream';
import { parse } from 'csv-parse/sync';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cefLine, syslogMessage, writeExport, type ExportFormat } from '../../gateway/audit/export.js';
import type { AuditRow } from '../../gateway/audit/port.js';
import { iterateAudit } from '../../gateway/audit/sqlite/store.js';
import { auditFixture, record, type AuditFixture } from '../helpers/audit.js';

/** Values that break naive formats: every delimiter each format has, line breaks, non-ASCII. */
const NASTY = 'no "refunds", ever; a|b = c \\ d ] e\r\nsecond line ü€';

let fx: AuditFixture;
let rows: AuditRow[];

beforeAll(() => {
  fx = auditFixture();
  const plain = record();
  const nasty = record({ reason: NASTY, agent: 'agent=1|x', tenant: 'zürich', rule: 'r,1', user: 'alice "the admin"' });
  fx.core.apply([{ op: 'decision', rec: plain }]);
  fx.core.apply([
    { op: 'final', rec: { ...plain, status: 200, upstreamStatus: 201, durationMs: 3.25, bytesIn: 10, bytesOut: 20 } },
    { op: 'final', rec: { ...nasty, decision: 'deny', status: 403, errorCode: 'VALET_ERR_POLICY_DENIED' } },
    { op: 'final', rec: record({ decision: null, agent: null, tenant: null, upstream: null, rule: null, reason: null, policyVersion: null, status: 401, errorCode: 'VALET_ERR_TOKEN_MISSING' }) },
  ]);
  rows = [...iterateAudit(fx.raw(), {})];
});
afterAll(() => fx.cleanup());

async function exported(format: ExportFormat, input: AuditRow[] = rows): Promise<string> {
  let text = '';
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      text += chunk.toString('utf8');
      cb();
    },
  });
  await writeExport(input, format, sink);
  return text;
}

describe('audit export: JSON and NDJSON', () => {
  it('parse back to the rows, without the chain bookkeeping', async () => {
    const json = JSON.parse(await exported('json')) as Record<string, unknown>[];
    const nd = (await exported('ndjson')).trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const parsed of [json, nd]) {
      expect(parsed).toHaveLength(3);
      expect(parsed[1]).toMatchObject({ reason: NASTY, agent: 'agent=1|x', tenant: 'zürich', status: 403 });
      expect(parsed[0]).not.toHaveProperty('chain_seq');
      expect(parsed[0]).not.toHaveProperty('facts');
      expect(parsed[0]).toHaveProperty('logged_at');
    }
    expect(JSON.parse(await exported('json', []))).toEqual([]);
  });
});

describe('audit export: CSV', () => {
  it('a real CSV parser reads back every value, delimiters and line breaks included', async () => {
    const text = await exported('csv');
    const parsed = parse(text, { columns: true, bom: false }) as Record<string, string>[];
    expect(parsed).toHaveLength(3);
    const head = Object.keys(parsed[0]!);
    expect(head[0]).toBe('time');
    expect(head).toContain('request_id');
    expect(head).not.toContain('chain_seq');
    // The sealed request facts are for `valet policy replay`, never exported.
    expect(head).not.toContain('facts');
    parsed.forEach((p, i) => {
      const r = rows[i]!;
      expect(p['time']).toBe(new Date(r.ts).toISOString());
      for (const [k, v] of Object.entries(r)) {
        if (k === 'chain_seq' || k === 'outcome_seq' || k === 'facts') continue;
        expect(p[k], k).toBe(v === null ? '' : String(v));
      }
    });
    expect(parsed[1]!['reason']).toBe(NASTY);
  });
});

/** Splits a CEF line into its 7 header fields and extension, checking the escaping rules as it goes. */
function parseCef(line: string): { header: string[]; ext: Record<string, string> } {
  expect(line).not.toMatch(/[\r\n]/);
  const header: string[] = [];
  let i = 0;
  let field = '';
  while (header.length < 7) {
    const c = line[i++];
    if (c === undefined) throw new Error(`truncated CEF header: ${line}`);
    if (c === '\\') {
      const n = line[i++];
      expect(['\\', '|'], `escape \\${n} in the header`).toContain(n);
      field += n;
    } else if (c === '|') {
      header.push(field);
      field = '';
    } else field += c;
  }
  const rest = line.slice(i);
  // Keys are dictionary names; a value runs until the next ` key=`. An unescaped `=` inside a value is a grammar error.
  const ext: Record<string, string> = {};
  const parts = rest.split(/ (?=[A-Za-z0-9_]+=)/);
  for (const part of parts) {
    const m = /^([A-Za-z0-9_]+)=(.*)$/s.exec(part);
    expect(m, part).not.toBeNull();
    const raw = m![2]!;
    expect(raw, `unescaped = in ${m![1]}`).not.toMatch(/(^|[^\\])(\\\\)*=/);
    ext[m![1]!] = raw.replace(/\\(.)/g, (_s, e: string) => ({ n: '\n', r: '\r', '\\': '\\', '=': '=' })[e] ?? `\\${e}`);
  }
  return { header, ext };
}

describe('audit export: CEF', () => {
  it('follows the CEF grammar: seven header fields, pipes and backslashes escaped; extension = and \\ escaped, line breaks as \\n', async () => {
    const lines = (await exported('cef')).trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    const [ok, nasty, anonymous] = lines.map(parseCef);
    expect(ok!.header).toEqual(['CEF:0', 'Valet', 'Valet Gateway', '0.1.0', 'valet:request:allow', 'POST stripe/v1/charges', '3']);
    expect(ok!.ext).toMatchObject({ rt: String(rows[0]!.ts), externalId: rows[0]!.request_id, suser: 'agent-1', cs1: 'acme', cs1Label: 'tenant', act: 'allow', outcome: '200', cn2: '201', in: '10', out: '20', cfp1: '3.25' });
    expect(nasty!.header[4]).toBe('valet:request:deny');
    expect(nasty!.header[6]).toBe('5');
    expect(nasty!.ext).toMatchObject({ reason: NASTY.replace('\r\n', '\n'), suser: 'agent=1|x', cs1: 'zürich', cs3: 'r,1', duser: 'alice "the admin"', cs5: 'VALET_ERR_POLICY_DENIED' });
    expect(anonymous!.header[4]).toBe('valet:request:none');
    expect(anonymous!.ext).not.toHaveProperty('suser');
  });

  it('escapes a pipe and a backslash in the header', () => {
    const line = cefLine({ ...rows[0]!, path: '/a|b\\c' });
    expect(line).toContain('|POST stripe/a\\|b\\\\c|');
    expect(parseCef(line).header[5]).toBe('POST stripe/a|b\\c');
  });
});

/** RFC 5424 §6 ABNF, as one expression: HEADER SP STRUCTURED-DATA [SP MSG]. SD-NAME is PRINTUSASCII except `=`, SP, `]`, `"`. */
const SD_NAME = '[\\x21\\x23-\\x3c\\x3e-\\x5c\\x5e-\\x7e]{1,32}';
const RFC5424 = new RegExp(
  '^<(?<pri>\\d{1,3})>(?<version>[1-9]\\d{0,2}) ' +
    '(?<ts>-|\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(?:\\.\\d{1,6})?(?:Z|[+-]\\d{2}:\\d{2})) ' +
    '(?<host>[\\x21-\\x7e]{1,255}) (?<app>[\\x21-\\x7e]{1,48}) (?<procid>[\\x21-\\x7e]{1,128}) (?<msgid>[\\x21-\\x7e]{1,32}) ' +
    `(?<sd>-|(?:\\[${SD_NAME}(?: ${SD_NAME}="(?:[^"\\\\\\]]|\\\\["\\\\\\]])*")*\\])+)` +
    '(?: (?<msg>[\\s\\S]*))?$',
  'u',
);

function parseSyslog(m: string): { pri: number; ts: string; host: string; app: string; msgid: string; sdId: string; params: Record<string, string>; msg: string } {
  const g = RFC5424.exec(m)?.groups;
  expect(g, m).toBeDefined();
  const pri = Number(g!['pri']);
  expect(pri).toBeLessThanOrEqual(191);
  const sd = g!['sd']!;
  const params: Record<string, string> = {};
  let sdId = '-';
  if (sd !== '-') {
    sdId = /^\[([^ \]]+)/.exec(sd)![1]!;
    for (const p of sd.matchAll(/ ([^= \]"]+)="((?:[^"\\\]]|\\["\\\]])*)"/g)) params[p[1]!] = p[2]!.replace(/\\(["\\\]])/g, '$1');
  }
  return { pri, ts: g!['ts']!, host: g!['host']!, app: g!['app']!, msgid: g!['msgid']!, sdId, params, msg: g!['msg'] ?? '' };
}

describe('audit export: RFC 5424 syslog', () => {
  it('every message matches the RFC 5424 grammar; PARAM-VALUEs escape ", \\ and ]', async () => {
    const lines = (await exported('syslog')).trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    const [ok, nasty, anonymous] = lines.map(parseSyslog);
    expect(ok).toMatchObject({ pri: 13 * 8 + 6, ts: new Date(rows[0]!.ts).toISOString(), app: 'valet', msgid: 'audit', sdId: 'valet@32473' });
    expect(ok!.params).toMatchObject({ id: String(rows[0]!.id), request_id: rows[0]!.request_id, agent: 'agent-1', tenant: 'acme', status: '200', duration_ms: '3.25' });
    expect(ok!.msg).toBe('POST stripe/v1/charges allow 200 rule=allow-charges');
    expect(nasty!.pri).toBe(13 * 8 + 5);
    // Control characters (the line break) become spaces; the three special characters survive escaping.
    expect(nasty!.params).toMatchObject({ reason: NASTY.replace('\r\n', '  '), agent: 'agent=1|x', tenant: 'zürich', user: 'alice "the admin"' });
    expect(lines[1]).toContain('d \\] e');
    expect(lines[1]).toContain('\\"refunds\\"');
    expect(lines[1]).toContain('c \\\\ d');
    expect(anonymous!.params).not.toHaveProperty('agent');
    expect(anonymous!.msg).toBe('POST -/v1/charges none 401');
  });

  it('a MSG that is not ASCII starts with the UTF-8 BOM; CEF shipping puts the CEF event in MSG with no structured data', () => {
    const m = parseSyslog(syslogMessage(rows[0]!, { hostname: 'gw-1' }, 'prüfung'));
    expect(m.msg).toBe('\uFEFFprüfung');
    expect(m.host).toBe('gw-1');
    expect(m.sdId).toBe('-');
    const cef = parseSyslog(syslogMessage(rows[1]!, {}, cefLine(rows[1]!)));
    expect(cef.msg.replace(/^\uFEFF/, '')).toBe(cefLine(rows[1]!));
  });
});

describe('the grammar checks themselves', () => {
  it('reject what the formats forbid', () => {
    const ok = '<110>1 2026-01-01T00:00:00.000Z h valet - audit [valet@32473 a="x\\"y"] m';
    expect(RFC5424.test(ok)).toBe(true);
    expect(RFC5424.test(ok.replace('x\\"y', 'x"y'))).toBe(false); // unescaped quote
    expect(RFC5424.test(ok.replace('x\\"y', 'x]y'))).toBe(false); // unescaped bracket
    expect(RFC5424.test(ok.replace('<110>', '<110> '))).toBe(false);
    expect(RFC5424.test(ok.replace('valet@32473', 'va=let'))).toBe(false);
    expect(() => parseCef('CEF:0|V|P|1|c|n|3|a=b=c')).toThrow();
    expect(() => parseCef('CEF:0|V|P|1|c|n|3|a=b\nc=d')).toThrow();
    expect(() => parseCef('CEF:0|V|P|1|c\\x|n|3|a=b')).toThrow();
  });
});

describe('audit arguments', () => {
  it('keeps only the listed arguments, in order, with long values replaced', async () => {
    const { keptArguments } = await import('../../gateway/audit/args.js');
    const args = { amount: 5000, currency: 'usd', card: '4242424242424242', memo: 'x'.repeat(600), nested: { a: [1, 2] } };
    expect(keptArguments(args, undefined)).toBeNull();
    expect(keptArguments(args, [])).toBeNull();
    expect(keptArguments(args, ['missing'])).toBeNull();
    expect(keptArguments(args, ['currency', 'amount', 'nested', 'memo'])).toBe('{"currency":"usd","amount":5000,"nested":{"a":[1,2]},"memo":"[512+ characters]"}');
    // The agent's own token, sent as an argument (alone, inside a string, nested), is never kept.
    const token = 'eyJhbGciOiJIUzI1NiJ9.agent.token';
    const leaky = { note: `see ${token}`, nested: { t: [token] }, currency: 'usd' };
    expect(keptArguments(leaky, ['note', 'nested', 'currency'], [token])).toBe('{"note":"[redacted]","nested":{"t":["[redacted]"]},"currency":"usd"}');
  });
});
