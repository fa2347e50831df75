/**
 * The benchmark's upstream: a minimal node:http server on 127.0.0.1 that reads the whole request
 * body and answers a small JSON document. It counts requests, and counts separately those that
 * carried the credential Valet is configured to inject, so the orchestrator can check that
 * Valet's requests really went through the injection path.
 *
 * Run by bench/proxy.ts in its own process; argv[2] is the expected credential header value,
 * argv[3] the access key id SigV4-signed requests must be signed with.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { failChild, serveChild } from '../lib/child.js';

const injected = process.argv[2] ?? '';
/** A SigV4-signed request (the valet-sigv4 route) counts as carrying the credential when signed with the bench's key. */
const signedWith = `AWS4-HMAC-SHA256 Credential=${process.argv[3] ?? 'none'}/`;
/** Requests to a path ending in `/hold`, answered only once `POST /release` arrives (bench/connections.ts). */
let held: (() => void)[] = [];
let requests = 0;
let withInjectedCredential = 0;
let bodyBytes = 0;

const server = createServer({ keepAliveTimeout: 10_000 }, (req, res) => {
  let n = 0;
  req.on('data', (c: Buffer) => {
    n += c.length;
  });
  req.on('end', () => {
    if (req.url === '/oauth/token' && injected.startsWith('Bearer ')) {
      // The token endpoint of the OAuth route: the access token it issues is the expected credential.
      const token = `{"access_token":"${injected.slice(7)}","token_type":"Bearer","expires_in":3600}`;
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(token) });
      res.end(token);
      return;
    }
    if (req.url === '/release') {
      const waiting = held;
      held = [];
      for (const answer of waiting) answer();
      res.end(`{"released":${waiting.length}}`);
      return;
    }
    requests++;
    bodyBytes += n;
    const auth = req.headers.authorization ?? '';
    if ((injected !== '' && auth === injected) || auth.startsWith(signedWith)) withInjectedCredential++;
    const body = `{"ok":true,"received":${n}}`;
    const answer = (): void => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (req.url?.endsWith('/hold')) held.push(answer);
    else answer();
  });
});

server.once('error', failChild);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  serveChild(
    {
      stats: () => ({ requests, withInjectedCredential, bodyBytes, held: held.length }),
      onStop: () =>
        new Promise((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve({ requests, withInjectedCredential, bodyBytes }));
        }),
    },
    { url: `http://127.0.0.1:${port}` },
  );
});
