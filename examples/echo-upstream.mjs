// A local stand-in for a real API: answers every request with what it received, so you can see
// that the agent token did not arrive, and that Valet scrubs the echoed key from the response. It
// prints the key it received on its own console. `npm run example-upstream`.
import { createServer } from 'node:http';

const port = Number(process.env.PORT ?? 9999);
createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    // What arrived, on this side: the real key Valet injected (the agent never sees it).
    console.log(`${req.method} ${req.url}  x-echo-key: ${req.headers['x-echo-key'] ?? '-'}`);
    const body = JSON.stringify(
      { method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') },
      null,
      2,
    );
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(`${body}\n`);
  });
}).listen(port, '127.0.0.1', () => console.log(`echo upstream on http://127.0.0.1:${port}`));
