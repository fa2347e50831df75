const KEY = 'valet.adminToken';

/**
 * `#token=...` (a link someone was handed) moves into sessionStorage and out of the address bar
 * and history at once, so it is not left in bookmarks, screenshots or a shared screen. The token
 * lives for this tab only; it is never a cookie, so other sites cannot use it through the browser.
 */
export function takeTokenFromUrl(): void {
  const m = /^#(?:.*&)?token=([^&]+)/.exec(location.hash);
  if (m === null) return;
  try {
    saveToken(decodeURIComponent(m[1] as string));
  } finally {
    history.replaceState(null, '', `${location.pathname}${location.search}`);
  }
}

export function loadToken(): string | undefined {
  return sessionStorage.getItem(KEY) ?? undefined;
}

export function saveToken(token: string): void {
  sessionStorage.setItem(KEY, token.trim().replace(/^Bearer\s+/i, ''));
}

export function clearToken(): void {
  sessionStorage.removeItem(KEY);
}
