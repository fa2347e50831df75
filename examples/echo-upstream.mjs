// A local stand-in for a real API: answers every request with what it received, so you can see
// that the real credential arrived and the agent token did not. `npm run example-upstream`.
import { createServer } from 'node:http';

const port = Number(process.env.PORT ?? 9999);
createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = JSON.stringify(
      { method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') },
      null,
      2,
    );
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(`${body}\n`);
  });
}).listen(port, '127.0.0.1', () => console.log(`echo upstream on http://127.0.0.1:${port}`));
