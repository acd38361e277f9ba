"""The module a topic-8 worker loads (``celery -A perflab.topics.t08_offload.worker worker``): the rig's app,
configured from what :func:`rig.worker` put in the environment (broker, queue, key prefix, settings, the job)."""
from perflab.topics.t08_offload import rig

app = rig.app_from_env()
