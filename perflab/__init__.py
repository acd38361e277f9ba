"""perflab: an interactive course on backend performance, measured live against real PostgreSQL and Redis.

The modules, one per concern (see docs/ARCHITECTURE.md):

* ``perflab.stack``    — the servers (PostgreSQL, Redis, the latency proxy): ``stack.ensure()``
* ``perflab.datasets`` — the course data and its throwaway copies: ``datasets.workspace(name)``
* ``perflab.harness``  — ``compare()`` variants, ``sweep()`` a size
* ``perflab.probes``   — server-side counters: statements, connections, plans
* ``perflab.plots``    — the course's figures
* ``perflab.grader``   — grading a lab submission
* ``perflab.course``   — what a notebook's first cell calls: ``course.start(...)``
"""
__version__ = "0.1.0"
