import { once } from 'node:events';
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/**
 * A TCP front for a destination that the test switches between `down` (every connection is reset at once,
 * and counted) and `up` (connections are piped to the target port).
 */
export class SwitchableProxy {
  mode: 'up' | 'down' = 'down';
  /** Connections refused while down. */
  refused = 0;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #targetPort: () => number;

  private constructor(targetPort: () => number) {
    this.#targetPort = targetPort;
    this.#server = createServer((socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
      socket.on('error', () => {});
      if (this.mode === 'down') {
        this.refused++;
        socket.resetAndDestroy();
        return;
      }
      const upstream = createConnection({ host: '127.0.0.1', port: this.#targetPort() });
      this.#sockets.add(upstream);
      upstream.on('close', () => this.#sockets.delete(upstream));
      upstream.on('error', () => socket.destroy());
      socket.on('error', () => upstream.destroy());
      socket.pipe(upstream).pipe(socket);
    });
  }

  static async start(targetPort: () => number): Promise<SwitchableProxy> {
    const proxy = new SwitchableProxy(targetPort);
    proxy.#server.listen(0, '127.0.0.1');
    await once(proxy.#server, 'listening');
    return proxy;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
