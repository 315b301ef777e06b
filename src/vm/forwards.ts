/**
 * Host services a guest reaches at fixed addresses (the registry mirror at 10.0.2.100:5000). QEMU's guestfwd
 * runs `socat - UNIX-CONNECT:<vm dir>/fwd<n>.sock` for each guest connection (its `cmd:` form), and kiln
 * relays each connection on that unix socket to the host service on 127.0.0.1: one host connection per guest
 * connection. (The character-device form of guestfwd shares one host connection between all guest
 * connections, which loses answers as soon as two overlap.) A unix socket is a file, so the relay works
 * whatever the VM's egress filter closes: nftables never sees it.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';

export interface HostForward {
  guestAddr: string;
  guestPort: number;
  hostPort: number;
}

/** The unix socket QEMU's per-connection command connects to, for forward `i` of a VM. */
export function forwardSocketPath(vmDir: string, i: number): string {
  return join(vmDir, `fwd${i}.sock`);
}

/** Listens on the forward's unix socket and relays each connection to 127.0.0.1:hostPort. */
export async function listenForward(path: string, hostPort: number): Promise<Server> {
  const open = new Set<Socket>();
  const server = createServer((guest) => {
    const host = connect(hostPort, '127.0.0.1');
    open.add(guest).add(host);
    const end = () => {
      guest.destroy();
      host.destroy();
      open.delete(guest);
      open.delete(host);
    };
    guest.on('error', end).on('close', end);
    host.on('error', end).on('close', end);
    guest.pipe(host);
    host.pipe(guest);
  });
  server.on('close', () => {
    for (const s of open) s.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, resolve);
  });
  return server;
}
