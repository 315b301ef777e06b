/**
 * kiln's relay behind every guest forward (src/vm/forwards.ts), with real sockets and no VM: QEMU's `socat`
 * connects to the VM's unix socket, the relay connects to the host service. A service that sends its answer
 * and closes at once while the guest side still reads (a slow guest under TCG) must not lose the answer's
 * tail: the buildah pull through the mirror that failed with "unexpected EOF" lost 60,035 bytes that way
 * (the relay destroyed the guest's side when the service's side closed).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { listenForward } from '../../src/vm/forwards.ts';

const dir = mkdtempSync(join(tmpdir(), 'kiln-relay-'));
const servers: Server[] = [];
after(async () => {
  for (const s of servers) await new Promise((r) => s.close(r));
  rmSync(dir, { recursive: true, force: true });
});

/** A host service on 127.0.0.1 whose connections run `onConn`. */
async function service(onConn: (s: Socket) => void): Promise<{ port: number; closed: Promise<void>[] }> {
  const closed: Promise<void>[] = [];
  const srv = createServer((s) => {
    closed.push(new Promise((r) => s.on('close', () => r())));
    s.on('error', () => undefined);
    onConn(s);
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return { port: (srv.address() as { port: number }).port, closed };
}

/**
 * One guest connection: the service answers `bytes` and closes 100 ms later (by then the relay has read the
 * whole answer and holds what the guest's socket buffer could not take), the guest starts reading 400 ms in.
 */
async function slowGuest(path: string, svcBodies: Map<string, Buffer>, bytes: number): Promise<{ sent: Buffer; got: Buffer }> {
  const id = randomBytes(8).toString('hex');
  const sent = randomBytes(bytes);
  svcBodies.set(id, sent);
  const guest = connect(path);
  guest.write(`${id}\n`);
  guest.pause();
  await new Promise<void>((r) => setTimeout(r, 400));
  const chunks: Buffer[] = [];
  guest.on('data', (c: Buffer) => chunks.push(c));
  await new Promise<void>((r) => {
    guest.on('close', () => r());
    guest.resume();
  });
  return { sent, got: Buffer.concat(chunks) };
}

void test('an answer the service sends and then closes reaches a guest that reads late, every byte', { timeout: 60_000 }, async () => {
  const bodies = new Map<string, Buffer>();
  const svc = await service((s) =>
    s.once('data', (d: Buffer) => {
      s.write(bodies.get(d.toString().trim())!);
      setTimeout(() => s.end(), 100);
    }),
  );
  const path = join(dir, 'fwd-slow.sock');
  servers.push(await listenForward(path, svc.port));
  // Around the guest side's socket buffer (about 200 kB here): the sizes where the relay holds a tail.
  const sizes = Array.from({ length: 33 }, (_, i) => (192 + 4 * i) * 1024);
  const results = await Promise.all(sizes.map((n) => slowGuest(path, bodies, n)));
  const short = results.filter((r) => !r.got.equals(r.sent)).map((r) => `${r.got.length}/${r.sent.length}`);
  assert.deepEqual(short, [], 'every answer arrived whole');
});

void test('the guest ending or closing its connection ends the host connection', { timeout: 30_000 }, async () => {
  const svc = await service((s) => s.on('data', () => undefined));
  const path = join(dir, 'fwd-close.sock');
  const relay = await listenForward(path, svc.port);
  servers.push(relay);

  const g1 = connect(path);
  g1.write('hello');
  while (svc.closed.length === 0) await new Promise<void>((r) => setTimeout(r, 10));
  g1.end();
  await svc.closed[0]; // the host side was closed after the guest went away

  const g2 = connect(path);
  g2.write('hello');
  while (svc.closed.length < 2) await new Promise<void>((r) => setTimeout(r, 10));
  g2.destroy();
  await svc.closed[1];
});

void test('closing the relay (VM teardown) closes every open connection', { timeout: 30_000 }, async () => {
  const svc = await service((s) => s.resume());
  const path = join(dir, 'fwd-teardown.sock');
  const relay = await listenForward(path, svc.port);
  const g = connect(path);
  const gClosed = new Promise<void>((r) => g.on('close', () => r()));
  g.on('error', () => undefined);
  g.write('x');
  while (svc.closed.length === 0) await new Promise<void>((r) => setTimeout(r, 10));
  await new Promise((r) => relay.close(r));
  await Promise.all([gClosed, svc.closed[0]]);
});
