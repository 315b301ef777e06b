// What a real agent does with malformed binary frames from its server (fault injection: a raw WebSocket peer
// plays the server's side of the protocol, as test/server/cache-transfer.test.ts's hand-made peers play an
// agent's). A binary frame is only ever a cache chunk frame; one that is not well formed closes the
// connection with 1008 and its code, and the agent reports a protocol error instead of writing anything.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { makeAgent } from '../../src/agent/agent.ts';
import { memoryImageResolver } from '../../src/agent/images.ts';
import { CACHE_TRANSFER_VERSION, PROTOCOL_VERSION, encodeCacheChunkFrame } from '../../src/core/agent-protocol.ts';
import { makeMemoryDriver } from '../../src/vm/memory-driver.ts';
import { quietLogger } from '../server/harness.ts';

const servers: WebSocketServer[] = [];
after(() => {
  for (const s of servers) s.close();
});

/** A real agent (memory driver, no caches) pointed at the raw peer; it does not retry soon after a close. */
const agentFor = (url: string) =>
  makeAgent({
    servers: [url],
    token: 'kiln_agent_raw-peer',
    name: 'frames',
    arch: 'amd64',
    cpus: 2,
    memoryBytes: 4 * 1024 ** 3,
    diskBytes: 100 * 1024 ** 3,
    driver: makeMemoryDriver({ arches: ['amd64'], cpus: 2 }),
    images: memoryImageResolver,
    logger: quietLogger(),
    minBackoffMs: 60_000,
  });

/** A peer that welcomes the agent's hello and then sends `frame`; resolves with the close the agent made. */
async function closeFor(frame: Buffer): Promise<{ code: number; reason: string; reported: { code: string; message: string }[] }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  servers.push(wss);
  await once(wss, 'listening');
  const url = `http://127.0.0.1:${(wss.address() as AddressInfo).port}`;
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    wss.once('connection', (ws: WebSocket) => {
      ws.once('message', () => {
        ws.send(JSON.stringify({ type: 'welcome', protocol: PROTOCOL_VERSION, hostId: 1, hostName: 'frames', serverId: 'raw-peer' }));
        ws.send(frame, { binary: true });
      });
      ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
  });
  const agent = agentFor(url);
  const reported: { code: string; message: string }[] = [];
  agent.events.on('protocol-error', (e) => reported.push(e));
  await agent.start();
  try {
    const r = await Promise.race([closed, new Promise<never>((_, no) => setTimeout(() => no(new Error('the agent did not close the connection within 10 s')), 10_000))]);
    return { ...r, reported };
  } finally {
    await agent.stop();
  }
}

const header = { type: 'cache.chunk' as const, tv: CACHE_TRANSFER_VERSION, transferId: 'abcdefgh12345678', seq: 0, offset: 0 };
const withHeaderLength = (n: number, rest: Buffer) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return Buffer.concat([b, rest]);
};

for (const [name, frame, code] of [
  ['shorter than its length field', Buffer.from([0, 0]), 'protocol.chunk_too_short'],
  ['a header length past the frame', withHeaderLength(400, Buffer.from('{"type"')), 'protocol.chunk_header_length'],
  ['a header that is not JSON', withHeaderLength(5, Buffer.from('{nope and data')), 'protocol.chunk_bad_header'],
  ['a header of another transfer version', (() => {
    const h = Buffer.from(JSON.stringify({ ...header, tv: 1 }));
    return withHeaderLength(h.length, Buffer.concat([h, Buffer.from('data')]));
  })(), 'protocol.chunk_bad_header'],
  ['no data after the header', (() => {
    const h = Buffer.from(JSON.stringify(header));
    return withHeaderLength(h.length, h);
  })(), 'protocol.chunk_empty'],
] as const) {
  void test(`an agent closes the connection on a binary frame from its server with ${name} (${code})`, async () => {
    const r = await closeFor(frame);
    assert.equal(r.code, 1008);
    assert.equal(r.reason, code);
    assert.deepEqual(r.reported.map((e) => e.code), [code]);
  });
}

void test('a well-formed chunk frame for no transfer of this agent is ignored: the connection stays up', async () => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  servers.push(wss);
  await once(wss, 'listening');
  const got: string[] = [];
  const sent = new Promise<number>((resolve) => {
    wss.once('connection', (ws: WebSocket) => {
      ws.on('message', (d) => got.push(String(d)));
      ws.once('message', () => {
        ws.send(JSON.stringify({ type: 'welcome', protocol: PROTOCOL_VERSION, hostId: 1, hostName: 'frames', serverId: 'raw-peer' }));
        ws.send(encodeCacheChunkFrame(header, Buffer.alloc(16, 1)), { binary: true });
        // Frames arrive in order: had the agent closed on the chunk frame, its close frame would come before
        // the pong, and the socket would no longer be open when the pong is read.
        ws.once('pong', () => resolve(ws.readyState));
        ws.ping();
      });
    });
  });
  const agent = agentFor(`http://127.0.0.1:${(wss.address() as AddressInfo).port}`);
  await agent.start();
  try {
    assert.equal(await sent, 1, 'the connection is still open (readyState OPEN) after the frame');
    assert.equal(JSON.parse(got[0]!).type, 'hello');
  } finally {
    await agent.stop();
  }
});
