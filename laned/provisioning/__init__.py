"""What a lane's deployment is made of, shared by everything that makes one: the TLS
identities (:mod:`.certificates`) and the broker's listener and ACL (:mod:`.broker_access`).

Three makers use them — ``laned sim``'s throw-away centre (laned/sim/), the tests' brokers
(hil_tests/) and ``laned centre pki`` / ``broker-config`` for commissioning a real lane
(laned/centre/commissioning.py) — so the simulator, the tests and the field all run the
broker under the same rules.
"""
