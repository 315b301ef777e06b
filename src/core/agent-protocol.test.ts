import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CACHE_TRANSFER_VERSION, MAX_CACHE_CHUNK_BYTES, makeAgentMessageDecoder, makeServerMessageDecoder, encodeMessage, MAX_MESSAGE_BYTES } from './agent-protocol.ts';
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
  const s = makeServerMessageDecoder();
  const chunk = { type: 'cache.chunk' as const, tv: CACHE_TRANSFER_VERSION, transferId: 'abcdefgh12345678', seq: 0, offset: 0, data: Buffer.alloc(MAX_CACHE_CHUNK_BYTES, 7).toString('base64') };
  assert.deepEqual(a.decode(encodeMessage(chunk)), chunk);
  assert.deepEqual(s.decode(encodeMessage(chunk)), chunk, 'relayed as it came');
  assert.ok(encodeMessage(chunk).length < MAX_MESSAGE_BYTES, 'a whole chunk fits one message');
  const bad = (m: object) => assert.throws(() => a.decode(JSON.stringify(m)), (e) => isKilnError(e, 'protocol.bad_message') || isKilnError(e, 'protocol.too_large'));
  bad({ ...chunk, tv: 2 });
  bad({ ...chunk, data: Buffer.alloc(MAX_CACHE_CHUNK_BYTES + 3, 7).toString('base64') });
  bad({ ...chunk, transferId: '../../etc' });
  bad({ ...chunk, seq: -1 });
  const offer = { type: 'cache.offer', tv: 1, transferId: 'abcdefgh12345678', version: 'v1-ab', length: 1024, sha256: 'a'.repeat(64), record: { createdAt: 'now', jobId: '3' } };
  assert.equal(a.decode(JSON.stringify(offer)).type, 'cache.offer');
  bad({ ...offer, sha256: 'xyz' });
  bad({ ...offer, version: 'v/../1' });
  bad({ ...offer, record: { createdAt: 'now', extra: 1 } });
  bad({ type: 'cache.fetch', tv: 1, fetchId: 'abcdefgh', jobId: 1, attempt: 1, key: '../x' });
  // A server-only message is not an agent message.
  bad({ type: 'cache.send', tv: 1, transferId: 'abcdefgh12345678', key: 'a/b', version: 'v', window: 4 });
});
