"""The account site: an aiohttp sub-application mounted on the account host.

:mod:`.app` builds it: the services every page needs sit in typed
``web.AppKey`` slots (:mod:`.keys`), each page module brings its own route
table, and one middleware (:mod:`.guard`) does what every page must, before
any handler runs: refusing cross-site and oversized state-changing requests,
and putting the signed-in account on the request.
"""
