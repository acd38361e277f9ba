"""Topic 03 · the tail: what the lab notebook and its checks share — the workload's two tenant
queries and which tenants are big and small."""
from __future__ import annotations

PAGE_SQL = ("SELECT id, created_at, status, total FROM orders WHERE customer_id = %s "
            "ORDER BY total DESC LIMIT 20")
PENDING_SQL = ("SELECT id, created_at, total FROM orders WHERE customer_id = %s AND status = 'pending' "
               "ORDER BY created_at LIMIT 20")
QUERIES = {"PAGE_SQL": PAGE_SQL, "PENDING_SQL": PENDING_SQL}
BIG, SMALL = 1, tuple(range(1500, 1540))   # the big tenant; forty small ones
