import type { Api } from './api.js';

export type Permission =
  | 'audit.read'
  | 'approvals.read'
  | 'approvals.resolve'
  | 'policy.read'
  | 'secrets.read'
  | 'secrets.write';

/** `GET /api/whoami`. */
export interface Whoami {
  readonly subject: string;
  readonly tenant: string | null;
  readonly roles: readonly string[];
  readonly permissions: readonly Permission[];
}

export interface Context {
  readonly api: Api;
  readonly who: Whoami;
  can(p: Permission): boolean;
  /** A short message at the bottom of the screen. */
  notify(message: string, kind?: 'ok' | 'error'): void;
  /** Goes to a view, with parameters (`#/audit?agent=x`). */
  go(view: string, params?: Record<string, string>): void;
}

/** One tab. `mount` fills `el` and returns a function that stops its timers. */
export interface View {
  readonly id: string;
  readonly title: string;
  readonly permission: Permission;
  mount(ctx: Context, el: HTMLElement, params: URLSearchParams): () => void;
}

/** Runs `tick` now and then every `ms` until stopped; never two at once, and a slow answer delays the next. */
export function poll(ms: number, tick: () => Promise<void>): () => void {
  let stopped = false;
  let timer: number | undefined;
  const run = async (): Promise<void> => {
    try {
      await tick();
    } finally {
      if (!stopped) timer = window.setTimeout(() => void run(), ms);
    }
  };
  void run();
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}
