// Sleep and wake requests through the store, many times over, on both stores: the embedded store prepares a
// statement used often and PostgreSQL plans a prepared statement generically after five uses, after which an
// ON CONFLICT against the partial unique index power_requests_open must still find it (it did not, and the
// ninth request failed, which bench:power found). One open request per host still holds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { storeKinds, makeTestStore } from './test-stores.ts';
import { connectHost } from '../../src/store/hosts.ts';
import { markAsleep, requestSleep, requestWake } from '../../src/store/power.ts';

for (const { kind, skip } of storeKinds()) {
  void test(`power requests: twenty hosts sleep and wake twice each, one open request per host (${kind})`, { skip }, async () => {
    const store = await makeTestStore(kind);
    try {
      const power = { driver: 'wol' as const, mac: '52:54:00:00:00:01', broadcast: '127.0.0.1', port: 9 };
      const cap = (i: number) => ({ name: `h${i}`, arch: 'amd64' as const, cpus: 4, memoryBytes: 4 * 1024 ** 3, diskBytes: 10 * 1024 ** 3, accel: 'kvm' as const, labels: [], driver: 'memory', agentVersion: 't' });
      const ids: number[] = [];
      for (let i = 1; i <= 20; i++) ids.push((await connectHost(store.db, cap(i), 's1', undefined, power)).id);
      for (let round = 0; round < 2; round++) {
        for (const [i, id] of ids.entries()) {
          const r = await requestSleep(store.db, id, 'idle');
          assert.ok(r, `round ${round}: sleep request for host ${i + 1}`);
          assert.equal(await requestSleep(store.db, id, 'idle'), undefined, 'a second open request is refused');
          assert.ok(await markAsleep(store.db, id, 's1', r.id, power));
        }
        for (const [i, id] of ids.entries()) {
          assert.ok(await requestWake(store.db, id, 'demand', 1), `round ${round}: wake request for host ${i + 1}`);
          assert.equal(await requestWake(store.db, id, 'demand', 1), undefined, 'a second open request is refused');
          const h = await connectHost(store.db, cap(i + 1), 's1', undefined, power);
          assert.ok(h.woke, 'the connection answered the wake');
        }
      }
    } finally {
      await store.close();
    }
  });
}
