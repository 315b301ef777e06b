import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CACHE_TRANSFER_VERSION,
  MAX_CACHE_CHUNK_BYTES,
  MAX_CACHE_CHUNK_HEADER_BYTES,
  MAX_MESSAGE_BYTES,
  decodeCacheChunkFrame,
  encodeCacheChunkFrame,
  encodeMessage,
  makeAgentMessageDecoder,
  makeServerMessageDecoder,
} from './agent-protocol.ts';
import { isKilnError } from './errors.ts';

void test('protocol: valid messages round-trip; malformed ones are protocol errors', () => {
  const a = makeAgentMessageDecoder();
  const msg = { type: 'job.log' as const, jobId: 3, attempt: 1, seq: 0, stream: 'stdout' as const, data: Buffer.from('hi').toString('base64') };
  assert.deepEqual(a.decode(encodeMessage(msg)), msg);
  assert.throws(() => a.decode('{nope'), (e) => isKilnError(e, 'protocol.bad_json'));
  assert.throws(() => a.decode(JSON.stringify({ ...msg, jobId: -1 })), (e) => isKilnError(e, 'protocol.bad_message'));
  assert.throws(() => a.decode(JSON.stringify({ ...msg, extra: 1 })), (e) => isKilnError(e, 'protocol.bad_message'));
  assert.throws(() => a.decode(JSON.stringify({ type: 'launch', jobId: 1 })), (e) => isKilnError(e, 'protocol.bad_message'));
  assert.throws(() => a.decode('x'.repeat(MAX_MESSAGE_BYTES + 1)), (e) => isKilnError(e, 'protocol.too_large'));
  const s = makeServerMessageDecoder();
  assert.equal(s.decode(JSON.stringify({ type: 'stop', jobId: 1, attempt: 1, reason: 'cancel' })).type, 'stop');
  // The Wake-on-LAN relay: a MAC, a broadcast address and a port, nothing else.
  const wol = { type: 'wol', mac: 'aa:bb:cc:00:11:22', broadcast: '192.168.1.255', port: 9 };
  assert.deepEqual(s.decode(JSON.stringify(wol)), wol);
  assert.throws(() => s.decode(JSON.stringify({ ...wol, mac: 'not-a-mac' })), (e) => isKilnError(e, 'protocol.bad_message'));
  assert.throws(() => s.decode(JSON.stringify({ ...wol, port: 70000 })), (e) => isKilnError(e, 'protocol.bad_message'));
  assert.throws(() => s.decode(JSON.stringify({ ...wol, command: 'rm -rf /' })), (e) => isKilnError(e, 'protocol.bad_message'));
});

void test('protocol: cache transfer messages name their version and stay within bounds', () => {
  const a = makeAgentMessageDecoder();
  const bad = (m: object) => assert.throws(() => a.decode(JSON.stringify(m)), (e) => isKilnError(e, 'protocol.bad_message') || isKilnError(e, 'protocol.too_large'));
  // Chunks are binary frames only: a JSON chunk is no message of either side.
  const jsonChunk = { type: 'cache.chunk', tv: CACHE_TRANSFER_VERSION, transferId: 'abcdefgh12345678', seq: 0, offset: 0, data: Buffer.alloc(16, 7).toString('base64') };
  bad(jsonChunk);
  assert.throws(() => makeServerMessageDecoder().decode(JSON.stringify(jsonChunk)), (e) => isKilnError(e, 'protocol.bad_message'));
  const offer = { type: 'cache.offer', tv: CACHE_TRANSFER_VERSION, transferId: 'abcdefgh12345678', version: 'v1-ab', length: 1024, sha256: 'a'.repeat(64), record: { createdAt: 'now', jobId: '3' } };
  assert.equal(a.decode(JSON.stringify(offer)).type, 'cache.offer');
  bad({ ...offer, tv: 1 });
  bad({ ...offer, sha256: 'xyz' });
  bad({ ...offer, version: 'v/../1' });
  bad({ ...offer, record: { createdAt: 'now', extra: 1 } });
  bad({ type: 'cache.fetch', tv: CACHE_TRANSFER_VERSION, fetchId: 'abcdefgh', jobId: 1, attempt: 1, key: '../x' });
  // A fetch (and its refusal) may name another transfer version: the relay refuses it, naming both.
  assert.equal(a.decode(JSON.stringify({ type: 'cache.fetch', tv: 1, fetchId: 'abcdefgh', jobId: 1, attempt: 1, key: 'a/b' })).type, 'cache.fetch');
  // A server-only message is not an agent message.
  bad({ type: 'cache.send', tv: CACHE_TRANSFER_VERSION, transferId: 'abcdefgh12345678', key: 'a/b', version: 'v', window: 4 });
});

/** A frame laid out by hand (u32 big-endian header length, header bytes, data), independent of the encoder. */
const rawFrame = (header: string | Buffer, data: Buffer, headerLength?: number) => {
  const h = Buffer.isBuffer(header) ? header : Buffer.from(header);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(headerLength ?? h.length);
  return Buffer.concat([len, h, data]);
};

