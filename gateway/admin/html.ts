import type { AdminAsset } from './server.js';

/** Text made safe for HTML content and attribute values. */
export const escapeHtml = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');

/** A small server-rendered page of the admin plane: no external assets, no referrer sent on. `body` is HTML already escaped. */
export function htmlPage(status: number, title: string, body: string, headers?: Readonly<Record<string, string>>): AdminAsset {
  const text = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><meta name="referrer" content="no-referrer"><title>Valet — ${escapeHtml(title)}</title></head>
<body>
<h1>${escapeHtml(title)}</h1>
${body}
</body>
</html>
`;
  return { status, contentType: 'text/html; charset=utf-8', body: Buffer.from(text), ...(headers !== undefined && { headers }) };
}
