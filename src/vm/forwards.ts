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

/**
 * The one address every guest reaches the host's registry mirror at, with the network closed or open:
 * a forward to the mirror's host port. Documented in README and docs/network.md.
 */
export const MIRROR_GUEST_IP = '10.0.2.100';
export const MIRROR_GUEST_PORT = 5000;
export const MIRROR_GUEST_ADDRESS = `${MIRROR_GUEST_IP}:${MIRROR_GUEST_PORT}`;

/** The forward that puts a mirror listening on the host's loopback (127.x:port, localhost:port) at MIRROR_GUEST_ADDRESS; undefined for other addresses. */
export function mirrorForward(listen: string): HostForward | undefined {
  const m = /^(127\.[0-9.]+|localhost):([0-9]{1,5})$/.exec(listen);
  return m ? { guestAddr: MIRROR_GUEST_IP, guestPort: MIRROR_GUEST_PORT, hostPort: Number(m[2]) } : undefined;
}

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
