"""The ORM models, the N+1 detector, single-call latencies and the slow-query log (topics 02-04)."""

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, selectinload

from perflab import latency, models, probes
from perflab.topics.t04_slow_queries import rig as slowlog
from perflab.models import Customer, Order


def _lazy_page(session, n):
    orders = session.scalars(select(Order).order_by(Order.id).limit(n)).all()
    return [(o.id, o.customer.name, [i.product_id for i in o.items]) for o in orders]


def _eager_page(session, n):
    orders = session.scalars(select(Order).order_by(Order.id).limit(n)
                             .options(joinedload(Order.customer), selectinload(Order.items))).all()
    return [(o.id, o.customer.name, [i.product_id for i in o.items]) for o in orders]


def test_models_map_the_course_tables(scratch_db):
    engine = models.engine(scratch_db)
    with Session(engine) as session:
        order = session.get(Order, 1)
        assert order.customer.id == order.customer_id
        assert [i.id for i in order.items] == sorted(i.id for i in order.items) and order.items
        assert all(item.product.price > 0 for item in order.items)
        big = session.get(Customer, 1)
        assert len(big.orders) > 5000 and len(big.items) > len(big.orders)
    engine.dispose()


def test_counted_session_counts_the_lazy_loads_and_not_the_driver_start_up(scratch_db):
    with models.counted_session(scratch_db) as lazy:
        lazy_page = _lazy_page(lazy.session, 10)
    with models.counted_session(scratch_db) as eager:
        eager_page = _eager_page(eager.session, 10)
    assert lazy_page == eager_page
    distinct_customers = len({row[1] for row in lazy_page})
    assert lazy.count == 1 + 10 + distinct_customers
    assert eager.count == 2
    assert not any(models.is_startup(s.shape) for s in eager.statements)


def test_n_plus_one_detector_raises_with_the_shape_and_count(scratch_db):
    with pytest.raises(probes.NPlusOneError) as failure:
        with probes.detect_n_plus_one(scratch_db, threshold=5) as probe:
            with Session(models.engine(probe.sqlalchemy_url)) as session:
                _lazy_page(session, 12)
    message = str(failure.value)
    assert "12 × SELECT … FROM order_items WHERE" in message
    with probes.detect_n_plus_one(scratch_db, threshold=5) as probe:
        with Session(models.engine(probe.sqlalchemy_url)) as session:
            _eager_page(session, 12)
    assert probe.count >= 2


def test_n_plus_one_detector_can_warn(scratch_db):
    with pytest.warns(probes.NPlusOneWarning, match="N\\+1 suspected"):
        with probes.detect_n_plus_one(scratch_db, threshold=3, action="warn") as probe:
            with Session(models.engine(probe.sqlalchemy_url)) as session:
                _lazy_page(session, 5)
    with pytest.raises(ValueError):
        with probes.detect_n_plus_one(scratch_db, action="explode"):
            pass


def test_latencies_time_single_calls_interleaved():
    slow_every = 10

    def fast(i):
        """fast"""
        return i

    def sometimes_slow(i):
        """sometimes slow"""
        if i % slow_every == 0:
            sum(range(200_000))
        return i

    dist = latency.latencies([fast, sometimes_slow], calls=200, args_for=lambda i: (i,),
                             label_for=lambda i: "slow" if i % slow_every == 0 else "fast", warmup=0)
    assert list(dist.runs.columns) == ["variant", "call", "label", "ms"]
    assert dist.runs.groupby("variant").size().tolist() == [200, 200]
    table = dist.percentiles
    assert table.loc["sometimes slow", "p99_ms"] > 5 * table.loc["sometimes slow", "p50_ms"]
    by_label = dist.by_label()
    assert by_label.loc[("sometimes slow", "slow"), "p50_ms"] > by_label.loc[("sometimes slow", "fast"), "p99_ms"]
    assert dist.to_dict()["kind"] == "latencies"
    figure = dist.plot()
    assert figure.axes and figure.axes[0].get_xscale() == "log"


def test_fan_out_share_matches_the_formula():
    assert latency.fan_out_slow_share(0.01, 100) == pytest.approx(0.634, abs=1e-3)
    rng = np.random.default_rng(1)
    simulated = (rng.random((20_000, 100)) < 0.01).any(axis=1).mean()
    assert simulated == pytest.approx(0.634, abs=0.02)


def test_slow_query_log_ranks_shapes_by_total_time(scratch_db):
    import psycopg

    with slowlog.capture(scratch_db, min_duration_ms=0) as log:
        with psycopg.connect(log.dsn, autocommit=True) as conn:
            for i in range(1, 21):
                conn.execute("/* q:by_id */ SELECT * FROM orders WHERE id = %s", (i,)).fetchall()
            for _ in range(2):
                conn.execute("/* q:scan */ SELECT count(*) FROM order_items WHERE quantity = 3").fetchall()
    assert len(log.entries) == 22
    ranked = slowlog.top_offenders(log.entries)
    assert set(ranked.name) == {"by_id", "scan"}
    assert ranked.set_index("name").loc["by_id", "calls"] == 20
    assert ranked.total_ms.is_monotonic_decreasing and ranked.share.sum() == pytest.approx(1)
    usable, why = slowlog.stat_statements_status(scratch_db)
    assert isinstance(usable, bool) and "pg_stat_statements" in why
