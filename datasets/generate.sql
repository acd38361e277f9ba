-- perflab course data: the deterministic generator. Run by perflab.datasets with these
-- psql-style variables substituted: :customers :products :orders :seed
--
-- Every "random" value is a pure function of (row id, column salt, seed) through
-- hashint8extended(), PostgreSQL's portable 64-bit hash (the one hash partitioning relies on), so
-- two builds of a scale give identical rows, whatever the order or parallelism of the load.

CREATE FUNCTION pl_u(id bigint, salt bigint) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (hashint8extended(id, salt + :seed) & 2147483647)::double precision / 2147483648.0;

INSERT INTO customers
SELECT i,
       'Customer ' || i,
       'customer' || i || '@example.com',
       (ARRAY['US','DE','FR','GB','IN','BR','JP','NL','SE','ES'])[1 + floor(pl_u(i, 1) * 10)::int],
       CASE WHEN i = 1 THEN 'enterprise'
            WHEN pl_u(i, 2) < 0.05 THEN 'enterprise'
            WHEN pl_u(i, 2) < 0.30 THEN 'pro' ELSE 'free' END,
       timestamptz '2019-01-01 00:00:00+00' + (pl_u(i, 3) * 365 * 86400) * interval '1 second'
FROM generate_series(1, :customers) AS i;

INSERT INTO products
SELECT i,
       'SKU-' || lpad(i::text, 6, '0'),
       'Product ' || i,
       (ARRAY['books','games','garden','kitchen','music','office','outdoor','toys'])[1 + floor(pl_u(i, 11) * 8)::int],
       round((2 + pl_u(i, 12) * 298)::numeric, 2),
       repeat(md5(i::text), 8)   -- 256 bytes of description
FROM generate_series(1, :products) AS i;

-- Orders arrive over six years (2020-2025) in id order, as a real table fills up, so created_at is
-- strongly correlated with the physical row order (a few minutes of jitter keeps it honest).
-- One tenant (customer 1) holds about a third of all orders: the skew the p99 lesson is about.
INSERT INTO orders
SELECT i,
       CASE WHEN pl_u(i, 21) < 0.34 THEN 1
            ELSE 2 + floor(power(pl_u(i, 22), 2) * (:customers - 1))::bigint END,
       CASE WHEN pl_u(i, 23) < 0.03 THEN 'pending'
            WHEN pl_u(i, 23) < 0.08 THEN 'cancelled'
            WHEN pl_u(i, 23) < 0.15 THEN 'paid'
            WHEN pl_u(i, 23) < 0.25 THEN 'shipped' ELSE 'delivered' END,
       timestamptz '2020-01-01 00:00:00+00'
         + ((i - 1)::double precision / :orders * 2192 * 86400 + pl_u(i, 24) * 600) * interval '1 second',
       round((5 + power(pl_u(i, 25), 3) * 995)::numeric, 2),
       (1 + floor(pl_u(i, 26) * 9999))::int || ' Long Street, Apt ' || (1 + floor(pl_u(i, 27) * 99))::int,
       repeat(md5((i * 7)::text), 6)   -- 192 bytes of notes
FROM generate_series(1, :orders) AS i;

-- One to four items per order (2.5 on average); item ids are dense and follow order ids.
INSERT INTO order_items
SELECT row_number() OVER (ORDER BY o.i, k),
       o.i,
       1 + floor(power(pl_u(o.i * 8 + k, 31), 1.5) * :products)::bigint,
       1 + floor(pl_u(o.i * 8 + k, 32) * 5)::int,
       round((2 + pl_u(o.i * 8 + k, 33) * 298)::numeric, 2)
FROM generate_series(1, :orders) AS o(i)
CROSS JOIN LATERAL generate_series(1, 1 + floor(pl_u(o.i, 30) * 4)::int) AS k;

-- The indexes a typical application starts with: primary keys (above), foreign keys, created_at.
CREATE INDEX orders_customer_id_idx ON orders (customer_id);
CREATE INDEX orders_created_at_idx  ON orders (created_at);
CREATE INDEX order_items_order_id_idx ON order_items (order_id);
ALTER TABLE orders      ADD CONSTRAINT orders_customer_fk    FOREIGN KEY (customer_id) REFERENCES customers;
ALTER TABLE order_items ADD CONSTRAINT order_items_order_fk   FOREIGN KEY (order_id)    REFERENCES orders;
ALTER TABLE order_items ADD CONSTRAINT order_items_product_fk FOREIGN KEY (product_id)  REFERENCES products;

DROP FUNCTION pl_u(bigint, bigint);
