-- The downstream "orders" service's own tables (as test/fixtures/downstream/index.ts creates
-- them) and two orders of user-id-123 shipped to three addresses.
CREATE TABLE IF NOT EXISTS orders (
  id bigserial PRIMARY KEY,
  user_id text NOT NULL,
  email text NOT NULL,
  customer_name text,
  phone text,
  total_cents integer NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_user_id_index ON orders (user_id);
CREATE TABLE IF NOT EXISTS shipping_addresses (
  id bigserial PRIMARY KEY,
  order_id bigint NOT NULL REFERENCES orders (id),
  recipient text NOT NULL,
  street text NOT NULL,
  city text NOT NULL,
  postal_code text NOT NULL
);
CREATE INDEX IF NOT EXISTS shipping_addresses_order_id_index ON shipping_addresses (order_id);

WITH o AS (
  INSERT INTO orders (user_id, email, customer_name, phone, total_cents) VALUES
    ('user-id-123', 'user@example.com', 'Customer user-id-123', '+33 6 12 34 56 78', 4990),
    ('user-id-123', 'user@example.com', 'Customer user-id-123', '+33 6 12 34 56 78', 12500)
  RETURNING id
), numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM o)
INSERT INTO shipping_addresses (order_id, recipient, street, city, postal_code)
SELECT id, 'Customer user-id-123', street, city, postal_code
FROM numbered JOIN (VALUES
  (1, '1 rue de la Paix', 'Paris', '75002'),
  (1, '2 quai Voltaire', 'Paris', '75007'),
  (2, '3 place Bellecour', 'Lyon', '69002')
) AS a (n, street, city, postal_code) USING (n);
