/**
 * Every migration, in order. To add tables: write `NNNN-what.ts` beside this file exporting
 * `up(db: Kysely<unknown>)` (raw SQL through Kysely's `sql` is fine and reads best), add it below, add row
 * types to ../schema.ts, then refresh the committed snapshot (see ../schema.sql's header). Names sort in
 * order; never edit a migration that has shipped. Core and GitHub numbers interleave (0003 after 0100), so
 * the migrator runs unordered migrations that are missing.
 */
import type { Migration } from 'kysely';
import * as m0001 from './0001-control-plane.ts';
import * as m0002 from './0002-tenant-fairness.ts';
import * as m0003 from './0003-host-mirror.ts';
import * as m0004 from './0004-queue-per-tenant.ts';
import * as m0005 from './0005-idempotency-keys.ts';
import * as m0010 from './0010-security.ts';
import * as m0012 from './0012-egress-policy.ts';
import * as m0020 from './0020-host-power.ts';
import * as m0021 from './0021-viewer-role.ts';
import * as m0022 from './0022-report-indexes.ts';
import * as m0030 from './0030-caches.ts';
import * as m0031 from './0031-cache-outcome.ts';
import * as m0032 from './0032-cache-answer.ts';
import * as m0100 from './0100-github.ts';
import * as m0103 from './0103-github-usage-index.ts';

export const MIGRATIONS: Record<string, Migration> = {
  '0001-control-plane': m0001,
  '0002-tenant-fairness': m0002,
  '0003-host-mirror': m0003,
  '0004-queue-per-tenant': m0004,
  '0005-idempotency-keys': m0005,
  '0010-security': m0010,
  '0012-egress-policy': m0012,
  '0020-host-power': m0020,
  '0021-viewer-role': m0021,
  '0022-report-indexes': m0022,
  '0030-caches': m0030,
  '0031-cache-outcome': m0031,
  '0032-cache-answer': m0032,
  '0100-github': m0100,
  '0103-github-usage-index': m0103,
};
