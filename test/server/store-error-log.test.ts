// Issue 17, defect 8: when the store refuses a submission, the 500's log line names the failure (SQLSTATE,
// table, constraint) but holds none of the job's env values or secrets (PostgreSQL's "Failing row contains").
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { sql } from 'kysely';
import { storeKinds, makeTestStore } from '../store/test-stores.ts';
import { makeServer } from '../../src/server/server.ts';
import { makeSecret } from '../../src/store/tokens.ts';
import { errorForLog, redactDbMessage } from '../../src/store/store-errors.ts';

void test('redactDbMessage hides quoted values, failing rows and JSON text', () => {
  assert.equal(redactDbMessage('invalid input syntax for type integer: "hunter2"'), 'invalid input syntax for type integer: "[redacted]"');
  assert.equal(redactDbMessage('Failing row contains (1, default, {"S": "hunter2"}).'), 'Failing row contains ([redacted])');
  assert.equal(redactDbMessage('JSON data, line 1: {"S":"hunter2'), 'JSON data, line 1: [redacted]');
  const wrapped = new Error('outer', { cause: Object.assign(new Error('new row violates check constraint "c"'), { code: '23514', severity: 'ERROR', detail: 'Failing row contains (hunter2)', where: 'x hunter2', table: 'jobs', constraint: 'c' }) });
  const text = JSON.stringify(errorForLog(wrapped));
  assert.ok(!text.includes('hunter2'), text);
  assert.match(text, /23514/);
  assert.match(text, /"table":"jobs"/);
});

for (const { kind, skip } of storeKinds()) {
  void describe(`store error log on ${kind}`, { skip }, () => {
    void test("a submission the store refuses: 500, and the log line has no env value or secret", async () => {
      const store = await makeTestStore(kind);
      const lines: string[] = [];
      const logger = pino({ level: 'info' }, new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }));
      const admin = makeSecret('admin');
      const server = await makeServer({ store, logger, adminToken: admin });
      try {
        // A rule of the operator's database that this submission breaks (any refusal by the store will do).
        await sql`ALTER TABLE jobs ADD CONSTRAINT no_boom CHECK (tenant <> 'boom')`.execute(store.db);
        const url = await server.listen({ host: '127.0.0.1', port: 0 });
        const tok = (await (await fetch(`${url}/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'b', role: 'operator', tenant: 'boom' }) })).json()) as { secret: string };
        const res = await fetch(`${url}/v1/jobs`, {
          method: 'POST',
          headers: { authorization: `Bearer ${tok.secret}`, 'content-type': 'application/json' },
          body: JSON.stringify({ command: ['true', 'arg-hunter4'], env: { PLAIN: 'plain-hunter3' }, secretEnv: { TOKEN: 'secret-hunter2' } }),
        });
        assert.equal(res.status, 500);
        const body = await res.text();
        const text = lines.join('');
        assert.match(text, /request failed/);
        assert.match(text, /23514|no_boom/, 'the log says what failed');
        for (const v of ['secret-hunter2', 'plain-hunter3', 'arg-hunter4']) {
          assert.ok(!text.includes(v), `${v} in the log: ${text.slice(0, 2000)}`);
          assert.ok(!body.includes(v), `${v} in the answer`);
        }
      } finally {
        await server.close();
        await store.close();
      }
    });
  });
}
