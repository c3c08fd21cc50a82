"""Several relay nodes behind HAProxy: the load balancer's configuration and a local cluster.

* :mod:`~homeport.cluster_local.haproxy`: the HAProxy configuration (one
  generator used by the tests, ``homeport cluster`` and ``docs/deploy.md``);
* :mod:`~homeport.cluster_local.run`: ``homeport cluster``, three nodes, HAProxy,
  PostgreSQL and Redis on loopback.
"""
