import { fileURLToPath } from 'node:url';
import type { Knex } from 'knex';
import { ANALYTICS_DATA_MAP, ORDERS_DATA_MAP, createAnalyticsSchema, createOrdersSchema } from '../../test/fixtures/downstream/index.js';

/**
 * The fanout benchmark's users and its three downstream services. Every seed is set-based
 * (one INSERT … SELECT over generate_series per table), so that thousands of users take seconds.
 */

/** The i-th benchmark user (1-based); USERS_SQL yields the same ids. */
export const userId = (i: number): string => `bench-user-${String(i).padStart(6, '0')}`;
/** Users 1..? as a derived table `u (id)`; bind the count. */
const USERS_SQL = `(SELECT 'bench-user-' || lpad(g::text, 6, '0') AS id FROM generate_series(1, ?::int) AS g) AS u`;

/** Users (and two login events each) in the server's identity schema, which the server has migrated. */
export async function seedIdentity(knex: Knex, users: number): Promise<void> {
  await knex.raw(`INSERT INTO users (id, email) SELECT u.id, u.id || '@example.com' FROM ${USERS_SQL}`, [users]);
  await knex.raw(
    `INSERT INTO login_events (id, user_id, timestamp, ip_address, user_agent, provider, success)
     SELECT u.id || '-login-' || k, u.id, now() - k * interval '1 day', '203.0.113.7', 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0', 'password', true
     FROM ${USERS_SQL} CROSS JOIN generate_series(1, 2) AS k`,
    [users],
  );
  await knex.raw('ANALYZE users, login_events');
}

export interface DownstreamService {
  readonly name: string;
  readonly dataMap: string;
  /** The data map hashes a column: the sidecar needs LETHE_HASH_KEY. */
  readonly usesHash: boolean;
  createSchema(knex: Knex): Promise<void>;
  /** A few rows per user; returns the number of rows inserted. */
  seed(knex: Knex, users: number): Promise<number>;
}

async function inserted(knex: Knex, sql: string, users: number): Promise<number> {
  const r = (await knex.raw(sql, [users])) as { rowCount: number | null };
  return r.rowCount ?? 0;
}

/** test/fixtures/downstream's orders service: two orders per user, one shipping address per order. */
const orders: DownstreamService = {
  name: 'orders',
  dataMap: ORDERS_DATA_MAP,
  usesHash: true,
  createSchema: createOrdersSchema,
  async seed(knex, users) {
    let n = await inserted(
      knex,
      `INSERT INTO orders (user_id, email, customer_name, phone, total_cents)
       SELECT u.id, u.id || '@example.com', 'Customer ' || u.id, '+33 6 12 34 56 78', 4990 + k * 7510
       FROM ${USERS_SQL} CROSS JOIN generate_series(0, 1) AS k`,
      users,
    );
    n +=
      (
        (await knex.raw(
          `INSERT INTO shipping_addresses (order_id, recipient, street, city, postal_code)
       SELECT id, customer_name, '1 rue de la Paix', 'Paris', '75002' FROM orders`,
        )) as { rowCount: number | null }
      ).rowCount ?? 0;
    await knex.raw('ANALYZE orders, shipping_addresses');
    return n;
  },
};

/** test/fixtures/downstream's analytics service: four page views and two searches per user. */
const analytics: DownstreamService = {
  name: 'analytics',
  dataMap: ANALYTICS_DATA_MAP,
  usesHash: false,
  createSchema: createAnalyticsSchema,
  async seed(knex, users) {
    let n = await inserted(
      knex,
      `INSERT INTO page_views (user_id, url, ip_address, user_agent)
       SELECT u.id, v.url, v.ip::inet, v.ua
       FROM ${USERS_SQL} CROSS JOIN (VALUES ('/', '203.0.113.7', 'Firefox/128.0'), ('/pricing', '203.0.113.7', 'Firefox/128.0'),
                                            ('/checkout', '198.51.100.23', 'Safari/17.0'), ('/account', '198.51.100.23', 'Safari/17.0')) AS v (url, ip, ua)`,
      users,
    );
    n += await inserted(
      knex,
      `INSERT INTO search_history (user_id, query)
       SELECT u.id, q FROM ${USERS_SQL} CROSS JOIN (VALUES ('birthday gift'), ('running shoes size 44')) AS s (q)`,
      users,
    );
    await knex.raw('ANALYZE page_views, search_history');
    return n;
  },
};

/** A search index (bench/fanout/search.yaml): one indexed profile and two saved searches per user. */
const search: DownstreamService = {
  name: 'search',
  dataMap: fileURLToPath(new URL('./search.yaml', import.meta.url)),
  usesHash: false,
  async createSchema(knex) {
    await knex.raw(`CREATE TABLE search_profiles (
      id bigserial PRIMARY KEY, user_id text NOT NULL, display_name text, bio text,
      indexed_at timestamptz NOT NULL DEFAULT now())`);
    await knex.raw('CREATE INDEX search_profiles_user ON search_profiles (user_id)');
    await knex.raw('CREATE TABLE saved_searches (id bigserial PRIMARY KEY, user_id text NOT NULL, query text NOT NULL)');
    await knex.raw('CREATE INDEX saved_searches_user ON saved_searches (user_id)');
  },
  async seed(knex, users) {
    let n = await inserted(
      knex,
      `INSERT INTO search_profiles (user_id, display_name, bio)
       SELECT u.id, 'Customer ' || u.id, 'Likes running and ' || u.id || '''s cat' FROM ${USERS_SQL}`,
      users,
    );
    n += await inserted(
      knex,
      `INSERT INTO saved_searches (user_id, query)
       SELECT u.id, q FROM ${USERS_SQL} CROSS JOIN (VALUES ('trail shoes'), ('tents for two')) AS s (q)`,
      users,
    );
    await knex.raw('ANALYZE search_profiles, saved_searches');
    return n;
  },
};

export const DOWNSTREAM: readonly DownstreamService[] = [orders, analytics, search];
