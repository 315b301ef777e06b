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

/**
 * What every VM of a host with registry mirrors gets: Docker Hub's mirror at MIRROR_GUEST_ADDRESS
 * (10.0.2.100:5000); the k-th mirror of another registry at 10.0.2.(101+k), port 5000 for containerd, BuildKit
 * and buildah, and ports 80 and 443 for Docker (which reaches it by the registry's name, pointed there in the
 * guest). Every port is a forward to the mirror's host port on 127.0.0.1.
 */
export function mirrorVmSettings(mirrors: { registry: string; hostPort: number }[]): {
  forwards: HostForward[];
  registryMirror?: string;
  registryMirrors?: { registry: string; address: string }[];
} {
  const forwards: HostForward[] = [];
  const out: ReturnType<typeof mirrorVmSettings> = { forwards };
  const others: { registry: string; address: string }[] = [];
  for (const m of mirrors) {
    if (m.registry === 'docker.io') {
      if (out.registryMirror) throw new Error('two mirrors for docker.io');
      forwards.push({ guestAddr: MIRROR_GUEST_IP, guestPort: MIRROR_GUEST_PORT, hostPort: m.hostPort });
      out.registryMirror = MIRROR_GUEST_ADDRESS;
      continue;
    }
    if (others.length >= OTHER_MIRRORS_MAX) throw new Error(`at most ${OTHER_MIRRORS_MAX} mirrors of registries other than docker.io`);
    const ip = `10.0.2.${101 + others.length}`;
    for (const guestPort of [MIRROR_GUEST_PORT, 80, 443]) forwards.push({ guestAddr: ip, guestPort, hostPort: m.hostPort });
    others.push({ registry: m.registry, address: `${ip}:${MIRROR_GUEST_PORT}` });
  }
  if (others.length > 0) out.registryMirrors = others;
  return out;
}

/** Guest addresses 10.0.2.101-10.0.2.116 serve mirrors of other registries. */
export const OTHER_MIRRORS_MAX = 16;

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

/**
 * Listens on the forward's unix socket and relays each connection to 127.0.0.1:hostPort. One side's end is
 * passed on to the other *after* what is still buffered for it (a service that answers and closes at once
 * while a slow guest still reads loses nothing: destroying both sides on the first close cut a blob's last
 * 60 kB and failed a buildah pull with "unexpected EOF"); an error on either side ends both at once. Closing
 * the returned server (VM teardown) also drops every open connection.
 */
export async function listenForward(path: string, hostPort: number): Promise<Server> {
  const open = new Set<Socket>();
  const server = createServer((guest) => {
    const host = connect(hostPort, '127.0.0.1');
    open.add(guest).add(host);
    const fail = () => {
      guest.destroy();
      host.destroy();
    };
    // pipe() ends the other side (after its buffered writes) when one side's stream ends; a side that closes
    // without an end (closed by an error) takes the other down.
    const closed = (self: Socket, other: Socket) => () => {
      open.delete(self);
      if (!self.readableEnded) other.destroy();
      else if (!other.writableEnded) other.end();
    };
    guest.on('error', fail).on('close', closed(guest, host));
    host.on('error', fail).on('close', closed(host, guest));
    guest.pipe(host);
    host.pipe(guest);
  });
  // VM teardown closes the server; net.Server's close waits for open connections, so drop them here.
  const close = server.close.bind(server);
  server.close = (cb) => {
    close(cb);
    for (const s of open) s.destroy();
    open.clear();
    return server;
  };
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, resolve);
  });
  return server;
}