void test('protocol: a cache chunk frame round-trips its header and raw bytes; its layout is a 4-byte big-endian header length, the JSON header, the data', () => {
  const header = { type: 'cache.chunk' as const, tv: CACHE_TRANSFER_VERSION, transferId: 'abcdefgh12345678', seq: 41, offset: 7 * MAX_CACHE_CHUNK_BYTES };
  const data = Buffer.alloc(MAX_CACHE_CHUNK_BYTES);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
  const frame = encodeCacheChunkFrame(header, data);
  const json = Buffer.from(JSON.stringify(header));
  assert.equal(frame.readUInt32BE(0), json.length);
  assert.deepEqual(frame.subarray(4, 4 + json.length), json);
  assert.deepEqual(frame, rawFrame(json, data), 'the same bytes as the layout laid out by hand');
  assert.ok(frame.length < MAX_MESSAGE_BYTES, 'a whole chunk fits one message');
  assert.ok(frame.length - data.length < 200, `the frame adds ${frame.length - data.length} bytes to the data, not a third`);
  const d = decodeCacheChunkFrame(frame);
  assert.deepEqual(d.header, header);
  assert.ok(d.data.equals(data));
  assert.equal(d.data.buffer, frame.buffer, 'the data is a view of the frame, not a copy');
  // The smallest: one byte of data, at the last possible offset.
  const one = decodeCacheChunkFrame(encodeCacheChunkFrame({ ...header, seq: 0, offset: 2 ** 44 }, Buffer.from([9])));
  assert.deepEqual([one.header.offset, [...one.data]], [2 ** 44, [9]]);
  // The encoder refuses what the decoder would.
  assert.throws(() => encodeCacheChunkFrame(header, Buffer.alloc(0)), (e) => isKilnError(e, 'protocol.chunk_empty'));
  assert.throws(() => encodeCacheChunkFrame(header, Buffer.alloc(MAX_CACHE_CHUNK_BYTES + 1)), (e) => isKilnError(e, 'protocol.chunk_too_large'));
});

void test('protocol: malformed cache chunk frames are protocol errors with a code per fault', () => {
  const header = { type: 'cache.chunk', tv: CACHE_TRANSFER_VERSION, transferId: 'abcdefgh12345678', seq: 0, offset: 0 };
  const json = JSON.stringify(header);
  const data = Buffer.alloc(64, 1);
  const fails = (frame: Buffer, code: string, message?: RegExp) =>
    assert.throws(
      () => decodeCacheChunkFrame(frame),
      (e) => isKilnError(e, code) && (!message || message.test((e as Error).message)),
      `${code}${message ? ` ${message}` : ''}`,
    );
  assert.equal(decodeCacheChunkFrame(rawFrame(json, data)).header.seq, 0, 'the well-formed frame the faults below start from');
  // Too short for the header length.
  for (const n of [0, 1, 3]) fails(Buffer.alloc(n), 'protocol.chunk_too_short', new RegExp(`binary frame of ${n} bytes is too short`));
  // A header length of 0, over the bound, or past the frame's end (a truncated frame).
  fails(rawFrame('', data, 0), 'protocol.chunk_header_length', /outside 1-512/);
  fails(rawFrame(json, data, MAX_CACHE_CHUNK_HEADER_BYTES + 1), 'protocol.chunk_header_length', /outside/);
  fails(rawFrame(json, data, 0xffffffff), 'protocol.chunk_header_length', /4294967295 is outside/);
  fails(rawFrame(json, Buffer.alloc(0)).subarray(0, 4 + json.length - 1), 'protocol.chunk_header_length', /runs past the end/);
  fails(rawFrame(json, Buffer.alloc(0), json.length + 1), 'protocol.chunk_header_length', /runs past the end/);
  // No data, or more than a chunk's worth.
  fails(rawFrame(json, Buffer.alloc(0)), 'protocol.chunk_empty');
  fails(rawFrame(json, Buffer.alloc(MAX_CACHE_CHUNK_BYTES + 1)), 'protocol.chunk_too_large', new RegExp(`${MAX_CACHE_CHUNK_BYTES + 1} bytes of data`));
  // A header that is not JSON, not the schema, or of another transfer version.
  fails(rawFrame('{nope', data), 'protocol.chunk_bad_header', /not JSON/);
  fails(rawFrame(Buffer.from([0xff, 0xfe, 0x00]), data), 'protocol.chunk_bad_header');
  fails(rawFrame(JSON.stringify({ ...header, tv: 1 }), data), 'protocol.chunk_bad_header', new RegExp(`transfer version 1; this side speaks ${CACHE_TRANSFER_VERSION}`));
  fails(rawFrame(JSON.stringify({ ...header, type: 'cache.end' }), data), 'protocol.chunk_bad_header', /does not match the protocol/);
  fails(rawFrame(JSON.stringify({ ...header, transferId: '../../etc' }), data), 'protocol.chunk_bad_header', /transferId/);
  fails(rawFrame(JSON.stringify({ ...header, seq: -1 }), data), 'protocol.chunk_bad_header', /seq/);
  fails(rawFrame(JSON.stringify({ ...header, offset: 2 ** 44 + 1 }), data), 'protocol.chunk_bad_header', /offset/);
  fails(rawFrame(JSON.stringify({ ...header, data: 'AAAA' }), data), 'protocol.chunk_bad_header');
  fails(rawFrame('null', data), 'protocol.chunk_bad_header');
  // A JSON text message sent as a binary frame is not a chunk.
  fails(Buffer.from(JSON.stringify({ type: 'cache.ack', tv: CACHE_TRANSFER_VERSION, transferId: 'abcdefgh12345678', seq: 0 })), 'protocol.chunk_header_length');
});
