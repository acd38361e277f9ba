-- perflab course data: the schema. Built by perflab.datasets (see README.md in this folder).
-- Tables are created without secondary indexes; generate.sql adds the ones the course starts with
-- after the bulk load (loading into an indexed table is several times slower).

CREATE TABLE customers (
    id          bigint PRIMARY KEY,
    name        text        NOT NULL,
    email       text        NOT NULL,
    country     char(2)     NOT NULL,
    tier        text        NOT NULL,   -- 'free' | 'pro' | 'enterprise'
    created_at  timestamptz NOT NULL
);

CREATE TABLE products (
    id          bigint PRIMARY KEY,
    sku         text          NOT NULL,
    name        text          NOT NULL,
    category    text          NOT NULL,
    price       numeric(10,2) NOT NULL,
    description text          NOT NULL  -- a few hundred bytes: what SELECT * drags along
);

CREATE TABLE orders (
    id               bigint PRIMARY KEY,
    customer_id      bigint        NOT NULL,
    status           text          NOT NULL,   -- 'pending' | 'paid' | 'shipped' | 'delivered' | 'cancelled'
    created_at       timestamptz   NOT NULL,
    total            numeric(12,2) NOT NULL,
    shipping_address text          NOT NULL,
    notes            text          NOT NULL    -- ~200 bytes nobody reads in a listing
);

CREATE TABLE order_items (
    id          bigint PRIMARY KEY,
    order_id    bigint        NOT NULL,
    product_id  bigint        NOT NULL,
    quantity    integer       NOT NULL,
    unit_price  numeric(10,2) NOT NULL
);

-- A key/value table for the build's own bookkeeping (scale, row counts, generator version).
CREATE TABLE perflab_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
