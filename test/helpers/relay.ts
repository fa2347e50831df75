import { connect, createServer, type Server, type Socket } from 'node:net';

/** A TCP relay on 127.0.0.1 to a real server, which a test cuts (the server seems gone) and restores on the same port. */
export interface TcpRelay {
  readonly port: number;
  /** Stops listening and drops every connection. */
  cut(): Promise<void>;
  /** Listens again on the same port. */
  restore(): Promise<void>;
}

export async function tcpRelay(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpRelay> {
  let server: Server | undefined;
  let port = 0;
  const sockets = new Set<Socket>();
  const listen = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const s = createServer((client) => {
        const upstream = connect(targetPort, targetHost);
        sockets.add(client).add(upstream);
        client.pipe(upstream).pipe(client);
        const drop = (): void => {
          client.destroy();
          upstream.destroy();
        };
        client.on('error', drop).on('close', drop);
        upstream.on('error', drop).on('close', drop);
      });
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        port = (s.address() as { port: number }).port;
        server = s;
        resolve();
      });
    });
  await listen();
  return {
    get port() {
      return port;
    },
    cut: () =>
      new Promise((resolve) => {
        const s = server;
        server = undefined;
        for (const c of sockets) c.destroy();
        sockets.clear();
        if (s === undefined) resolve();
        else s.close(() => resolve());
      }),
    restore: listen,
  };
}
