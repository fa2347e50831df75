/**
 * Summarises a V8 .cpuprofile (as written by `node --cpu-prof`): where the busy time went, by
 * component and by function, optionally per request. Used by `npm run bench -- --cpu-prof`; also
 * runnable on its own:
 *
 *   node --import tsx bench/lib/cpuprofile.ts <file.cpuprofile> [requests] [top]
 *
 * Samples taken while modules were being loaded (start-up, tsx compilation) are left out, so the
 * figures describe the steady state.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Which part of the stack a frame belongs to: a gateway file, an npm package, a Node core module, or V8. */
export function componentOf(f: CallFrame): string {
  const url = f.url;
  if (url === '') return f.functionName.startsWith('(') ? f.functionName : '(native)';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return `npm:${rest[0]?.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  if (url.startsWith('node:')) return url.replace(/^node:(internal\/)?/, 'node:').replace(/^(node:[a-z_]+(?:\/[a-z_]+)?).*$/, '$1');
  const g = url.indexOf('/gateway/');
  if (g >= 0) return url.slice(g + 1).replace(/\.[cm]?[jt]s$/, '');
  const b = url.indexOf('/bench/');
  if (b >= 0) return url.slice(b + 1);
  return url;
}

const label = (f: CallFrame): string => `${f.functionName || '(anonymous)'} ${componentOf(f)}:${f.lineNumber + 1}`;
/** Stacks containing these are module loading (start-up), not request handling. */
const STARTUP = /^(node:modules|node:bootstrap|npm:tsx)/;

export interface ProfileSummary {
  /** Sampled busy time (not idle, not module loading), ms. */
  busyMs: number;
  startupMs: number;
  totalMs: number;
  requests: number | undefined;
  selfByComponent: [string, number][];
  selfByFunction: [string, number][];
  /** Time with a component anywhere on the stack (each counted once per stack). */
  inclusiveByComponent: [string, number][];
  /** Inclusive time of gateway functions (each counted once per stack). */
  inclusiveGateway: [string, number][];
}

export function summariseProfile(file: string, requests?: number): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const selfTime = new Map<number, number>();
  let totalUs = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i] ?? 0;
    totalUs += dt;
    const id = p.samples[i] as number;
    selfTime.set(id, (selfTime.get(id) ?? 0) + dt);
  }
  const comp = new Map<string, number>();
  const fn = new Map<string, number>();
  const incl = new Map<string, number>();
  const inclComp = new Map<string, number>();
  const add = (m: Map<string, number>, k: string, v: number): void => {
    m.set(k, (m.get(k) ?? 0) + v);
  };
  let busyUs = 0;
  let startupUs = 0;
  for (const [id, us] of selfTime) {
    const node = byId.get(id);
    if (!node || node.callFrame.functionName === '(idle)') continue;
    const stack: CallFrame[] = [];
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) stack.push((byId.get(cur) as ProfileNode).callFrame);
    if (stack.some((f) => STARTUP.test(componentOf(f)))) {
      startupUs += us;
      continue;
    }
    busyUs += us;
    add(comp, componentOf(node.callFrame), us);
    add(fn, label(node.callFrame), us);
    const seen = new Set<string>();
    for (const f of stack) {
      const c = componentOf(f);
      if (c === '(root)') continue;
      if (!seen.has(c)) {
        seen.add(c);
        add(inclComp, c, us);
      }
      const k = label(f);
      if (c.startsWith('gateway/') && !seen.has(k)) {
        seen.add(k);
        add(incl, k, us);
      }
    }
  }
  const sorted = (m: Map<string, number>): [string, number][] =>
    [...m].map(([k, v]): [string, number] => [k, v / 1000]).sort((a, b) => b[1] - a[1]);
  return {
    busyMs: busyUs / 1000,
    startupMs: startupUs / 1000,
    totalMs: totalUs / 1000,
    requests,
    selfByComponent: sorted(comp),
    selfByFunction: sorted(fn),
    inclusiveByComponent: sorted(inclComp),
    inclusiveGateway: sorted(incl),
  };
}

export function formatSummary(s: ProfileSummary, top = 20): string {
  const pct = (v: number): string => `${((100 * v) / s.busyMs).toFixed(1).padStart(5)}%`;
  const perReq = (v: number): string => (s.requests ? `${((v * 1000) / s.requests).toFixed(1).padStart(7)} µs/req` : '');
  const block = (title: string, rows: [string, number][]): string =>
    [title, ...rows.slice(0, top).map(([k, v]) => `  ${pct(v)}  ${v.toFixed(0).padStart(7)} ms ${perReq(v)}  ${k}`)].join('\n');
  const head =
    `busy ${s.busyMs.toFixed(0)} ms of ${s.totalMs.toFixed(0)} ms sampled, start-up (${s.startupMs.toFixed(0)} ms) excluded; ` +
    (s.requests ? `${s.requests} requests → ${((s.busyMs * 1000) / s.requests).toFixed(0)} µs of CPU per request on the main thread` : 'percentages are of busy time');
  return [
    head,
    block('self time by component:', s.selfByComponent),
    block('self time by function:', s.selfByFunction),
    block('inclusive time by component (anywhere on the stack):', s.inclusiveByComponent),
    block('inclusive time of gateway/ functions:', s.inclusiveGateway),
  ].join('\n\n');
}

/** The main-thread profile in a --cpu-prof-dir (files are CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile). */
export function mainThreadProfiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => /\.\d+\.0\.\d+\.cpuprofile$/.test(f))
    .map((f) => join(dir, f));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node --import tsx bench/lib/cpuprofile.ts <file.cpuprofile> [requests] [top]');
    process.exit(2);
  }
  const requests = process.argv[3] ? Number(process.argv[3]) : undefined;
  console.log(formatSummary(summariseProfile(file, requests), Number(process.argv[4] ?? 20)));
}
