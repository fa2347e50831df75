/** An error answer from the admin API (`{"error": {code, message}}`), or a network failure (status 0). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export type Query = Record<string, string | number | undefined | null>;

export interface Api {
  get<T>(path: string, query?: Query): Promise<T>;
  send<T>(method: 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown): Promise<T>;
  /** A download (export): the body as a Blob, with the file name the server suggests, if any. */
  blob(path: string, query?: Query): Promise<{ blob: Blob; filename: string | undefined }>;
}

export function url(path: string, query: Query = {}): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const qs = q.toString();
  return qs === '' ? path : `${path}?${qs}`;
}

/**
 * Every call carries the admin token as `Authorization: Bearer` and nothing ambient: no cookies
 * (`credentials: 'omit'`), no cache. A 401 means the token expired or was refused: sign in again.
 */
export function createApi(token: string, onUnauthorized: (message: string) => void): Api {
  const call = async (method: string, path: string, body?: unknown): Promise<Response> => {
    const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(path, { method, headers, credentials: 'omit', cache: 'no-store', body: body === undefined ? null : JSON.stringify(body) });
    } catch (err) {
      throw new ApiError(0, 'NETWORK', `The gateway did not answer (${(err as Error).message}).`);
    }
    if (res.ok) return res;
    let code = `HTTP_${res.status}`;
    let message = `${res.status} ${res.statusText}`;
    try {
      const e = ((await res.json()) as { error?: { code?: string; message?: string } }).error;
      if (e?.code) code = e.code;
      if (e?.message) message = e.message;
    } catch {
      // Not JSON: keep the status line.
    }
    if (res.status === 401) onUnauthorized(message);
    throw new ApiError(res.status, code, message);
  };
  return {
    get: async <T>(path: string, query?: Query) => (await (await call('GET', url(path, query))).json()) as T,
    send: async <T>(method: 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown) => (await (await call(method, path, body)).json()) as T,
    async blob(path, query) {
      const res = await call('GET', url(path, query));
      const m = /filename="?([^";]+)"?/.exec(res.headers.get('content-disposition') ?? '');
      return { blob: await res.blob(), filename: m?.[1] };
    },
  };
}

/** Saves a Blob as a file: the only way to download with an Authorization header (a plain link cannot send one). */
export function download(blob: Blob, filename: string): void {
  const href = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = href;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10_000);
}
