import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeAgentMessageDecoder, makeServerMessageDecoder, encodeMessage, MAX_MESSAGE_BYTES } from './agent-protocol.ts';
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
