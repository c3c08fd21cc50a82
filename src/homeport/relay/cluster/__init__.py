"""Several relay nodes acting as one service: what they must share beyond the database.

* :mod:`~homeport.relay.cluster.messages`: the revocation messages, sealed with
  the cluster key (HMAC), ids only;
* :mod:`~homeport.relay.cluster.channel`: the Redis pub/sub channel that carries
  them, and whether this node can trust its caches (it hears every revocation);
* :mod:`~homeport.relay.cluster.node`: what a node does with them (drop cache
  entries, cut live traffic, close a tunnel, wake an add-on waiting for its link)
  and when its channel goes down;
* :mod:`~homeport.relay.cluster.announce`: the same messages sent by a process
  that is not a node (``homeport admin``).
"""
