"""Typed SQLAlchemy 2.0 models of the course tables, for the lessons that use an ORM.

    from perflab import models
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    engine = models.engine(lesson.dsn)                  # a plain postgresql:// DSN is fine
    with models.Session(engine) as session:
        orders = session.scalars(select(models.Order).limit(10)).all()
        orders[0].customer.name                          # a lazy load: one more SELECT

The mapping follows ``datasets/schema.sql`` column for column::

    Customer 1 ── * Order 1 ── * OrderItem * ── 1 Product

Every relationship uses SQLAlchemy's default loader, ``lazy="select"``: the related rows are fetched
by a SELECT the first time the attribute is touched. That default is what makes the N+1 problem
(topic 02) so easy to write; loader options (``joinedload``, ``selectinload``, ``raiseload``) choose
another strategy per query. Collections have a fixed order (``order_by``), so a lazy loop and an
eager query return the same lists.

The course data is read-only for lessons (each works on its own copy): nothing here creates or
alters tables; ``Base.metadata`` only describes what ``datasets/schema.sql`` built.
"""
from __future__ import annotations

import contextlib
import dataclasses
from datetime import datetime
from decimal import Decimal
from typing import Iterator

from sqlalchemy import BigInteger, DateTime, ForeignKey, Numeric, String, Text, create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

__all__ = ["Base", "Customer", "Product", "Order", "OrderItem", "Session", "engine", "sqlalchemy_url",
           "counted_session", "CountedSession", "STARTUP_SHAPES"]


class Base(DeclarativeBase):
    """The declarative base of the course models."""


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(Text)
    country: Mapped[str] = mapped_column(String(2))
    tier: Mapped[str] = mapped_column(Text)  # 'free' | 'pro' | 'enterprise'
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    orders: Mapped[list["Order"]] = relationship(back_populates="customer", order_by="Order.id")
    # Every item the customer ever bought (through orders): read-only, a second collection on
    # Customer, which is what makes "joinedload two collections" explode (topic 02).
    items: Mapped[list["OrderItem"]] = relationship(secondary="orders", viewonly=True, order_by="OrderItem.id")

    def __repr__(self) -> str:
        return f"Customer(id={self.id}, name={self.name!r})"


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sku: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    description: Mapped[str] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"Product(id={self.id}, name={self.name!r})"


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(Text)  # 'pending' | 'paid' | 'shipped' | 'delivered' | 'cancelled'
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    shipping_address: Mapped[str] = mapped_column(Text)
    notes: Mapped[str] = mapped_column(Text)

    customer: Mapped[Customer] = relationship(back_populates="orders")
    items: Mapped[list["OrderItem"]] = relationship(back_populates="order", order_by="OrderItem.id")

    def __repr__(self) -> str:
        return f"Order(id={self.id}, customer_id={self.customer_id}, total={self.total})"


class OrderItem(Base):
    __tablename__ = "order_items"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int]
    unit_price: Mapped[Decimal] = mapped_column(Numeric(10, 2))

    order: Mapped[Order] = relationship(back_populates="items")
    product: Mapped[Product] = relationship()

    def __repr__(self) -> str:
        return f"OrderItem(id={self.id}, order_id={self.order_id}, product_id={self.product_id})"


def sqlalchemy_url(dsn: str) -> str:
    """``postgresql://…`` → ``postgresql+psycopg://…`` (psycopg 3); other URLs are returned as they are."""
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1) if dsn.startswith("postgresql://") else dsn


def engine(dsn: str, **kwargs) -> Engine:
    """An Engine on a course DSN (plain libpq or SQLAlchemy URL). Keyword arguments go to create_engine."""
    return create_engine(sqlalchemy_url(dsn), **kwargs)


# What SQLAlchemy's psycopg dialect sends on its own: a new Engine's first connection asks for the
# server version and settings and looks up type OIDs; a connection being discarded may clear its
# prepared statements. None of it is the application's work, so counts leave these out.
STARTUP_SHAPES = (
    "select pg_catalog.version()",
    "select current_schema()",
    "show transaction isolation level",
    "show standard_conforming_strings",
    "select typname as name, oid, typarray as array_oid",
    "deallocate all",
)


def is_startup(shape: str) -> bool:
    """True for the driver's own bookkeeping statements (see ``STARTUP_SHAPES``)."""
    return shape.lower().startswith(STARTUP_SHAPES)


@dataclasses.dataclass
class CountedSession:
    """A Session whose statements the server counts (see :func:`counted_session`)."""

    session: Session
    probe: object  # perflab.probes.StatementProbe

    @property
    def statements(self) -> list:
        return [s for s in self.probe.statements if not is_startup(s.shape)]

    @property
    def count(self) -> int:
        """Statements the code ran (the engine's one-off start-up queries excluded)."""
        return len(self.statements)

    @property
    def shapes(self):
        from collections import Counter

        return Counter(s.shape for s in self.statements)

    def shapes_table(self, width: int = 120):
        """Statement shapes and how many times each ran, most frequent first (a DataFrame)."""
        import pandas as pd

        rows = [{"times": n, "statement shape": shape if len(shape) <= width else shape[: width - 1] + "…"}
                for shape, n in self.shapes.most_common()]
        return pd.DataFrame(rows, columns=["times", "statement shape"])


@contextlib.contextmanager
def counted_session(dsn: str) -> Iterator[CountedSession]:
    """A fresh Session on its own Engine, every statement counted server-side; counts readable after the block.

        with models.counted_session(lesson.dsn) as counted:
            recent_orders(counted.session, 100)
        counted.count, counted.shapes_table()
    """
    from sqlalchemy.pool import NullPool

    from perflab import probes

    with probes.count_statements(dsn) as probe:
        counted_engine = engine(probe.dsn, poolclass=NullPool)
        try:
            with Session(counted_engine) as session:
                yield CountedSession(session, probe)
        finally:
            counted_engine.dispose()
    # the probe has collected the server's log by now: `counted.count` is final
